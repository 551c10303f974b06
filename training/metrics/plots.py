"""ROC and precision-recall figures written as PNG files.

matplotlib is imported inside the functions and drawn through its Agg canvas (a bare
``Figure``, no pyplot), so importing this module needs no display and leaves the global
backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from spinexr.training.metrics.detection import DetectionResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RocCurve = tuple[npt.ArrayLike, npt.ArrayLike, float]
"""``(fpr, tpr, auroc)`` of one model, e.g. from `roc_curve` and `auroc`."""


def save_roc_plot(
    path: str | Path,
    curves: Mapping[str, RocCurve],
    operating_point: tuple[float, float] | None = None,
    *,
    title: str = "ROC curve",
) -> Path:
    """Draw ROC curves and write them as a PNG.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (parent folders are created).
    curves : mapping of str to (fpr, tpr, auroc)
        One curve per model name; the AUROC goes into the legend.
    operating_point : tuple of float, optional
        ``(1 - specificity, sensitivity)`` at the operating threshold c*, marked on the plot.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If `curves` is empty or a curve's fpr and tpr differ in length.
    """
    if not curves:
        raise ValueError("no ROC curves to plot")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, (fpr, tpr, auc) in curves.items():
        x = np.asarray(fpr, dtype=np.float64)
        y = np.asarray(tpr, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"ROC curve {name!r}: fpr {x.shape} and tpr {y.shape} differ")
        ax.plot(x, y, linewidth=1.5, label=f"{name} (AUROC {auc:.3f})")
    if operating_point is not None:
        fx, fy = operating_point
        ax.plot([fx], [fy], marker="o", color="black", linestyle="none", label="c*")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def save_pr_plot(
    path: str | Path,
    result: DetectionResult,
    class_names: Sequence[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw the interpolated precision-recall curve of every class and write a PNG.

    The curves are the 101-point interpolated precisions AP averages. Classes without ground
    truth have no curve and are listed as "n/a" in the legend.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (parent folders are created).
    result : DetectionResult
        From `average_precision`.
    class_names : sequence of str
        Display name per class id.
    title : str, optional
        Figure title; by default it states the IoU threshold and mAP.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If the number of names differs from the number of classes.
    """
    if len(class_names) != result.per_class.size:
        raise ValueError(f"{len(class_names)} class names for {result.per_class.size} classes")
    fig = _figure()
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        ap = result.per_class[c]
        if np.isnan(ap):
            ax.plot([], [], linestyle="none", label=f"{name} (AP n/a, no ground truth)")
            continue
        ax.step(
            result.recall_thresholds,
            result.precision[c],
            where="pre",
            linewidth=1.5,
            label=f"{name} (AP {100 * ap:.1f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision (interpolated)")
    if title is None:
        title = f"Precision-recall at IoU {result.iou_threshold:g} — mAP {100 * result.mean:.2f}"
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def _figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.6), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out

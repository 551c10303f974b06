"""Evaluation of vertebra keypoint models: Pisov et al.'s Tables 1 and 2 and more, side by side.

`evaluate_keypoints` runs each `KeypointModel` over the same `KeypointRecord` objects, names
the levels of its detections with the pipeline's level naming, computes every figure with
`spinexr.training.metrics.keypoints` (whose docstring states the matching, centre, spacing,
Genant and bootstrap conventions) and writes into the output folder:

- ``keypoints-report.json``: every figure of every model, the settings and the data counts;
- ``roc_{vertebra,patient}_{at_least_mild,at_least_moderate}.png``: ROC curves of the models;
- ``bland_altman_<model>.png``: predicted − annotated heights against their mean, in mm.

`format_report` renders the report as the paper's two tables plus one of heights, grades and
levels (Markdown).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinexr.pipeline.vertebrae.genant import (
    DEFAULT_CUTOFFS,
    HEIGHT_NAMES,
    GenantCutoffs,
)
from spinexr.pipeline.vertebrae.levels import assign_levels
from spinexr.pipeline.vertebrae.objects import DetectedObject, KeypointModel, ObjectKind
from spinexr.training.metrics import roc_curve
from spinexr.training.metrics.keypoints import (
    FRACTURED_G,
    IOU_THRESHOLD,
    PAPER_CUTOFFS,
    ImageKeypoints,
    KeypointMetrics,
    keypoint_metrics,
    patient_scores,
)
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.records import KeypointRecord

logger = logging.getLogger(__name__)

REPORT_NAME = "keypoints-report.json"
"""File name of the JSON report in the output folder."""

LevelNamer = Callable[[list[DetectedObject]], tuple[Any, list[tuple[DetectedObject, str | None]]]]
"""Names the vertebrae of one image: ``(rule, [(vertebra, level or None), ...])``."""

PAPER_REFERENCE: dict[str, Any] = {
    "source": "Pisov et al. 2020, Tables 1 and 2 (100 chest CTs, five-fold CV, mean)",
    "table1": {
        "centre_error_mm": 0.97,
        "centre_error_fractured_mm": 1.14,
        "recall": 0.997,
        "recall_fractured": 1.000,
        "precision": 0.993,
    },
    "table2": {
        "at_least_mild": {
            "vertebra": {"auroc": 0.87, "specificity": 0.93, "sensitivity": 0.65},
            "patient": {"auroc": 0.93, "specificity": 0.68, "sensitivity": 0.94},
        },
        "at_least_moderate": {
            "vertebra": {"auroc": 0.94, "specificity": 0.98, "sensitivity": 0.75},
            "patient": {"auroc": 0.93, "specificity": 0.86, "sensitivity": 0.84},
        },
    },
}
"""The paper's figures, printed beside ours for orientation (CT, not radiographs)."""

TASK_TITLES = {
    "at_least_mild": "≥ mild (G ≤ 0.80)",
    "at_least_moderate": "≥ moderate (G ≤ 0.74)",
}


def predict_images(
    model: KeypointModel,
    records: Sequence[KeypointRecord],
    *,
    level_namer: LevelNamer | None = assign_levels,
    progress: bool = True,
    label: str | None = None,
) -> tuple[list[ImageKeypoints], Counter[str], float]:
    """Run a model over the records and pair its vertebrae with the annotated ones.

    Parameters
    ----------
    model : KeypointModel
        The model.
    records : sequence of KeypointRecord
        Annotated images.
    level_namer : callable or None, optional
        Level naming of one image's detections (all kinds); None leaves levels out.
    progress : bool, optional
        Print progress lines to stderr.
    label : str, optional
        Name of the model in the progress lines (default: ``model.name``).

    Returns
    -------
    images : list of ImageKeypoints
        Per record, its annotated and predicted vertebrae (sacrum detections are used only
        by the level naming).
    rules : collections.Counter
        How often each level rule was used.
    seconds : float
        Inference time per image (mean, level naming excluded).
    """
    bar = (
        RateProgress(len(records), f"{label or model.name}: images", prefix="keypoints")
        if progress
        else None
    )
    images: list[ImageKeypoints] = []
    rules: Counter[str] = Counter()
    spent = 0.0
    for i, record in enumerate(records):
        started = time.perf_counter()
        objects = model.predict(record.display, record.spacing_mm)
        spent += time.perf_counter() - started
        vertebrae = [o for o in objects if o.kind is ObjectKind.VERTEBRA]
        levels: tuple[str | None, ...] | None = None
        if level_namer is not None:
            rule, named = level_namer(list(objects))
            rules[str(rule)] += 1
            by_id = {id(o): level for o, level in named}
            levels = tuple(by_id.get(id(o)) for o in vertebrae)
        truth = record.vertebrae
        images.append(
            ImageKeypoints(
                study=record.study,
                image=record.image,
                spacing_mm=record.spacing_mm,
                truth=np.array([o.keypoints for o in truth]),
                predicted=np.array([o.keypoints for o in vertebrae]),
                scores=np.array([o.score for o in vertebrae]),
                truth_levels=tuple(o.level for o in truth),
                predicted_levels=levels,
            )
        )
        if bar is not None:
            bar.update(i + 1)
    return images, rules, spent / len(records) if records else math.nan


def evaluate_keypoints(
    models: Mapping[str, KeypointModel],
    records: Sequence[KeypointRecord],
    out_dir: Path | None,
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
    cutoffs: GenantCutoffs = DEFAULT_CUTOFFS,
    iou_threshold: float = IOU_THRESHOLD,
    level_namer: LevelNamer | None = assign_levels,
) -> dict[str, Any]:
    """Evaluate keypoint models side by side on the same annotated images.

    Parameters
    ----------
    models : mapping of str to KeypointModel
        Display name (e.g. ``"pisov"``, ``"keypoint-rcnn"``) to model.
    records : sequence of KeypointRecord
        The evaluated images (e.g. the held-out split).
    out_dir : pathlib.Path or None
        Folder for the JSON report and the plots (created); None writes nothing.
    seed, n_bootstrap : int, optional
        Bootstrap over studies: seed and resamples (the same draws for every model).
    progress : bool, optional
        Print progress lines (stderr) and the report tables (stdout).
    cutoffs : GenantCutoffs, optional
        The project's grade bounds (settings), for the grade confusion matrix.
    iou_threshold : float, optional
        Keypoint-box IoU a match must exceed.
    level_namer : callable or None, optional
        Level naming (default: the pipeline's `assign_levels`); None leaves levels out.

    Returns
    -------
    dict
        The report (as written to ``keypoints-report.json``); ``files`` names what was
        written.

    Raises
    ------
    ValueError
        If there are no models or no records.
    """
    if not models:
        raise ValueError("no models to evaluate")
    if not records:
        raise ValueError("no images to evaluate")
    started = time.monotonic()
    predictions = {}
    for name, model in models.items():
        images, rules, per_image = predict_images(
            model, records, level_namer=level_namer, progress=progress, label=name
        )
        predictions[name] = ModelPredictions(model.name, images, rules, per_image)
    return keypoint_report(
        predictions,
        out_dir,
        splits=dict(Counter(r.split for r in records)),
        seed=seed,
        n_bootstrap=n_bootstrap,
        progress=progress,
        cutoffs=cutoffs,
        iou_threshold=iou_threshold,
        levels=level_namer is not None,
        started=started,
    )


@dataclass(frozen=True)
class ModelPredictions:
    """One model's predictions on the evaluated images, paired with the annotations.

    Attributes
    ----------
    algorithm : str
        The model's name and version.
    images : list of ImageKeypoints
        Per image, annotated and predicted vertebrae.
    rules : collections.Counter
        How often each level rule was used.
    seconds_per_image : float
        Inference time per image.
    """

    algorithm: str
    images: list[ImageKeypoints]
    rules: Counter[str]
    seconds_per_image: float


def keypoint_report(
    predictions: Mapping[str, ModelPredictions],
    out_dir: Path | None,
    *,
    splits: Mapping[str, int],
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
    cutoffs: GenantCutoffs = DEFAULT_CUTOFFS,
    iou_threshold: float = IOU_THRESHOLD,
    levels: bool = True,
    started: float | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the figures of each model's predictions and write the report.

    Parameters
    ----------
    predictions : mapping of str to ModelPredictions
        Display name to predictions (every model on the same images).
    out_dir : pathlib.Path or None
        Folder for the JSON report and the plots (created); None writes nothing.
    splits : mapping of str to int
        Images per split (for the report).
    seed, n_bootstrap : int, optional
        Bootstrap over studies.
    progress : bool, optional
        Print the report tables (stdout).
    cutoffs : GenantCutoffs, optional
        Grade bounds.
    iou_threshold : float, optional
        Keypoint-box IoU a match must exceed.
    levels : bool, optional
        Whether levels were named.
    started : float, optional
        ``time.monotonic()`` when the evaluation began (for ``seconds``).
    settings : mapping, optional
        More entries for the report's ``settings`` (e.g. how CT heights were measured).

    Returns
    -------
    dict
        The report (as `evaluate_keypoints` returns it).
    """
    started = time.monotonic() if started is None else started
    results: dict[str, KeypointMetrics] = {}
    model_json: dict[str, Any] = {}
    for name, predicted in predictions.items():
        images, rules, per_image = predicted.images, predicted.rules, predicted.seconds_per_image
        metrics = keypoint_metrics(
            images,
            iou_threshold=iou_threshold,
            cutoffs=cutoffs,
            n_resamples=n_bootstrap,
            seed=seed,
        )
        results[name] = metrics
        entry = {
            "algorithm": predicted.algorithm,
            "seconds_per_image": per_image,
            **metrics.as_dict(),
        }
        if entry["levels"] is not None:
            entry["levels"]["rules"] = dict(rules)
        model_json[name] = entry
    first = next(iter(results.values()))
    report: dict[str, Any] = {
        "data": {
            "images": first.counts["images"],
            "studies": first.counts["studies"],
            "images_without_spacing": first.counts["images_without_spacing"],
            "annotated_vertebrae": first.counts["annotated_vertebrae"],
            "annotated_fractured_vertebrae": first.counts["annotated_fractured_vertebrae"],
            "splits": dict(splits),
        },
        "settings": {
            "matching": (
                f"Hungarian, one-to-one, keypoint-box IoU > {iou_threshold:g}, vertebrae only"
            ),
            "centre": "mean of the six keypoints",
            "fractured_g": FRACTURED_G,
            "paper_cutoffs": dict(PAPER_CUTOFFS),
            "grade_cutoffs": {
                "mild": cutoffs.mild,
                "moderate": cutoffs.moderate,
                "severe": cutoffs.severe,
            },
            "patient": "study; lowest G (a study without predictions: G = 1)",
            "bootstrap": {
                "unit": "study",
                "resamples": n_bootstrap,
                "seed": seed,
                "confidence": 0.95,
            },
            "levels": levels,
            **(settings or {}),
        },
        "models": model_json,
        "paper_reference": PAPER_REFERENCE,
        "files": {},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = _plots(out_dir, results)
        report["files"] = {k: p.name for k, p in files.items()}
        report["files"]["report"] = REPORT_NAME
    report["seconds"] = round(time.monotonic() - started, 1)
    if out_dir is not None:
        (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        print(format_report(report), file=sys.stdout, flush=True)
    return report


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _plots(out: Path, results: Mapping[str, KeypointMetrics]) -> dict[str, Path]:
    from spinexr.training.metrics.plots import save_roc_plot

    files: dict[str, Path] = {}
    for task, cutoff in PAPER_CUTOFFS.items():
        for level in ("vertebra", "patient"):
            curves = {}
            for name, m in results.items():
                t = m.table
                if level == "vertebra":
                    g_true, g_pred = t.pair_g_true, t.pair_g_pred
                else:
                    _, g_true, g_pred = patient_scores(t)
                y = g_true <= cutoff
                if y.all() or not y.any():
                    continue  # single class: no curve
                fpr, tpr, _ = roc_curve(y, 1.0 - g_pred)
                curves[name] = (fpr, tpr, m.fractures[task][level].auroc.point)
            if curves:
                key = f"roc_{level}_{task}"
                files[key] = save_roc_plot(
                    out / f"{key}.png",
                    curves,
                    title=f"{TASK_TITLES[task]}, {level} level",
                )
    for name, m in results.items():
        if m.bland_altman["overall"].n:
            key = f"bland_altman_{_slug(name)}"
            files[key] = save_bland_altman_plot(out / f"{key}.png", m, title=name)
    return files


def save_bland_altman_plot(path: Path, metrics: KeypointMetrics, *, title: str) -> Path:
    """Bland-Altman plot of the three heights (mm) of matched vertebrae, written as a PNG.

    Parameters
    ----------
    path : pathlib.Path
        Output file (parent folders are created).
    metrics : KeypointMetrics
        One model's figures.
    title : str
        Model name for the title.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = metrics.table
    fig = Figure(figsize=(6.4, 5.6), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, name in enumerate(HEIGHT_NAMES):
        a, b = t.pair_heights_pred[:, i], t.pair_heights_true[:, i]
        ok = np.isfinite(a) & np.isfinite(b)
        ax.scatter((a[ok] + b[ok]) / 2, a[ok] - b[ok], s=10, alpha=0.6, label=name)
    ba = metrics.bland_altman["overall"]
    ax.axhline(ba.bias, color="black", linewidth=1.2, label=f"bias {ba.bias:+.2f} mm")
    if math.isfinite(ba.sd):
        for limit in (ba.lower, ba.upper):
            ax.axhline(limit, color="black", linestyle="--", linewidth=1)
        ax.plot(
            [],
            [],
            color="black",
            linestyle="--",
            label=f"limits of agreement {ba.lower:+.2f} … {ba.upper:+.2f} mm",
        )
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Mean of predicted and annotated height (mm)")
    ax.set_ylabel("Predicted − annotated height (mm)")
    ax.set_title(f"Bland-Altman, vertebral heights — {title} (n = {ba.n})")
    ax.legend(loc="best", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --- Text report -----------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _iv(m: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = m["ci95"]
    if m["value"] is None:
        return "n/a"
    if lo is None or hi is None:
        return _f(m["value"], digits)
    return f"{_f(m['value'], digits)} ({_f(lo, digits)}–{_f(hi, digits)})"


def format_report(report: Mapping[str, Any]) -> str:
    """Render a keypoint report as Markdown: Table 1, Table 2, heights/grades/levels.

    Parameters
    ----------
    report : mapping
        As returned by `evaluate_keypoints` (or read back from ``keypoints-report.json``).

    Returns
    -------
    str
        Markdown text; values are point estimates with 95 % bootstrap intervals.
    """
    d, s = report["data"], report["settings"]
    boot = s["bootstrap"]
    ref = report["paper_reference"]
    lines = [
        "# Vertebra keypoint evaluation",
        "",
        f"{d['images']} images of {d['studies']} studies, {d['annotated_vertebrae']} annotated "
        f"vertebrae ({d['annotated_fractured_vertebrae']} with G ≤ {s['fractured_g']}); "
        f"images without spacing (left out of the mm figures): {d['images_without_spacing']}. "
        f"Matching: {s['matching']}; centre = {s['centre']}. 95 % CIs from {boot['resamples']} "
        f"bootstrap resamples of studies (seed {boot['seed']}).",
        "",
        "## Table 1: vertebral body centres and detection",
        "",
        "| model | centre error, mm | centre error G ≤ 0.74, mm | median, mm "
        "| recall | recall G ≤ 0.74 | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        loc, det = m["localisation"], m["detection"]
        lines.append(
            f"| {name} | {_iv(loc['centre_error_mm'], 2)} | "
            f"{_iv(loc['centre_error_fractured_mm'], 2)} | "
            f"{_f(loc['centre_error_median_mm'], 2)} | {_iv(det['recall'])} | "
            f"{_iv(det['recall_fractured'])} | {_iv(det['precision'])} |"
        )
    t1 = ref["table1"]
    lines += [
        f"| *paper (CT)* | {t1['centre_error_mm']:.2f} | {t1['centre_error_fractured_mm']:.2f} "
        f"| | {t1['recall']:.3f} | {t1['recall_fractured']:.3f} | {t1['precision']:.3f} |",
        "",
        "## Table 2: fracture classification (vertebra level: matched vertebrae; "
        "patient level: lowest G per study)",
        "",
        "| grade | G by | ROC AUC vertebra | ROC AUC patient | specificity vertebra "
        "| specificity patient | sensitivity vertebra | sensitivity patient |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, title in TASK_TITLES.items():
        for name, m in report["models"].items():
            fr = m["fractures"][task]
            cells = [title, name]
            for key in ("auroc", "specificity", "sensitivity"):
                cells += [_iv(fr["vertebra"][key]), _iv(fr["patient"][key])]
            lines.append("| " + " | ".join(cells) + " |")
        p = ref["table2"][task]
        cells = [title, "*paper (CT)*"]
        for key in ("auroc", "specificity", "sensitivity"):
            cells += [f"{p['vertebra'][key]:.2f}", f"{p['patient'][key]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Heights, grades and levels (matched vertebrae)",
        "",
        "| model | height MAE, mm (a / m / p) | overall | Bland-Altman bias (LoA), mm "
        "| G MAE | grade accuracy | weighted κ (quadratic) | level accuracy | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        h = m["height_mae_mm"]
        per = " / ".join(_f(h[k]["value"], 2) for k in HEIGHT_NAMES)
        ba = m["bland_altman_mm"]["overall"]
        lo, hi = ba["limits_of_agreement"]
        ba_text = "n/a" if ba["bias"] is None else f"{ba['bias']:+.2f} ({_f(lo, 2)} … {_f(hi, 2)})"
        g = m["grades"]
        lv = m["levels"]
        if lv is None:
            level_text = "not named"
        else:
            level_text = (
                f"{_f(lv['accuracy'])} ({lv['correct']}/{lv['matched_with_annotated_level']}; "
                f"{lv['images_with_levels']}/{lv['images']} images named)"
            )
        lines.append(
            f"| {name} | {per} | {_iv(h['overall'], 2)} | {ba_text} | "
            f"{_iv(m['genant_index_mae'])} | {_f(g['accuracy'])} | {_f(g['kappa_quadratic'])} | "
            f"{level_text} | {_f(m['seconds_per_image'], 3)} |"
        )
    gc = next(iter(report["models"].values()))["grades"]["cutoffs"]
    lines += [
        "",
        f"Grades with the project's cut-offs: mild G ≤ {gc['mild']}, moderate G ≤ "
        f"{gc['moderate']}, severe G ≤ {gc['severe']}. Paper rows: Pisov et al. 2020 on chest "
        "CT (five-fold CV), for orientation only.",
        "",
    ]
    return "\n".join(lines)

"""ROC and precision-recall figures are written as real PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spinexr.pipeline.classes import LesionClass
from spinexr.training.metrics import (
    ImageBoxes,
    ImageDetections,
    auroc,
    average_precision,
    binary_metrics,
    roc_curve,
)
from spinexr.training.metrics.plots import save_pr_plot, save_roc_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (640, 560)
        # Not a blank canvas: lines and text were drawn.
        assert len(np.unique(np.asarray(im.convert("L")))) > 10


def test_roc_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    curves = {}
    for name, shift in (("densenet121", 1.0), ("ensemble", 1.5)):
        s = rng.normal(y * shift, 1.0)
        fpr, tpr, _ = roc_curve(y, s)
        curves[name] = (fpr, tpr, auroc(y, s))
    m = binary_metrics(y, s, 0.7)
    out = save_roc_plot(
        tmp_path / "sub" / "roc.png", curves, (1 - m["specificity"], m["sensitivity"])
    )
    assert out == tmp_path / "sub" / "roc.png"
    _check_png(out)
    with pytest.raises(ValueError, match="no ROC curves"):
        save_roc_plot(tmp_path / "x.png", {})


def test_pr_plot(tmp_path: Path) -> None:
    g = [
        ImageBoxes("a", np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1])),
        ImageBoxes("n", np.zeros((0, 4)), np.zeros(0, dtype=int)),
    ]
    d = [
        ImageDetections(
            "a", np.array([[0, 0, 10, 10], [20, 20, 29, 29]]), np.array([0.9, 0.8]), [0, 1]
        ),
        ImageDetections("n", np.array([[1, 1, 5, 5]]), np.array([0.95]), np.array([0])),
    ]
    result = average_precision(g, d)  # classes 2..6 have no ground truth (legend says n/a)
    names = [c.display_name for c in LesionClass]
    out = save_pr_plot(tmp_path / "pr.png", result, names)
    _check_png(out)
    with pytest.raises(ValueError, match="3 class names for 7 classes"):
        save_pr_plot(tmp_path / "y.png", result, names[:3])

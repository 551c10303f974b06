"""`spinexr-node evaluate`: the paper's Tables 3, 4 and 5 for a bundle on a dataset split.

Nothing is fitted on the evaluated split. The bundle's c* was fitted on the validation split
when the bundle was built (``threshold_method``); c* of the other fusion mode (reported for
comparison, as the paper's fusion table does) is fitted here on the validation split, which
is rebuilt with the split parameters recorded in the bundle.

Outputs (``--out``): ``evaluation.json``, ``evaluation.md``, ``roc.png``, ``pr_detector.png``,
``pr_fusion.png``, ``predictions.csv`` (one row per image: id, label, p, fused score, boxes).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinexr.pipeline.bundle import Bundle, verify_bundle
from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.results import FusionMode
from spinexr.training.data import SpineDataset, load_dataset
from spinexr.training.evaluation.predict import ImagePrediction, predict_records
from spinexr.training.evaluation.scores import (
    ClassificationReport,
    classification_report,
    detection_report,
    detections,
    fit_threshold,
    ground_truth,
    image_scores,
    labels,
)
from spinexr.training.metrics import DetectionResult, roc_curve

logger = logging.getLogger(__name__)

#: The paper's test-set figures (method.md section 7), printed beside ours for orientation.
PAPER_REFERENCE = {
    "auroc": 0.8861,
    "sensitivity": 0.8307,
    "specificity": 0.7932,
    "f1": 0.8106,
    "map_detector": 0.3315,
    "map_fusion": 0.3356,
}


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate_bundle` computed.

    Attributes
    ----------
    report : dict
        The JSON report.
    markdown : str
        The Markdown report.
    files : dict of str to pathlib.Path
        Written files by kind.
    """

    report: dict[str, Any]
    markdown: str
    files: dict[str, Path]


def split_parameters(bundle: Bundle) -> tuple[float, int]:
    """Return the validation split parameters recorded in the bundle (default 0.2 and seed 0)."""
    data = bundle.manifest.training_data
    return float(data.get("val_fraction", 0.2)), int(data.get("split_seed", 0))


def evaluate_bundle(
    bundle_dir: Path,
    data: Path,
    out: Path,
    *,
    split: str = "test",
    n_resamples: int = 10_000,
    seed: int = 0,
    device: str = "auto",
    val_fraction: float | None = None,
    split_seed: int | None = None,
    pipeline: Pipeline | None = None,
    say: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate a bundle on one split of a dataset and write the reports.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        The bundle.
    data : pathlib.Path
        Dataset root (VinDr-SpineXR layout).
    out : pathlib.Path
        Report folder (created).
    split : {"test", "val", "train"}
        Evaluated split.
    n_resamples, seed : int
        Bootstrap resamples and seed.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    val_fraction, split_seed : optional
        Override the validation split parameters recorded in the bundle.
    pipeline : Pipeline, optional
        An already built pipeline of this bundle.
    say : callable, optional
        Receives progress messages.

    Returns
    -------
    EvaluationResult
        Reports and files.

    Raises
    ------
    ValueError
        If the split is empty or has a single class.
    """
    speak = say or (lambda msg: logger.info("%s", msg))
    started = time.monotonic()
    bundle = verify_bundle(bundle_dir) if pipeline is None else pipeline.bundle
    fraction, sseed = split_parameters(bundle)
    fraction = fraction if val_fraction is None else val_fraction
    sseed = sseed if split_seed is None else split_seed
    dataset = load_dataset(data, val_fraction=fraction, seed=sseed)
    records = dataset.split(split)
    if not records:
        raise ValueError(f"split {split!r} of {data} has no images")
    pipe = pipeline if pipeline is not None else Pipeline(bundle, device=device)
    bundle_mode = bundle.fusion
    other_mode = FusionMode.PAPER_AVERAGE if bundle_mode is FusionMode.PAPER else FusionMode.PAPER
    thresholds = {bundle_mode: bundle.threshold}
    if split != "val" and dataset.split("val"):
        val = predict_records(pipe, dataset.split("val"), label="validation images")
        thresholds[other_mode] = fit_threshold(val, other_mode)
    elif split == "val":
        speak("evaluating the validation split: the figures are not held-out figures")
    predictions = predict_records(pipe, records, label=f"{split} images")
    if other_mode not in thresholds:
        thresholds[other_mode] = fit_threshold(predictions, other_mode)

    y = labels(predictions)
    if y.all() or not y.any():
        raise ValueError(f"split {split!r} has only {'abnormal' if y.all() else 'normal'} images")
    rows: list[ClassificationReport] = []
    for mode, name in (
        (FusionMode.PAPER, "classifier ensemble"),
        (FusionMode.PAPER_AVERAGE, "classifier + detector average"),
    ):
        rows.append(
            classification_report(
                name,
                y,
                image_scores(predictions, mode),
                thresholds[mode],
                n_resamples=n_resamples,
                seed=seed,
            )
        )
    study = _study_level(predictions, bundle_mode, thresholds[bundle_mode], n_resamples, seed)
    det_only = detection_report(predictions)
    fused = detection_report(predictions, threshold=thresholds[bundle_mode], mode=bundle_mode)
    coco = _cocoref(predictions, det_only)

    out.mkdir(parents=True, exist_ok=True)
    files = _plots(out, y, predictions, rows, det_only, fused)
    files["predictions"] = _write_predictions(out / "predictions.csv", predictions, bundle_mode)
    report = _report(
        bundle,
        data,
        split,
        dataset,
        predictions,
        rows,
        study,
        det_only,
        fused,
        coco,
        thresholds,
        bundle_mode,
        n_resamples,
        seed,
        time.monotonic() - started,
    )
    markdown = render_markdown(report)
    files["json"] = out / "evaluation.json"
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    files["markdown"] = out / "evaluation.md"
    files["markdown"].write_text(markdown)
    return EvaluationResult(report=report, markdown=markdown, files=files)


def _study_level(
    predictions: list[ImagePrediction],
    mode: FusionMode,
    threshold: float,
    n_resamples: int,
    seed: int,
) -> ClassificationReport | None:
    """Study-level row: probability = max over the study's images (Li et al.)."""
    scores = image_scores(predictions, mode)
    by_study: dict[str, tuple[bool, float]] = {}
    for p, s in zip(predictions, scores, strict=True):
        abnormal, best = by_study.get(p.record.study_id, (False, -math.inf))
        by_study[p.record.study_id] = (abnormal or p.record.abnormal, max(best, float(s)))
    y = np.array([v[0] for v in by_study.values()], dtype=bool)
    s = np.array([v[1] for v in by_study.values()], dtype=np.float64)
    if y.all() or not y.any():
        return None
    return classification_report(
        "study (max over images)", y, s, threshold, n_resamples=n_resamples, seed=seed
    )


def _cocoref(predictions: list[ImagePrediction], ours: DetectionResult) -> dict[str, Any]:
    """Cross-check our per-class AP against pycocotools on the same detections."""
    from spinexr.training.metrics.cocoref import pycocotools_ap

    theirs = pycocotools_ap(ground_truth(predictions), detections(predictions))
    both = ~np.isnan(ours.per_class) & ~np.isnan(theirs)
    diff = float(np.max(np.abs(ours.per_class[both] - theirs[both]))) if both.any() else 0.0
    return {"max_abs_difference": diff, "agrees_1e-6": diff <= 1e-6}


def _plots(
    out: Path,
    y: np.ndarray,
    predictions: list[ImagePrediction],
    rows: list[ClassificationReport],
    det_only: DetectionResult,
    fused: DetectionResult,
) -> dict[str, Path]:
    from spinexr.training.metrics.plots import save_pr_plot, save_roc_plot

    curves = {}
    for mode, row in zip((FusionMode.PAPER, FusionMode.PAPER_AVERAGE), rows, strict=True):
        fpr, tpr, _ = roc_curve(y, image_scores(predictions, mode))
        curves[row.name] = (fpr, tpr, float(row.point["auroc"]))
    first = rows[0].point
    point = (1.0 - float(first["specificity"]), float(first["sensitivity"]))
    return {
        "roc": save_roc_plot(out / "roc.png", curves, point),
        "pr_detector": save_pr_plot(
            out / "pr_detector.png",
            det_only,
            CLASS_NAMES,
            title="Detector only: precision-recall at IoU 0.5",
        ),
        "pr_fusion": save_pr_plot(
            out / "pr_fusion.png",
            fused,
            CLASS_NAMES,
            title="With the fusion rule: precision-recall at IoU 0.5",
        ),
    }


def _write_predictions(path: Path, predictions: list[ImagePrediction], mode: FusionMode) -> Path:
    fused = image_scores(predictions, FusionMode.PAPER_AVERAGE)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "image_id",
                "study_id",
                "abnormal",
                "probability",
                "averaged",
                "boxes",
                "top_box_score",
            ]
        )
        for p, a in zip(predictions, fused, strict=True):
            writer.writerow(
                [
                    p.record.image_id,
                    p.record.study_id,
                    int(p.record.abnormal),
                    f"{p.probability:.6f}",
                    f"{a:.6f}",
                    len(p.boxes),
                    f"{p.boxes[0].score:.6f}" if p.boxes else "",
                ]
            )
    return path


def _interval_json(row: ClassificationReport) -> dict[str, Any]:
    out: dict[str, Any] = {"threshold": row.threshold}
    for name in ("auroc", "sensitivity", "specificity", "f1"):
        iv = row.intervals[name]
        out[name] = {
            "value": _num(row.point[name]),
            "ci95": [_num(iv.low), _num(iv.high)],
            "resamples_used": iv.n_resamples_used,
        }
    for name in ("tp", "fp", "tn", "fn"):
        if name in row.point:
            out[name] = int(row.point[name])
    return out


def _detection_json(result: DetectionResult) -> dict[str, Any]:
    return {
        "map50": _num(result.mean),
        "per_class": {
            name: {"ap50": _num(ap), "ground_truth": int(g), "detections": int(d)}
            for name, ap, g, d in zip(
                CLASS_NAMES, result.per_class, result.num_gt, result.num_det, strict=True
            )
        },
    }


def _num(value: Any) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v


def _report(
    bundle: Bundle,
    data: Path,
    split: str,
    dataset: SpineDataset,
    predictions: list[ImagePrediction],
    rows: list[ClassificationReport],
    study: ClassificationReport | None,
    det_only: DetectionResult,
    fused: DetectionResult,
    coco: dict[str, Any],
    thresholds: dict[FusionMode, float],
    mode: FusionMode,
    n_resamples: int,
    seed: int,
    seconds: float,
) -> dict[str, Any]:
    return {
        "bundle": {
            "name": bundle.name,
            "version": bundle.version,
            "demo": bundle.demo,
            "device_uid": bundle.device_uid,
            "fusion": str(mode),
            "threshold": bundle.threshold,
            "threshold_method": bundle.manifest.threshold_method,
        },
        "data": {
            "root": str(data),
            "split": split,
            "images": len(predictions),
            "abnormal_images": int(sum(p.record.abnormal for p in predictions)),
            "studies": len({p.record.study_id for p in predictions}),
            "notices": list(dataset.notices),
        },
        "thresholds": {str(m): t for m, t in thresholds.items()},
        "bootstrap": {"resamples": n_resamples, "seed": seed, "confidence": 0.95},
        "classification": {row.name: _interval_json(row) for row in rows},
        "study_classification": _interval_json(study) if study is not None else None,
        "detection": {
            "detector_only": _detection_json(det_only),
            "with_fusion": _detection_json(fused),
        },
        "pycocotools_check": coco,
        "paper_reference_test": PAPER_REFERENCE,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """Render the JSON report as Markdown tables in the shape of the paper's Tables 3–5.

    Parameters
    ----------
    report : dict
        As written to ``evaluation.json``.

    Returns
    -------
    str
        Markdown text.
    """
    b, d = report["bundle"], report["data"]
    lines = [
        f"# Evaluation of {b['name']} {b['version']} on the {d['split']} split",
        "",
        f"{d['images']} images ({d['abnormal_images']} abnormal) from {d['studies']} studies of "
        f"`{d['root']}`. c* = {b['threshold']:.4f} ({b['threshold_method']}); fusion "
        f"`{b['fusion']}`; 95% CIs from {report['bootstrap']['resamples']} bootstrap resamples "
        f"of images (seed {report['bootstrap']['seed']}).",
        "",
    ]
    if b["demo"]:
        lines += ["**Demo bundle trained on synthetic phantoms: not for clinical use.**", ""]
    lines += [
        "## Classification (Table 3)",
        "",
        "| model | c* | AUROC (%) | sensitivity (%) | specificity (%) | F1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    rows = dict(report["classification"])
    if report.get("study_classification"):
        rows["study (max over images)"] = report["study_classification"]
    for name, row in rows.items():
        cells = [name, f"{row['threshold']:.4f}"]
        for key in ("auroc", "sensitivity", "specificity", "f1"):
            m = row[key]
            lo, hi = m["ci95"]
            cells.append(f"{_pct(m['value'])} ({_pct(lo)}–{_pct(hi)})")
        lines.append("| " + " | ".join(cells) + " |")
    ref = report["paper_reference_test"]
    lines += [
        f"| *paper (VinDr-SpineXR test)* | 0.2808 | {_pct(ref['auroc'])} | "
        f"{_pct(ref['sensitivity'])} | {_pct(ref['specificity'])} | {_pct(ref['f1'])} |",
        "",
        "## Detection: AP@0.5 per class (Tables 4 and 5)",
        "",
        "| class | ground truth | AP@0.5 detector (%) | AP@0.5 with fusion (%) |",
        "|---|---|---|---|",
    ]
    det = report["detection"]["detector_only"]
    fus = report["detection"]["with_fusion"]
    for name in CLASS_NAMES:
        a, f = det["per_class"][name], fus["per_class"][name]
        lines.append(f"| {name} | {a['ground_truth']} | {_pct(a['ap50'])} | {_pct(f['ap50'])} |")
    lines += [
        f"| **mAP** | | **{_pct(det['map50'])}** | **{_pct(fus['map50'])}** |",
        f"| *paper (Sparse R-CNN)* | | {_pct(ref['map_detector'])} | {_pct(ref['map_fusion'])} |",
        "",
        "AP: 101-point interpolated precision at IoU 0.5, all images including normal ones, at "
        "most 100 detections per image; classes without ground truth are n/a and left out of "
        "the mean. Cross-check with pycocotools (`iouThrs=[0.5]`): max |Δ AP| = "
        f"{report['pycocotools_check']['max_abs_difference']:.2e}.",
        "",
    ]
    return "\n".join(lines)

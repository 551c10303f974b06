"""`spinexr-node bundle build`: trained weights → a verified bundle with c* and metrics.

Steps: copy the classifier state dicts and the exported detector (weights-only checkpoint and
its resolved config) into a staging folder next to the destination, run the models on the
**validation** split (rebuilt from the dataset with the given split parameters, the ones the
models were trained with), fit c* there by Youden's J for the bundle's fusion mode, record the
validation metrics, write the manifest and move the folder into place. The destination only
ever holds a complete, verified bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinexr.pipeline.bundle import Bundle, write_bundle
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.preprocess import DETECTOR_LONGER_MAX, DETECTOR_SHORTER
from spinexr.pipeline.results import FusionMode
from spinexr.training.data import load_dataset
from spinexr.training.evaluation.predict import predict_records
from spinexr.training.evaluation.scores import (
    detection_report,
    fit_threshold,
    image_scores,
    labels,
)
from spinexr.training.metrics import auroc, binary_metrics

logger = logging.getLogger(__name__)

THRESHOLD_METHOD = "youden_j_on_validation"

_MODEL_NAMES = {"SparseRCNN": "sparse-rcnn", "FasterRCNN": "faster-rcnn", "RetinaNet": "retinanet"}


@dataclass
class BundleSpec:
    """What goes into a bundle.

    Attributes
    ----------
    name, version : str
        Bundle identity (the version is written into every output object).
    classifiers : sequence of (str, pathlib.Path)
        (architecture, state-dict file) per ensemble member.
    detector_checkpoint, detector_config : pathlib.Path
        Exported detector (``detector.pth`` and ``detector.py`` of a training run).
    data : pathlib.Path
        Dataset whose validation split fits c*.
    val_fraction, split_seed : float, int
        Validation split parameters (those of training).
    detector_scale : tuple of int
        (shorter, longer bound) the detector was trained at.
    fusion : FusionMode or None
        Image score c* is fitted for; None picks the mode with the higher validation AUROC.
    display_threshold : float
        Lowest displayed box score.
    demo : bool
        Trained on synthetic phantoms.
    training_data : dict
        Free-form description recorded in the manifest (split parameters are added).
    extra_metrics : dict
        Further metrics recorded in the manifest (e.g. test figures).
    """

    name: str
    version: str
    classifiers: Sequence[tuple[str, Path]]
    detector_checkpoint: Path
    detector_config: Path
    data: Path
    val_fraction: float = 0.2
    split_seed: int = 0
    detector_scale: tuple[int, int] = (DETECTOR_SHORTER, DETECTOR_LONGER_MAX)
    fusion: FusionMode | None = FusionMode.PAPER
    display_threshold: float = 0.3
    demo: bool = False
    training_data: dict[str, Any] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)


def detector_model_name(config: Path) -> str:
    """Short model name of a detector config (``sparse-rcnn``, ``retinanet``, ...)."""
    from spinexr.pipeline.detector import load_config

    kind = str(load_config(config).model.type)
    return _MODEL_NAMES.get(kind, kind.lower())


def build_bundle(
    spec: BundleSpec,
    out: Path,
    *,
    device: str = "auto",
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> Bundle:
    """Build, fit c* on validation, verify and move a bundle into `out`.

    Parameters
    ----------
    spec : BundleSpec
        Contents.
    out : pathlib.Path
        Destination folder (must not exist unless `force`).
    device : str
        Device for the validation run.
    force : bool
        Replace an existing `out`.
    say : callable, optional
        Progress messages.

    Returns
    -------
    Bundle
        The verified bundle at `out`.

    Raises
    ------
    FileExistsError
        If `out` exists and not `force`.
    FileNotFoundError
        If an input file is missing.
    ValueError
        If the validation split is empty or has one class only.
    """
    speak = say or (lambda msg: logger.info("%s", msg))
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    inputs = [p for _, p in spec.classifiers] + [spec.detector_checkpoint, spec.detector_config]
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"missing input file(s): {', '.join(missing)}")
    dataset = load_dataset(spec.data, val_fraction=spec.val_fraction, seed=spec.split_seed)
    val = dataset.split("val")
    if not val:
        raise ValueError(f"the validation split of {spec.data} is empty (val_fraction?)")

    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, Path] = {}
    members = []
    for arch, path in spec.classifiers:
        rel = f"classifier/{arch}.pt"
        files[rel] = Path(path)
        members.append({"arch": arch, "weights": rel})
    files["detector/detector.pth"] = Path(spec.detector_checkpoint)
    files["detector/detector.py"] = Path(spec.detector_config)
    fields: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "classifier": members,
        "detector": {
            "model": detector_model_name(spec.detector_config),
            "config": "detector/detector.py",
            "checkpoint": "detector/detector.pth",
        },
        "threshold": 0.5,
        "threshold_method": "provisional",
        "display_threshold": spec.display_threshold,
        "fusion": spec.fusion or FusionMode.PAPER,
        "demo": spec.demo,
        "training_data": {
            **spec.training_data,
            "val_fraction": spec.val_fraction,
            "split_seed": spec.split_seed,
            "images": {s: len(dataset.split(s)) for s in ("train", "val", "test")},
        },
    }
    try:
        provisional = write_bundle(staging, fields, files, detector_scale=spec.detector_scale)
        speak(f"fitting c* on {len(val)} validation images")
        pipeline = Pipeline(provisional, device=device)
        predictions = predict_records(pipeline, val, label="validation images")
        y = labels(predictions)
        if y.all() or not y.any():
            raise ValueError("the validation split needs normal and abnormal images to fit c*")
        aurocs = {m: auroc(y, image_scores(predictions, m)) for m in FusionMode}
        mode = spec.fusion if spec.fusion is not None else max(aurocs, key=aurocs.__getitem__)
        threshold = fit_threshold(predictions, mode)
        scores = image_scores(predictions, mode)
        point = binary_metrics(y, scores, threshold)
        validation: dict[str, Any] = {
            "images": len(predictions),
            "auroc": auroc(y, scores),
            "sensitivity": point["sensitivity"],
            "specificity": point["specificity"],
            "f1": point["f1"],
            "map50_detector": _finite(detection_report(predictions).mean),
            "map50_fusion": _finite(
                detection_report(predictions, threshold=threshold, mode=mode).mean
            ),
            "auroc_by_fusion": {str(m): a for m, a in aurocs.items()},
        }
        if spec.fusion is None:
            validation["fusion_chosen_by"] = "higher validation AUROC"
        fields |= {
            "threshold": threshold,
            "threshold_method": THRESHOLD_METHOD,
            "fusion": mode,
            "metrics": {"validation": validation, **spec.extra_metrics},
        }
        staged = {rel: staging / rel for rel in files}
        write_bundle(staging, fields, staged, detector_scale=spec.detector_scale)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from spinexr.pipeline.bundle import verify_bundle

    bundle = verify_bundle(out)
    speak(
        f"bundle {bundle.name} {bundle.version} written to {out}: c* = {threshold:.4f} "
        f"(validation AUROC {validation['auroc']:.4f}, mAP@0.5 {validation['map50_detector']})"
    )
    return bundle


def set_manifest_entry(
    bundle_dir: Path, key: str, entry: Mapping[str, Any], files: Mapping[str, Path]
) -> Bundle:
    """Add (or replace) one manifest entry and its files; the other files stay as they are.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        A bundle that verifies.
    key : str
        The manifest field (e.g. ``"anatomy"``, ``"vertebrae"``).
    entry : mapping
        Its value.
    files : mapping of str to pathlib.Path
        Relative path in the bundle → source file, for the files the entry references.

    Returns
    -------
    Bundle
        The re-verified bundle (its device UID changes when a weight file changed).
    """
    from spinexr.pipeline.bundle import verify_bundle

    bundle = verify_bundle(bundle_dir)
    data = bundle.manifest.model_dump()
    current = {rel: bundle.directory / rel for rel in data.pop("files")}
    data[key] = dict(entry)
    return write_bundle(bundle.directory, data, {**current, **files})


def update_metrics(bundle_dir: Path, metrics: Mapping[str, Any]) -> Bundle:
    """Add entries to a bundle's ``metrics`` (e.g. test figures); files and hashes unchanged.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        The bundle.
    metrics : mapping
        Entries to add or replace.

    Returns
    -------
    Bundle
        The re-verified bundle (same device UID: the weights did not change).
    """
    from spinexr.pipeline.bundle import verify_bundle

    bundle = verify_bundle(bundle_dir)
    data = bundle.manifest.model_dump()
    files = {rel: bundle.directory / rel for rel in data.pop("files")}
    data["metrics"] = {**data["metrics"], **metrics}
    return write_bundle(bundle.directory, data, files)


def _finite(value: float) -> float | None:
    return None if value != value else float(value)


def detector_scale_of_run(run: Path) -> tuple[int, int]:
    """Return the inference scale a detector training run used (``train_config.py``'s record).

    Parameters
    ----------
    run : pathlib.Path
        Detector training folder.

    Returns
    -------
    tuple of int
        (shorter side, longer bound); the paper's 800/1333 when the run does not say.
    """
    from spinexr.pipeline.detector import load_config

    path = Path(run) / "train_config.py"
    if not path.is_file():
        return DETECTOR_SHORTER, DETECTOR_LONGER_MAX
    scale = load_config(path).get("spinexr", {}).get("scale")
    if not scale:
        return DETECTOR_SHORTER, DETECTOR_LONGER_MAX
    return int(scale[0]), int(scale[1])

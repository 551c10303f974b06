"""Helpers shared by pipeline tests (importable as ``pipelinesupport``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinexr.pipeline.bundle import Bundle

BundleFactory = Callable[..., Bundle]
"""The ``make_bundle`` fixture: keyword overrides of `bundle_fields` → written bundle."""


def bundle_fields(**overrides: Any) -> dict[str, Any]:
    """Manifest fields of a one-member test bundle with placeholder detector files."""
    fields: dict[str, Any] = {
        "name": "test-bundle",
        "version": "0.0.1",
        "classifier": [{"arch": "densenet121", "weights": "classifier/densenet121.pt"}],
        "detector": {
            "model": "sparse-rcnn",
            "config": "detector/config.py",
            "checkpoint": "detector/model.pth",
        },
        "threshold": 0.3,
        "threshold_method": "youden_j_on_validation",
        "display_threshold": 0.2,
        "metrics": {"auroc": 0.5},
        "training_data": {"kind": "none", "note": "test fixture"},
        "demo": True,
    }
    fields.update(overrides)
    return fields


def build_tiny_bundle(
    directory: Path,
    *,
    archs: tuple[str, ...] = ("densenet121",),
    config: str = "sparse-rcnn_r18_fpn_tiny_spinexr",
    seed: int = 0,
    **overrides: Any,
) -> Bundle:
    """A complete bundle with random-initialised models (real detector, no placeholders).

    Parameters
    ----------
    directory : Path
        Where to write the bundle (a sibling ``<name>-src`` folder holds the sources).
    archs : tuple of str
        Classifier ensemble members.
    config : str
        Detector config name in ``pipeline/detector/configs``.
    seed : int
        Torch seed for the random weights.
    **overrides
        Manifest fields.
    """
    import torch

    from spinexr.pipeline.bundle import write_bundle
    from spinexr.pipeline.classifier import build_classifier
    from spinexr.pipeline.detector import (
        build_detector_model,
        detector_config_path,
        save_checkpoint,
    )

    src = directory.parent / f"{directory.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    files: dict[str, Path] = {}
    members = []
    for arch in archs:
        path = src / f"{arch}.pt"
        torch.save(build_classifier(arch).state_dict(), path)
        files[f"classifier/{arch}.pt"] = path
        members.append({"arch": arch, "weights": f"classifier/{arch}.pt"})
    cfg = detector_config_path(config)
    checkpoint, resolved = save_checkpoint(build_detector_model(cfg), src / "detector.pth", cfg)
    files["detector/detector.py"] = resolved
    files["detector/detector.pth"] = checkpoint
    fields = bundle_fields(
        classifier=members,
        detector={
            "model": "sparse-rcnn",
            "config": "detector/detector.py",
            "checkpoint": "detector/detector.pth",
        },
        **overrides,
    )
    return write_bundle(directory, fields, files)


class Brightness(torch.nn.Module):
    """A classifier member whose logit is the mean input brightness (no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


class _NoDetections:
    boxes = np.zeros((0, 4), np.float32)
    labels = np.zeros(0, np.int64)
    scores = np.zeros(0, np.float32)


class NoBoxes:
    """A lesion detector that finds nothing and counts the images of each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images: Sequence[np.ndarray], transforms: Sequence[object]) -> list[object]:
        self.calls.append(len(images))
        return [_NoDetections() for _ in images]


class RadiographsOnly:
    """Mixin for pipeline test doubles that implement ``analyze_study``: the runner's ``analyze``.

    The doubles stand in for the radiograph models; a study with CT files is not theirs.
    """

    def analyze(self, sources, *, ct_files=(), study_instance_uid=None):
        from spinexr.pipeline.engine import StudyAnalysis

        assert not ct_files, "a radiograph test double got CT files"
        result = self.analyze_study(sources, study_instance_uid=study_instance_uid)  # type: ignore[attr-defined]
        return StudyAnalysis(result)

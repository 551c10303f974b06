"""Converting a training run's (pickled) checkpoint to the weights-only format a bundle ships."""

from __future__ import annotations

import fractions
from pathlib import Path

import torch

from spinexr.pipeline.detector import Detector, build_detector_model, detector_config_path
from spinexr.training.detection.export import export_checkpoint


def test_export_of_a_pickled_training_checkpoint(tmp_path: Path) -> None:
    cfg = detector_config_path("sparse-rcnn_r18_fpn_tiny_spinexr")
    torch.manual_seed(0)
    model = build_detector_model(cfg)
    # An mmengine Runner checkpoint also pickles optimizer/logging objects: stand-in here.
    runner_ckpt = tmp_path / "iter_10.pth"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "message_hub": {"lr": fractions.Fraction(1, 3)},
            "meta": {"iter": 10},
        },
        runner_ckpt,
    )
    ckpt, cfg_path = export_checkpoint(runner_ckpt, tmp_path / "export.pth", cfg)
    torch.load(ckpt, weights_only=True)  # only tensors and plain containers
    exported = Detector(cfg_path, ckpt)
    for a, b in zip(exported.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

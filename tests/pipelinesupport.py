"""Helpers shared by pipeline tests (importable as ``pipelinesupport``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

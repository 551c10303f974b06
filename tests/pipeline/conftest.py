"""Fixtures for pipeline tests: small DenseNet weights and model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pipelinesupport import BundleFactory, bundle_fields

from spinexr.pipeline.bundle import Bundle, write_bundle
from spinexr.pipeline.classifier import build_classifier


@pytest.fixture(scope="session")
def densenet121_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised DenseNet-121 state dict (seeded), saved once per session."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "densenet121.pt"
    torch.save(build_classifier("densenet121").state_dict(), path)
    return path


@pytest.fixture
def make_bundle(tmp_path: Path, densenet121_weights: Path) -> BundleFactory:
    """Write a bundle with DenseNet-121 weights and placeholder detector files."""
    counter = iter(range(1000))

    def make(**overrides: Any) -> Bundle:
        src = tmp_path / f"src{next(counter)}"
        src.mkdir()
        (src / "config.py").write_text("# detector config placeholder\n")
        (src / "model.pth").write_bytes(b"placeholder checkpoint")
        files = {
            "classifier/densenet121.pt": densenet121_weights,
            "detector/config.py": src / "config.py",
            "detector/model.pth": src / "model.pth",
        }
        return write_bundle(src / "bundle", bundle_fields(**overrides), files)

    return make

"""Write a trained image check into a model bundle (manifest entry ``anatomy``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from spinexr.pipeline.anatomy import ANATOMY_ARCH, ANATOMY_CLASSES, ANATOMY_SIZE
from spinexr.pipeline.bundle import Bundle
from spinexr.training.bundles.build import set_manifest_entry

ANATOMY_WEIGHTS: Final = "anatomy/anatomy.pt"
"""Where the weights go in the bundle folder."""


def add_anatomy_to_bundle(
    bundle_dir: Path,
    weights: Path,
    other_threshold: float,
    metrics: Mapping[str, Any],
) -> Bundle:
    """Add (or replace) a bundle's image check; the other files stay as they are.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        A bundle that verifies.
    weights : pathlib.Path
        State dict of an `AnatomyNet` (copied into the bundle).
    other_threshold : float
        ``other`` probability at or above which an image is not a spine image.
    metrics : mapping
        How it was validated (recorded in the manifest entry).

    Returns
    -------
    Bundle
        The re-verified bundle (its device UID changes: a weight file was added).
    """
    entry = {
        "model": ANATOMY_ARCH,
        "weights": ANATOMY_WEIGHTS,
        "classes": list(ANATOMY_CLASSES),
        "input_size": list(ANATOMY_SIZE),
        "other_threshold": other_threshold,
        "metrics": dict(metrics),
    }
    return set_manifest_entry(bundle_dir, "anatomy", entry, {ANATOMY_WEIGHTS: Path(weights)})

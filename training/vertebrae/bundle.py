"""Write a trained vertebra keypoint model into a model bundle (manifest entry ``vertebrae``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from spinexr.pipeline.bundle import Bundle
from spinexr.training.bundles.build import set_manifest_entry

VERTEBRAE_CHECKPOINT: Final = "vertebrae/keypoints.pt"
"""Where the checkpoint goes in the bundle folder."""


def add_vertebrae_to_bundle(
    bundle_dir: Path,
    checkpoint: Path,
    arch: str,
    metrics: Mapping[str, Any],
    *,
    score_threshold: float = 0.5,
    sacrum_threshold: float = 0.5,
) -> Bundle:
    """Add (or replace) a bundle's keypoint model; the other files stay as they are.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        A bundle that verifies.
    checkpoint : pathlib.Path
        Checkpoint of the keypoint model (copied into the bundle).
    arch : {"pisov", "keypointrcnn"}
        Its architecture.
    metrics : mapping
        How it was validated (recorded in the manifest entry).
    score_threshold, sacrum_threshold : float
        Lowest reported vertebra score and lowest accepted S1 (level anchor) score.

    Returns
    -------
    Bundle
        The re-verified bundle (its device UID changes: a weight file was added).
    """
    entry = {
        "model": arch,
        "checkpoint": VERTEBRAE_CHECKPOINT,
        "score_threshold": score_threshold,
        "sacrum_threshold": sacrum_threshold,
        "metrics": dict(metrics),
    }
    return set_manifest_entry(
        bundle_dir, "vertebrae", entry, {VERTEBRAE_CHECKPOINT: Path(checkpoint)}
    )

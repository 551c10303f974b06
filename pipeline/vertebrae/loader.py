"""Load the keypoint model a bundle names (Pisov's detector or the Keypoint R-CNN baseline)."""

from __future__ import annotations

from pathlib import Path

import torch

from spinexr.pipeline.vertebrae.objects import KeypointModel


def load_keypoint_model(arch: str, checkpoint: Path, device: torch.device | str) -> KeypointModel:
    """Build the keypoint model of architecture ``arch`` from its checkpoint.

    Parameters
    ----------
    arch : {"pisov", "keypointrcnn"}
        The bundle manifest's ``vertebrae.model``.
    checkpoint : pathlib.Path
        The checkpoint file.
    device : torch.device or str
        Where to run it.

    Returns
    -------
    KeypointModel
        Ready for `predict`.

    Raises
    ------
    ValueError
        For an unknown architecture.
    """
    if arch == "pisov":
        from spinexr.pipeline.vertebrae.detector import PisovDetector

        return PisovDetector.from_checkpoint(checkpoint, device)
    if arch == "keypointrcnn":
        from spinexr.pipeline.vertebrae.krcnn import KeypointRCNNModel

        return KeypointRCNNModel.from_checkpoint(checkpoint, device)
    raise ValueError(f"unknown keypoint model architecture {arch!r}")

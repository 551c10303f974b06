"""Turning a training run's checkpoint into the weights-only checkpoint a bundle ships."""

from __future__ import annotations

from pathlib import Path

from spinexr.pipeline.detector import (
    ConfigSource,
    build_detector_model,
    load_checkpoint,
    load_config,
    save_checkpoint,
)


def export_checkpoint(src: Path, dst: Path, config: ConfigSource) -> tuple[Path, Path]:
    """Convert a trusted training checkpoint (mmengine ``Runner``) to our weights-only format.

    Unpickles ``src`` fully (``weights_only=False``): use it only on checkpoints this project's
    training wrote. The result loads with ``weights_only=True`` and is what a bundle ships.

    Parameters
    ----------
    src : pathlib.Path
        The training checkpoint.
    dst : pathlib.Path
        The checkpoint to write (its resolved config goes beside it, as in
        :func:`~spinexr.pipeline.detector.save_checkpoint`).
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config the checkpoint was trained with.

    Returns
    -------
    tuple of pathlib.Path
        (checkpoint, config) paths written.
    """
    cfg = load_config(config)
    model = build_detector_model(cfg, init_weights=False)
    load_checkpoint(model, src, weights_only=False)
    return save_checkpoint(model, dst, cfg)

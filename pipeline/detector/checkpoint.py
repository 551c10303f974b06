"""Detector checkpoints: weights-only files with their resolved config beside them.

A checkpoint is mmengine's layout reduced to what inference needs and holds only tensors,
strings and numbers, so it loads with ``torch.load(weights_only=True)``; the config it was
built from is written, fully resolved, as a Python config file next to it (no ``_base_``: it
loads on a machine that has MMDetection but not our ``configs/``). Checkpoints are read from
local files only.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.detector.backend import mmdetection
from spinexr.pipeline.detector.config import ConfigSource, config_class_names, load_config

CHECKPOINT_FORMAT = "spinexr-detector/1"
"""Value of ``meta["format"]`` in checkpoints written by :func:`save_checkpoint`."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def dump_config(config: ConfigSource, path: Path) -> Path:
    """Write a config, fully resolved, as a self-contained Python config file.

    The file has no ``_base_``: it loads with
    :func:`~spinexr.pipeline.detector.config.load_config` on a machine that has MMDetection
    but not our ``configs/``. Written atomically.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.
    path : pathlib.Path
        Destination (``.py``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = load_config(config).pretty_text.encode()
    write_atomically(path, text)
    return path


def save_checkpoint(
    model: nn.Module, path: Path, config: ConfigSource, config_path: Path | None = None
) -> tuple[Path, Path]:
    """Write a model's weights and, beside them, its resolved config.

    The checkpoint is
    ``{"state_dict": ..., "meta": {"format", "cfg", "dataset_meta", "mmdet_version"}}``, and
    loads with ``torch.load(weights_only=True)`` (and with mmengine's own
    ``load_checkpoint``). Both files are written atomically.

    Parameters
    ----------
    model : torch.nn.Module
        The detector (e.g. from ``build_detector_model``, or ``Detector.model``).
    path : pathlib.Path
        Checkpoint file, conventionally ``*.pth``.
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config the model was built from.
    config_path : pathlib.Path, optional
        Where to write the resolved config; default ``path`` with suffix ``.py``.

    Returns
    -------
    tuple of pathlib.Path
        (checkpoint, config) paths.
    """
    cfg = load_config(config)
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    checkpoint = {
        "state_dict": state,
        "meta": {
            "format": CHECKPOINT_FORMAT,
            "cfg": cfg.pretty_text,
            "dataset_meta": {"classes": list(config_class_names(cfg))},
            "mmdet_version": mmdetection().mmdet_version,
        },
    }
    config_path = path.with_suffix(".py") if config_path is None else config_path
    if config_path == path:
        raise ValueError(f"checkpoint and config would both be written to {path}")
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
    dump_config(cfg, config_path)
    return path, config_path


def load_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Load weights from a local checkpoint file into a model, strictly.

    Accepts our format (:func:`save_checkpoint`), mmengine ``Runner`` checkpoints and bare
    state dicts; a ``module.`` prefix (from DistributedDataParallel) is removed.

    Parameters
    ----------
    model : torch.nn.Module
        The detector, built from the checkpoint's config.
    path : pathlib.Path
        A local file; URLs are not accepted.
    map_location : str or torch.device
        As in :func:`torch.load`.
    weights_only : bool
        Unpickle only tensors and plain containers (torch's safe loader, torch ≥ 2.6's
        default). Our checkpoints need nothing more. An mmengine ``Runner`` checkpoint also
        holds optimizer and logging objects and needs ``False``: pass it only for a file whose
        SHA-256 you have checked (the bundle manifest), as unpickling runs code — or convert
        it once with ``spinexr.training.detection.export.export_checkpoint``.

    Returns
    -------
    dict
        The checkpoint's ``meta`` (empty for a bare state dict).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a weights-only checkpoint (with ``weights_only``), has no state
        dict, or its keys or shapes do not match the model.
    """
    checkpoint = _read_checkpoint(path, map_location, weights_only)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: no state dict of tensors in the checkpoint")
    state = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the model's config: {exc}") from exc
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def _read_checkpoint(
    path: Path, map_location: str | torch.device, weights_only: bool
) -> dict[str, Any]:
    if _URL.match(str(path)):  # Path() turns "https://" into "https:/"
        raise ValueError(f"checkpoints are read from local files only, not {path}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} is not a weights-only checkpoint (it pickles objects other than tensors "
            "and plain containers); convert a trusted training checkpoint with "
            "export_checkpoint()"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: a checkpoint must be a dict, got {type(checkpoint).__name__}")
    return checkpoint

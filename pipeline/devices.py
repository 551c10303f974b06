"""Choosing the torch device (one rule for the classifier and the detector)."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a torch device.

    Parameters
    ----------
    device : str
        ``"auto"`` picks the GPU when there is one.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    ValueError
        When a GPU is asked for and none is available, or the name is not a device.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"not a torch device: {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    return dev

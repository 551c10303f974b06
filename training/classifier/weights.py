"""Initial weights from a local file (``--init``); nothing is ever downloaded.

Accepted: a torchvision DenseNet state dict (ImageNet head: its 1000-class ``classifier.*``
is skipped and the single-logit head keeps its random initialisation; the pre-0.4 key names
``norm.1`` / ``conv.2`` of torchvision's published DenseNet files are renamed as torchvision
does), one of our state dicts (``best.pt``) or checkpoints (``last.pt``), or a state dict
saved from ``nn.DataParallel`` (``module.`` prefix).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Final

from torch import nn

from spinexr.pipeline.classifier import load_state_dict
from spinexr.pipeline.errors import WeightsError
from spinexr.training.classifier.config import TrainingError

logger = logging.getLogger(__name__)

_OLD_DENSENET_KEY: Final = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_HEAD: Final = "classifier."
_SHOW: Final = 3


def load_init_weights(model: nn.Module, path: Path, arch: str) -> list[str]:
    """Load local initial weights into a freshly built classifier.

    Parameters
    ----------
    model : torch.nn.Module
        From `build_classifier(arch)`.
    path : pathlib.Path
        The weight file.
    arch : str
        Architecture (for messages).

    Returns
    -------
    list of str
        Keys of the file that were skipped (a head of another shape).

    Raises
    ------
    TrainingError
        When the file is missing or unreadable, or its backbone does not fit `arch`.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--init {path}: no such file (give a local weight file or 'none')")
    try:
        raw = load_state_dict(path)
    except WeightsError as exc:
        raise TrainingError(f"--init {path}: {exc.message}") from exc
    state = {_rename(k): v for k, v in raw.items()}
    own = model.state_dict()
    skipped = [
        k for k in state if k.startswith(_HEAD) and (k not in own or state[k].shape != own[k].shape)
    ]
    for k in skipped:
        del state[k]
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    missing = sorted(
        k
        for k in own
        if k not in state and not k.startswith(_HEAD) and not k.endswith("num_batches_tracked")
    )
    if unexpected or wrong_shape or missing:
        parts = [
            f"{len(keys)} {what} (first: {', '.join(keys[:_SHOW])})"
            for what, keys in (
                ("unexpected keys", unexpected),
                ("keys of another shape", wrong_shape),
                ("missing keys", missing),
            )
            if keys
        ]
        raise TrainingError(f"--init {path.name} does not fit {arch}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)
    head = "random (file head skipped)" if skipped else "from the file"
    if not any(k.startswith(_HEAD) for k in state) and not skipped:
        head = "random (none in the file)"
    logger.info("initial weights from %s (%d tensors); head %s", path.name, len(state), head)
    return skipped


def _rename(key: str) -> str:
    if key.startswith("module."):
        key = key[len("module.") :]
    match = _OLD_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key

"""Output files of a classifier run, each written atomically (`write_atomically`).

``last.pt``
    ``{"state_dict", "optimizer", "iteration", "rng", "best_auroc", "best_iteration",
    "loss_ema", "seconds", "config", "format"}``; readable with ``weights_only=True``, and
    loadable by the pipeline's `load_classifier` too (it unwraps ``state_dict``).
``best.pt``
    Plain state dict of the best model (CPU tensors) for `load_classifier` / a bundle.
``history.jsonl``
    One JSON object per evaluation.
``val_predictions.csv``
    ``image_id,study_id,label,logit,probability`` of the best model on the validation split.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from spinexr.pipeline.atomic import write_atomically
from spinexr.training.classifier.config import TrainingError
from spinexr.training.data import ImageRecord

CHECKPOINT_FORMAT: Final = 1
LAST: Final = "last.pt"
BEST: Final = "best.pt"
HISTORY: Final = "history.jsonl"
VAL_PREDICTIONS: Final = "val_predictions.csv"
CONFIG: Final = "config.json"


def save_torch(obj: Any, path: Path) -> None:
    """`torch.save` atomically."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return a detached CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Torch RNG states (CPU, and every GPU when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (GPU states only when GPUs are present)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_last(path: Path) -> dict[str, Any]:
    """Read ``last.pt`` (``weights_only=True``) and check its format.

    Parameters
    ----------
    path : pathlib.Path
        The checkpoint.

    Returns
    -------
    dict
        Its content.

    Raises
    ------
    TrainingError
        When the file is missing, unreadable or not one of ours.
    """
    if not path.is_file():
        raise TrainingError(f"--resume: {path} not found (nothing to resume in that --out)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and runtime errors
        raise TrainingError(f"--resume: cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"--resume: {path} is not a classifier checkpoint of this version")
    return state


def write_predictions(
    path: Path, records: Sequence[ImageRecord], logits: npt.NDArray[np.floating[Any]]
) -> None:
    """Write ``val_predictions.csv`` (probability = sigmoid of the logit).

    Parameters
    ----------
    path : pathlib.Path
        Destination.
    records : sequence of ImageRecord
        Images, in the order of `logits`.
    logits : numpy.ndarray
        One logit per record.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image_id", "study_id", "label", "logit", "probability"])
    probabilities = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    for record, logit, p in zip(records, logits, probabilities, strict=True):
        writer.writerow(
            [record.image_id, record.study_id, record.label, f"{logit:.6g}", f"{p:.6g}"]
        )
    write_atomically(path, text.getvalue())


def truncate_history(path: Path, iteration: int) -> None:
    """Keep only history lines up to `iteration` (lines a crashed run wrote past its checkpoint).

    Parameters
    ----------
    path : pathlib.Path
        ``history.jsonl``.
    iteration : int
        Iteration of the checkpoint being resumed.
    """
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("iteration", 0) <= iteration
    ]
    write_atomically(path, "".join(f"{line}\n" for line in kept))


def append_history(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line to ``history.jsonl`` (flushed and fsynced)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

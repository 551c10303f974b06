"""Options of a classifier training run (paper recipe as defaults, ``method.md`` section 4)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from spinexr.pipeline.classifier import ARCHS
from spinexr.pipeline.preprocess import CLASSIFIER_SIZE

DEFAULT_CACHE_NAME: Final = ".spinexr-cache"
"""Cache folder under the dataset root when ``cache`` is not given."""

RESUME_MUST_MATCH: Final = (
    "data",
    "arch",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "image_size",
    "hflip",
    "seed",
    "val_fraction",
    "max_side",
    "pos_weight",
)
"""Options that change the training trajectory; ``resume`` refuses a checkpoint made with
other values (``iterations``, ``eval_every``, ``workers``, ``device``, ``cache`` may change)."""


class TrainingError(Exception):
    """A training run that cannot start or go on; the message says what to change."""


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Everything a classifier training run needs.

    Attributes
    ----------
    data : pathlib.Path
        Dataset root in the VinDr-SpineXR layout.
    out : pathlib.Path
        Output folder (``last.pt``, ``best.pt``, ``history.jsonl``, ``val_predictions.csv``,
        ``config.json``).
    arch : {"densenet121", "densenet169", "densenet201"}
        Architecture.
    iterations : int
        Total SGD steps (paper: 10,000).
    batch_size : int
        Images per step (paper: 32).
    lr, momentum, weight_decay : float
        SGD; constant learning rate 0.001 (paper), momentum 0.9, no weight decay (the paper
        states none).
    image_size : int
        Side of the square input; serving feeds 224 (other sizes are for experiments only).
    hflip : bool
        Random horizontal flips (p = 0.5); AP views are near-symmetric and lateral views
        face either way.
    init : pathlib.Path or None
        Local initial weights: a torchvision-format DenseNet state dict (ImageNet head
        replaced) or one of ours; `None` = random initialisation. Nothing is downloaded.
    resume : bool
        Continue from ``<out>/last.pt``.
    seed : int
        Seed of initialisation, sample order, flips and the validation split.
    val_fraction : float
        Share of ``train.csv`` studies used for validation.
    eval_every : int
        Validate and checkpoint every this many iterations (and at the end).
    workers : int
        DataLoader worker processes (0 = load in the training process).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    cache : pathlib.Path or None
        `DisplayCache` folder; `None` = ``<data>/.spinexr-cache``.
    max_side : int or None
        `None` (default): inputs are the full-resolution display image resized straight to
        ``image_size`` exactly as serving does (cached at that size). An integer: inputs are
        resized from a display image cached with this longer side (two resizes, not
        bit-identical to serving; lets one cache serve several input sizes).
    pos_weight : float or None
        ``pos_weight`` of the BCE loss; `None` = unweighted (the image-level classes are
        about balanced in VinDr-SpineXR, unlike the box classes).
    eval_batch_size : int or None
        Batch size of validation; `None` = ``batch_size``.
    threads : int or None
        Intra-op CPU threads (``torch.set_num_threads``, process-wide); `None` keeps torch's
        default. On a CPU shared with other work, 1 thread can be much faster than several
        (OpenMP barriers wait for descheduled threads).
    log_every_s : float
        Seconds between progress log lines.
    """

    data: Path
    out: Path
    arch: str = "densenet121"
    iterations: int = 10_000
    batch_size: int = 32
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    image_size: int = CLASSIFIER_SIZE[0]
    hflip: bool = True
    init: Path | None = None
    resume: bool = False
    seed: int = 0
    val_fraction: float = 0.2
    eval_every: int = 500
    workers: int = 2
    device: str = "auto"
    cache: Path | None = None
    max_side: int | None = None
    pos_weight: float | None = None
    eval_batch_size: int | None = None
    threads: int | None = None
    log_every_s: float = field(default=10.0, compare=False)

    def __post_init__(self) -> None:
        """Normalise paths and check ranges."""
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.init is not None:
            object.__setattr__(self, "init", Path(self.init))
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        for name in ("iterations", "batch_size", "image_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0, got {self.workers}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be within [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be within [0, 1), got {self.val_fraction}")
        if self.max_side is not None and self.max_side < self.image_size:
            problems.append(
                f"max_side ({self.max_side}) must be at least image_size ({self.image_size})"
            )
        if self.pos_weight is not None and not (
            self.pos_weight > 0 and math.isfinite(self.pos_weight)
        ):
            problems.append(f"pos_weight must be a positive number, got {self.pos_weight}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            problems.append(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def cache_dir(self) -> Path:
        """The `DisplayCache` folder actually used."""
        return self.cache if self.cache is not None else self.data / DEFAULT_CACHE_NAME

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (paths as strings), as saved in checkpoints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Name the trajectory options that differ from a checkpoint's saved config.

        Parameters
        ----------
        saved : dict
            `to_dict` of the run that wrote the checkpoint.

        Returns
        -------
        list of str
            ``"name: checkpoint X, now Y"`` per difference (empty when resumable).
        """
        now = self.to_dict()
        now["data"] = str(self.data.resolve())
        problems = []
        for name in RESUME_MUST_MATCH:
            before = saved.get(name)
            if name == "data" and before is not None:
                before = str(Path(before).resolve())
            if before != now[name]:
                problems.append(f"{name}: checkpoint {before!r}, now {now[name]!r}")
        return problems

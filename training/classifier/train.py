"""Train one DenseNet member of the image-level classifier (``method.md`` section 4).

SGD with momentum on BCE-with-logits, constant learning rate, a fixed number of iterations;
validation AUROC every ``eval_every`` iterations picks ``best.pt``. Inputs, normalisation and
the forward pass of validation are those of the serving pipeline, so ``best.pt`` gives the
same logits when a bundle loads it.

Resuming from ``last.pt`` gives the same weights as an uninterrupted run: the sample order
and flips are functions of (seed, iteration) (`inputs`), the optimiser state is saved, and
the model has no other randomness (DenseNet's dropout rate is 0).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn
from torch.utils.data import DataLoader

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.classifier import build_classifier
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.preprocess import CLASSIFIER_SIZE
from spinexr.training.classifier import checkpoint as ckpt
from spinexr.training.classifier.config import ClassifierTrainConfig, TrainingError
from spinexr.training.classifier.inputs import (
    ClassifierInputs,
    StreamBatchSampler,
    flip_mask,
    member_wrapper,
    predict_logits,
)
from spinexr.training.classifier.weights import load_init_weights
from spinexr.training.data import DisplayCache, ImageRecord, load_dataset
from spinexr.training.metrics import auroc

logger = logging.getLogger(__name__)

_EMA_BETA = 0.98


@dataclass(frozen=True)
class TrainProgress:
    """What the ``progress`` callback receives after every iteration and evaluation.

    Attributes
    ----------
    iteration, total : int
        Iterations done and planned.
    loss : float
        Smoothed training loss (bias-corrected exponential moving average, β = 0.98).
    images_per_s : float
        Throughput since the run (or resume) started, data loading included.
    eta_s : float
        Estimated seconds to the last iteration.
    val_auroc : float or None
        Set on evaluation events when the validation split has both classes.
    event : str
        ``"iteration"`` or ``"evaluation"``.
    """

    iteration: int
    total: int
    loss: float
    images_per_s: float
    eta_s: float
    val_auroc: float | None = None
    event: str = "iteration"


@dataclass(frozen=True)
class ClassifierTrainResult:
    """Outcome of `train_classifier`.

    Attributes
    ----------
    out : pathlib.Path
        Output folder.
    best_path, last_path, history_path : pathlib.Path
        ``best.pt``, ``last.pt``, ``history.jsonl``.
    val_predictions_path : pathlib.Path or None
        ``val_predictions.csv`` (`None` without a validation split).
    arch : str
        Architecture.
    iterations : int
        Iterations done in total (including those before a resume).
    best_iteration : int
        Iteration of ``best.pt``.
    best_val_auroc : float or None
        Its validation AUROC; `None` when validation cannot rank (no validation images or
        one class only): ``best.pt`` is then the latest model.
    final_loss : float or None
        Smoothed training loss at the end (`None` if no iteration ran in this call).
    seconds : float
        Training wall time, summed over resumed runs.
    resumed_from : int or None
        Iteration of the checkpoint this call resumed from.
    notices : list of str
        The dataset loader's notices.
    """

    out: Path
    best_path: Path
    last_path: Path
    history_path: Path
    val_predictions_path: Path | None
    arch: str
    iterations: int
    best_iteration: int
    best_val_auroc: float | None
    final_loss: float | None
    seconds: float
    resumed_from: int | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class _State:
    iteration: int = 0
    best_auroc: float | None = None
    best_iteration: int | None = None
    ema: float = 0.0
    ema_weight: float = 0.0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.ema / self.ema_weight if self.ema_weight > 0 else float("nan")

    def add_loss(self, value: float) -> None:
        self.ema = _EMA_BETA * self.ema + (1 - _EMA_BETA) * value
        self.ema_weight = _EMA_BETA * self.ema_weight + (1 - _EMA_BETA)


def train_classifier(
    config: ClassifierTrainConfig, *, progress: Callable[[TrainProgress], None] | None = None
) -> ClassifierTrainResult:
    """Train (or resume training) one classifier member.

    Parameters
    ----------
    config : ClassifierTrainConfig
        The run.
    progress : callable, optional
        Called with a `TrainProgress` after every iteration and evaluation. Progress lines
        are logged (INFO) every ``config.log_every_s`` seconds regardless.

    Returns
    -------
    ClassifierTrainResult
        Paths and best validation AUROC.

    Raises
    ------
    TrainingError
        Existing checkpoint without ``resume``, a checkpoint made with other options, bad
        ``init`` weights, an empty training split or a non-finite loss.
    DatasetError
        When the dataset cannot be loaded.
    UnsupportedImageError
        When an image cannot be decoded (names the image).
    """
    out = config.out
    last_path = out / ckpt.LAST
    if last_path.exists() and not config.resume:
        raise TrainingError(
            f"{last_path} exists: pass --resume to continue that run or choose another --out"
        )
    device = _device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dataset = load_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    train, val = dataset.split("train"), dataset.split("val")
    if not train:
        raise TrainingError(f"{config.data}: the training split is empty")
    if config.image_size != CLASSIFIER_SIZE[0]:
        logger.warning(
            "image size %d: the serving pipeline feeds %d×%d, so these weights are for "
            "experiments, not for a bundle",
            config.image_size,
            *CLASSIFIER_SIZE,
        )
    _log_split(train, val)
    try:
        config.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(
            f"cannot create the image cache {config.cache_dir} ({exc.strerror}); "
            "choose a writable folder with --cache"
        ) from exc
    cache = DisplayCache(config.cache_dir, max_side=config.max_side)

    torch.manual_seed(config.seed)
    model = build_classifier(config.arch)
    state = _State()
    saved: dict[str, Any] | None = None
    if config.resume:
        saved = ckpt.load_last(last_path)
        problems = config.resume_mismatches(saved.get("config", {}))
        if problems:
            raise TrainingError(
                f"--resume: {last_path} was made with other options ({'; '.join(problems)}); "
                "use the same options or another --out"
            )
        model.load_state_dict(saved["state_dict"])
        state = _State(
            iteration=int(saved["iteration"]),
            best_auroc=saved.get("best_auroc"),
            best_iteration=saved.get("best_iteration"),
            ema=float(saved["loss_ema"][0]),
            ema_weight=float(saved["loss_ema"][1]),
            seconds=float(saved["seconds"]),
        )
        ckpt.truncate_history(out / ckpt.HISTORY, state.iteration)
        logger.info("resuming %s from iteration %d", last_path, state.iteration)
        if config.init is not None:
            logger.info("--init %s ignored: the weights come from last.pt", config.init.name)
    elif config.init is not None:
        load_init_weights(model, config.init, config.arch)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        ckpt.set_rng_state(saved["rng"])
    resumed_from = state.iteration if saved is not None else None

    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / ckpt.CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
    loop = _Loop(config, model, optimizer, device, cache, train, val, state, progress)
    final_loss = loop.run()
    best_path = out / ckpt.BEST
    if not best_path.exists():  # only possible when a resumed run had nothing left to do
        raise TrainingError(f"{best_path} is missing although {last_path} exists (deleted?)")
    return ClassifierTrainResult(
        out=out,
        best_path=best_path,
        last_path=last_path,
        history_path=out / ckpt.HISTORY,
        val_predictions_path=(out / ckpt.VAL_PREDICTIONS) if val else None,
        arch=config.arch,
        iterations=state.iteration,
        best_iteration=int(state.best_iteration or state.iteration),
        best_val_auroc=state.best_auroc,
        final_loss=final_loss,
        seconds=state.seconds,
        resumed_from=resumed_from,
        notices=list(dataset.notices),
    )


class _Loop:
    """The iterations, evaluations and checkpoints of one call."""

    def __init__(
        self,
        config: ClassifierTrainConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        cache: DisplayCache,
        train: Sequence[ImageRecord],
        val: Sequence[ImageRecord],
        state: _State,
        progress: Callable[[TrainProgress], None] | None,
    ) -> None:
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.cache = cache
        self.train = train
        self.val = val
        self.state = state
        self.progress = progress
        self.wrapper = member_wrapper(model).to(device)  # serving's normalisation
        pos_weight = config.pos_weight
        self.pos_weight = None if pos_weight is None else torch.tensor([pos_weight], device=device)
        self.from_display = config.max_side is not None

    def run(self) -> float | None:
        config, state = self.config, self.state
        start = state.iteration
        if start >= config.iterations:
            logger.info("already at iteration %d of %d: nothing to do", start, config.iterations)
            return None
        loader = DataLoader(
            ClassifierInputs(
                self.train, self.cache, config.image_size, from_display=self.from_display
            ),
            batch_sampler=StreamBatchSampler(
                len(self.train), config.batch_size, config.seed, start, config.iterations
            ),
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
        )
        logger.info(
            "training %s: iterations %d..%d, batch %d, lr %g, %d training / %d validation "
            "images, device %s",
            config.arch,
            start + 1,
            config.iterations,
            config.batch_size,
            config.lr,
            len(self.train),
            len(self.val),
            self.device,
        )
        self.model.train()
        began = time.monotonic()
        seconds_before = state.seconds
        eval_seconds = 0.0
        last_log = began
        window_loss: list[float] = []
        for images, labels in loader:
            loss = self._step(images, labels, state.iteration)
            state.iteration += 1
            state.add_loss(loss)
            window_loss.append(loss)
            now = time.monotonic()
            # throughput of training alone (evaluations excluded), data loading included
            rate = (
                (state.iteration - start)
                * config.batch_size
                / max(now - began - eval_seconds, 1e-9)
            )
            eta = (config.iterations - state.iteration) * config.batch_size / max(rate, 1e-9)
            report = TrainProgress(state.iteration, config.iterations, state.loss, rate, eta)
            if self.progress is not None:
                self.progress(report)
            is_eval = (
                state.iteration % config.eval_every == 0 or state.iteration == config.iterations
            )
            if now - last_log >= config.log_every_s or is_eval:
                last_log = now
                logger.info("%s", _line(report))
            if is_eval:
                state.seconds = seconds_before + (now - began)
                eval_started = time.monotonic()
                self._evaluate(float(np.mean(window_loss)), rate)
                window_loss.clear()
                eval_seconds += time.monotonic() - eval_started
        return state.loss

    def _step(self, images: torch.Tensor, labels: torch.Tensor, iteration: int) -> float:
        if self.config.hflip:
            mask = flip_mask(self.config.seed, iteration, images.shape[0])
            images[mask] = images[mask].flip(-1)
        x = self.wrapper.normalise(images.to(self.device, non_blocking=True))
        target = labels.to(self.device, dtype=torch.float32, non_blocking=True)
        logits = self.model(x).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"the training loss is {value} at iteration {iteration + 1}; "
                "lower --lr or check the data"
            )
        return value

    def _evaluate(self, mean_loss: float, rate: float) -> None:
        config, state = self.config, self.state
        started = time.monotonic()
        auc: float | None = None
        logits: npt.NDArray[np.float32] | None = None
        if self.val:
            logits = predict_logits(
                self.model,
                self.val,
                self.cache,
                image_size=config.image_size,
                batch_size=config.eval_batch_size or config.batch_size,
                device=self.device,
                workers=config.workers,
                from_display=self.from_display,
            )
            labels = np.array([r.abnormal for r in self.val])
            if labels.any() and not labels.all():
                auc = auroc(labels, logits)
        improved = (
            state.best_iteration is None
            or (auc is not None and (state.best_auroc is None or auc > state.best_auroc))
            or (auc is None and state.best_auroc is None)
        )
        out = config.out
        if improved:
            state.best_auroc, state.best_iteration = auc, state.iteration
            ckpt.save_torch(ckpt.cpu_state_dict(self.model), out / ckpt.BEST)
            if logits is not None:
                ckpt.write_predictions(out / ckpt.VAL_PREDICTIONS, self.val, logits)
        eval_seconds = time.monotonic() - started
        entry = {
            "iteration": state.iteration,
            "loss": state.loss,
            "loss_mean": mean_loss,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "val_auroc": auc,
            "best_val_auroc": state.best_auroc,
            "best_iteration": state.best_iteration,
            "images_per_s": rate,
            "seconds": state.seconds,
            "eval_seconds": eval_seconds,
        }
        ckpt.append_history(out / ckpt.HISTORY, entry)
        saved_config = config.to_dict()
        saved_config["data"] = str(config.data.resolve())
        ckpt.save_torch(
            {
                "format": ckpt.CHECKPOINT_FORMAT,
                "state_dict": ckpt.cpu_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "iteration": state.iteration,
                "rng": ckpt.rng_state(),
                "best_auroc": state.best_auroc,
                "best_iteration": state.best_iteration,
                "loss_ema": [state.ema, state.ema_weight],
                "seconds": state.seconds,
                "config": saved_config,
            },
            out / ckpt.LAST,
        )
        self.model.train()
        shown = "n/a" if auc is None else f"{auc:.4f}"
        best = "n/a" if state.best_auroc is None else f"{state.best_auroc:.4f}"
        logger.info(
            "iteration %d: validation AUROC %s (best %s at iteration %s)%s; %.1f s",
            state.iteration,
            shown,
            best,
            state.best_iteration,
            " - saved best.pt" if improved else "",
            eval_seconds,
        )
        if self.progress is not None:
            self.progress(
                TrainProgress(
                    state.iteration,
                    config.iterations,
                    state.loss,
                    rate,
                    0.0,
                    val_auroc=auc,
                    event="evaluation",
                )
            )


def _line(p: TrainProgress) -> str:
    return (
        f"iteration {p.iteration}/{p.total}: loss {p.loss:.4f}, "
        f"{p.images_per_s:.1f} images/s, ETA {_duration(p.eta_s)}"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def _log_split(train: Sequence[ImageRecord], val: Sequence[ImageRecord]) -> None:
    for name, records in (("train", train), ("val", val)):
        abnormal = sum(r.abnormal for r in records)
        logger.info(
            "%s: %d images of %d studies, %d abnormal (%.0f%%)",
            name,
            len(records),
            len({r.study_id for r in records}),
            abnormal,
            100.0 * abnormal / max(len(records), 1),
        )

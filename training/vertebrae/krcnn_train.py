"""Train the Keypoint R-CNN baseline (`spinexr.pipeline.vertebrae.krcnn`) on keypoint records.

Optimiser: AdamW (Adam with decoupled weight decay 1e-4; Pisov et al. train with Adam), the
learning rate rising linearly over the first 5 % of the iterations (at most 200), then
following a cosine down to 1 % of ``lr``; gradients clipped to norm 10. The loss is the sum
of torchvision's five (RPN objectness and box, classifier, box regression, keypoint
cross-entropy).

Augmentation, per image: a zoom about the model spacing (uniform in ``zoom``: images without
spacing get only the nominal one, and sites' spacings are not always right), a gamma
(uniform in ``gamma``, before the z-scoring that removes brightness and contrast), and a
horizontal flip with probability ``hflip`` (`flip_horizontal`: the keypoints are reordered
with `genant.FLIP_HORIZONTAL`, never torchvision's reference COCO indices).

Ground truth: every annotated keypoint has visibility 2; the box is the keypoints' box padded
by ``config.box_margin`` and clipped to the image. A keypoint outside the image (a body cut
by the edge) falls outside every proposal and so out of the keypoint loss; an object whose
clipped box is under a pixel wide or tall is left out.

Reproducibility: the weights are initialised after ``torch.manual_seed(seed)``; the images
of iteration ``i`` come from a permutation drawn for its epoch and their augmentation from
``numpy.random.default_rng((seed, i, slot))``; torchvision's proposal sampling uses the torch
generator seeded once; the number of CPU threads is fixed (``threads``). The same call on
the same machine and thread count gives the same weights.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torchvision

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.vertebrae.genant import FLIP_HORIZONTAL
from spinexr.pipeline.vertebrae.krcnn import (
    LABEL_OF_KIND,
    KRCNNConfig,
    build_keypointrcnn,
    make_checkpoint,
    model_input,
    model_size,
    resample,
    rescale_points,
)
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.records import KeypointRecord

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "keypointrcnn.pt"
"""File name of the checkpoint `train_keypointrcnn` writes in its output folder."""

_EMA_BETA = 0.95
_CLIP_NORM = 10.0


@dataclass(frozen=True)
class KRCNNRecipe:
    """A Keypoint R-CNN training recipe: architecture, input scale and schedule.

    Attributes
    ----------
    name : str
        Its name (``spinexr-node vertebrae train --recipe``).
    iterations, batch_size : int
        Training length.
    lr : float
        Peak learning rate (AdamW).
    config : KRCNNConfig
        Architecture and input scale.
    threads : int or None
        ``torch.set_num_threads`` during training (None: leave it).
    """

    name: str
    iterations: int
    batch_size: int
    lr: float
    config: KRCNNConfig = field(default_factory=KRCNNConfig)
    threads: int | None = 1


FULL_RECIPE = KRCNNRecipe(name="full", iterations=2000, batch_size=2, lr=2e-4)
"""The issue's ResNet-50 FPN at 0.8 mm (a GPU, or patience)."""

DEMO_RECIPE = KRCNNRecipe(
    name="demo", iterations=600, batch_size=2, lr=4e-4, config=KRCNNConfig.cpu()
)
"""The light CPU configuration (`KRCNNConfig.cpu`), 600 steps of two images: the demo bundle's
keypoint model (held-out figures in ``training/README.md``)."""


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to every training image.

    Attributes
    ----------
    hflip : float
        Probability of a horizontal flip.
    zoom : tuple of float
        Range of the extra magnification about the model spacing.
    gamma : tuple of float
        Range of the gamma applied to the [0, 1] image.
    """

    hflip: float = 0.5
    zoom: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)


NO_AUGMENTATION = Augmentation(hflip=0.0, zoom=(1.0, 1.0), gamma=(1.0, 1.0))


def flip_horizontal(
    image: npt.NDArray[Any], keypoints: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """Mirror an image left-right with its keypoints.

    The columns are mirrored (``x → columns - 1 - x``) and the six points of each object are
    reordered with `genant.FLIP_HORIZONTAL`, so that after the flip the anterior indices
    still hold the points on the image's left (smaller x), as on the phantoms and in the
    usual hanging of a lateral view: the mirrored posterior wall becomes the anterior one.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, columns)`` image.
    keypoints : numpy.ndarray
        ``(n, 6, 2)`` ``(x, y)`` in that image's pixels.

    Returns
    -------
    tuple of numpy.ndarray
        The flipped image and keypoints.
    """
    columns = image.shape[1]
    flipped = np.ascontiguousarray(image[:, ::-1])
    points = np.array(keypoints, dtype=np.float64, copy=True)
    points[..., 0] = columns - 1 - points[..., 0]
    return flipped, points[:, list(FLIP_HORIZONTAL), :]


def make_target(
    keypoints: npt.NDArray[np.float64],
    labels: Sequence[int],
    size: tuple[int, int],
    margin: float,
) -> dict[str, torch.Tensor]:
    """Return torchvision's training target for one image.

    Parameters
    ----------
    keypoints : numpy.ndarray
        ``(n, 6, 2)`` keypoints in the model image's pixels (pixel centres at integers).
    labels : sequence of int
        Class index of each object (`krcnn.LABEL_OF_KIND`).
    size : tuple of int
        ``(rows, columns)`` of the model image.
    margin : float
        Box padding as a fraction of the keypoint box's width and height on each side.

    Returns
    -------
    dict
        ``boxes`` ``(m, 4)``, ``labels`` ``(m,)``, ``keypoints`` ``(m, 6, 3)`` (visibility 2),
        in torchvision's continuous coordinates, objects with a degenerate box left out.
    """
    rows, columns = size
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 6, 2) + 0.5
    lo, hi = points.min(axis=1), points.max(axis=1)
    pad = margin * (hi - lo)
    boxes = np.concatenate([lo - pad, hi + pad], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0.0, columns)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0.0, rows)
    ok = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
    visibility = np.full((*points.shape[:2], 1), 2.0)
    return {
        "boxes": torch.as_tensor(boxes[ok], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)[ok]).reshape(-1),
        "keypoints": torch.as_tensor(
            np.concatenate([points, visibility], axis=2)[ok], dtype=torch.float32
        ).reshape(-1, 6, 3),
    }


def training_sample(
    record: KeypointRecord,
    config: KRCNNConfig,
    rng: np.random.Generator,
    augmentation: Augmentation = Augmentation(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return one augmented network input and its target.

    Parameters
    ----------
    record : KeypointRecord
        The image and its annotations.
    config : KRCNNConfig
        Model spacing, size cap and box margin.
    rng : numpy.random.Generator
        Source of the augmentation.
    augmentation : Augmentation
        What to vary.

    Returns
    -------
    tuple
        ``(3, rows, columns)`` input and the target of `make_target`.
    """
    zoom = float(rng.uniform(*augmentation.zoom))
    flip = bool(rng.random() < augmentation.hflip)
    gamma = float(rng.uniform(*augmentation.gamma))
    size = model_size(record.display.shape, record.spacing_mm, config, zoom)
    image = resample(record.display, size)
    if record.objects:
        points = np.stack([np.asarray(o.keypoints, dtype=np.float64) for o in record.objects])
    else:
        points = np.zeros((0, 6, 2))
    points = rescale_points(points, record.display.shape, size)
    labels = [LABEL_OF_KIND[o.kind] for o in record.objects]
    if flip:
        image, points = flip_horizontal(image, points)
    if gamma != 1.0:
        image = np.power(image, gamma, dtype=np.float32)
    return model_input(image), make_target(points, labels, size, config.box_margin)


def _learning_rate(base: float, iteration: int, total: int) -> float:
    """Linear warm-up, then cosine to 1 % of ``base``."""
    warmup = max(1, min(200, total // 20))
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    t = (iteration - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _batch(n: int, iteration: int, batch_size: int, seed: int) -> list[int]:
    """Record indices of one iteration: consecutive slices of per-epoch permutations."""
    out = []
    for slot in range(batch_size):
        k = iteration * batch_size + slot
        epoch, pos = divmod(k, n)
        out.append(int(np.random.default_rng((seed, 1, epoch)).permutation(n)[pos]))
    return out


def train_keypointrcnn(
    records: Sequence[KeypointRecord],
    out: Path,
    *,
    seed: int = 0,
    iterations: int = 2000,
    batch_size: int = 2,
    lr: float = 2e-4,
    device: str = "cpu",
    progress: bool = True,
    config: KRCNNConfig | None = None,
    augmentation: Augmentation = Augmentation(),
    threads: int | None = 1,
    weight_decay: float = 1e-4,
    time_limit_s: float | None = None,
) -> Path:
    """Train a Keypoint R-CNN from scratch and write its checkpoint.

    Parameters
    ----------
    records : sequence of KeypointRecord
        Training images (every record is used, whatever its ``split``).
    out : pathlib.Path
        Output folder; the checkpoint is ``out / CHECKPOINT_NAME`` (written atomically).
    seed : int
        Seeds the weights, the sample order, the augmentation and torchvision's sampling.
    iterations : int
        Optimiser steps.
    batch_size : int
        Images per step.
    lr : float
        Peak learning rate of AdamW.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    progress : bool
        Print progress lines (loss, iterations per second, ETA) to stderr every 10 s.
    config : KRCNNConfig, optional
        Architecture and input scale (default `KRCNNConfig()`, the issue's ResNet-50 FPN).
    augmentation : Augmentation
        Per-image augmentation (`NO_AUGMENTATION` switches it off).
    threads : int, optional
        CPU threads for torch during training (restored afterwards); None leaves it. One by
        default: on a shared two-core machine a step with two threads took five times as
        long as with one (the threads wait on each other while others use the cores).
    weight_decay : float
        AdamW's decoupled weight decay.
    time_limit_s : float, optional
        Stop after this many seconds of training even if iterations remain (the cosine
        schedule is then cut short; the checkpoint records the iterations done).

    Returns
    -------
    pathlib.Path
        The checkpoint.

    Raises
    ------
    ValueError
        For no records or non-positive sizes.
    FloatingPointError
        When the loss becomes non-finite.
    """
    if not records:
        raise ValueError("no training records")
    if iterations < 1 or batch_size < 1 or not lr > 0:
        raise ValueError("iterations, batch_size and lr must be positive")
    cfg = config if config is not None else KRCNNConfig()
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = build_keypointrcnn(cfg).to(dev)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        bar = RateProgress(iterations, "iterations", prefix="krcnn", every=10.0, unit="it")
        ema = ema_weight = 0.0
        history: list[list[float]] = []
        start = time.monotonic()
        done = 0
        for it in range(iterations):
            if time_limit_s is not None and time.monotonic() - start > time_limit_s:
                logger.warning("time limit %.0f s reached after %d iterations", time_limit_s, it)
                break
            images, targets = [], []
            for slot, index in enumerate(_batch(len(records), it, batch_size, seed)):
                rng = np.random.default_rng((seed, 2, it, slot))
                image, target = training_sample(records[index], cfg, rng, augmentation)
                images.append(image.to(dev))
                targets.append({k: v.to(dev) for k, v in target.items()})
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(lr, it, iterations)
            losses = model(images, targets)
            loss = sum(losses.values())
            value = float(loss.detach())
            if not math.isfinite(value):
                parts = {k: float(v.detach()) for k, v in losses.items()}
                raise FloatingPointError(f"non-finite loss at iteration {it}: {parts}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, _CLIP_NORM)
            optimiser.step()
            done = it + 1
            ema = _EMA_BETA * ema + (1 - _EMA_BETA) * value
            ema_weight = _EMA_BETA * ema_weight + (1 - _EMA_BETA)
            keypoint_loss = float(losses["loss_keypoint"].detach())
            if done % 50 == 0 or done == iterations:
                history.append([float(done), ema / ema_weight, keypoint_loss])
            if progress:
                bar.label = (
                    f"iterations, loss {ema / ema_weight:.3f} (keypoints {keypoint_loss:.3f})"
                )
                bar.update(done)
        seconds = time.monotonic() - start
    finally:
        torch.set_num_threads(previous_threads)
    training = {
        "seed": seed,
        "iterations": done,
        "iterations_planned": iterations,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "AdamW",
        "weight_decay": weight_decay,
        "schedule": "linear warm-up 5% (<= 200), cosine to 1%",
        "augmentation": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(augmentation).items()
        },
        "records": len(records),
        "objects": sum(len(r.objects) for r in records),
        "seconds": round(seconds, 1),
        "final_loss": ema / ema_weight if ema_weight > 0 else float("nan"),
        "loss_history": history,
        "threads": threads if threads is not None else previous_threads,
        "device": str(dev),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "machine": platform.machine(),
    }
    path = out / CHECKPOINT_NAME
    checkpoint = make_checkpoint(model, cfg, training)
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
    logger.info("Keypoint R-CNN: %d iterations in %.0f s -> %s", done, seconds, path)
    return path

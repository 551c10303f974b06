"""Fit the image check (`spinexr.pipeline.anatomy.AnatomyNet`) on phantoms and measure it.

Adam on cross-entropy over `AnatomyClass`, a fixed number of epochs, with augmentation done
on the batch in torch (`augment`: flip, rotation, zoom, shift, border grey level, blur,
noise, gamma, inversion). The weights of the last epoch are kept; the
held-out phantoms give the metrics written into the bundle manifest: accuracy, the spine
images the check would refuse at ``other_threshold`` (false refusals) and the non-spine
images it would let through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from spinexr.pipeline.anatomy import (
    ANATOMY_CLASSES,
    AnatomyClass,
    AnatomyClassifier,
    build_anatomy_model,
)
from spinexr.pipeline.devices import resolve_device
from spinexr.training.anatomy.data import AnatomyExamples, anatomy_examples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnatomyTrainConfig:
    """Sizes and settings of the image check's training.

    Attributes
    ----------
    per_class, val_per_class : int
        Training and held-out phantoms per class.
    epochs, batch_size : int
        Training length.
    lr : float
        Adam learning rate (cosine decay to 5 % of it).
    seed : int
        Seed of phantoms (validation uses ``seed + 1``) and training.
    other_threshold : float
        ``other`` probability at or above which an image is not a spine image.
    rows : tuple of int
        Range of phantom heights in pixels.
    augment : bool
        Augment the batches (`augment`); off, a tiny run converges faster on phantoms alone.
    """

    per_class: int = 200
    val_per_class: int = 50
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.003
    seed: int = 7
    other_threshold: float = 0.5
    rows: tuple[int, int] = (224, 320)
    augment: bool = True


@dataclass(frozen=True)
class AnatomyTrainResult:
    """What `train_anatomy` produced.

    Attributes
    ----------
    weights : pathlib.Path
        State dict of the trained `AnatomyNet`.
    other_threshold : float
        The threshold the metrics were measured at.
    metrics : dict
        Held-out figures (see `anatomy_metrics`) and the time taken.
    """

    weights: Path
    other_threshold: float
    metrics: dict[str, Any]


def train_anatomy(
    config: AnatomyTrainConfig,
    out: Path,
    *,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
) -> AnatomyTrainResult:
    """Render phantoms, train the image check and measure it on held-out phantoms.

    Parameters
    ----------
    config : AnatomyTrainConfig
        Sizes and settings.
    out : pathlib.Path
        Folder for ``anatomy.pt`` (created).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    say : callable, optional
        Progress messages.

    Returns
    -------
    AnatomyTrainResult
        Weights, threshold and held-out metrics.
    """
    speak = say or (lambda msg: logger.info("%s", msg))
    started = time.monotonic()
    torch_device = resolve_device(device)
    train = anatomy_examples(config.per_class, config.seed, rows=config.rows)
    val = anatomy_examples(config.val_per_class, config.seed + 1, rows=config.rows)
    rendered = time.monotonic() - started
    speak(f"[anatomy] {len(train)} training and {len(val)} held-out phantoms in {rendered:.0f} s")

    torch.manual_seed(config.seed)
    model = build_anatomy_model().to(torch_device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = max(1, config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / total))
    )
    images = torch.from_numpy(train.images[:, None])
    labels = torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for first in range(0, len(train), config.batch_size):
            idx = order[first : first + config.batch_size]
            x = images[idx].float()
            x = (augment(x, generator) if config.augment else x).to(torch_device)
            y = labels[idx].to(torch_device)
            loss = F.cross_entropy(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        speak(f"[anatomy] epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.3f}")

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "anatomy.pt"
    model = model.cpu().eval()
    torch.save(model.state_dict(), weights)
    checker = AnatomyClassifier(model, config.other_threshold, torch_device)
    metrics = anatomy_metrics(checker, val)
    metrics["training"] = {
        "phantoms_per_class": config.per_class,
        "epochs": config.epochs,
        "seconds": round(time.monotonic() - started, 1),
        "rendering_seconds": round(rendered, 1),
    }
    speak(
        f"[anatomy] held-out accuracy {metrics['accuracy']:.3f}, spine refused "
        f"{metrics['spine_refused']:.3f}, other let through {metrics['other_let_through']:.3f} "
        f"({metrics['training']['seconds']:.0f} s)"
    )
    return AnatomyTrainResult(weights, config.other_threshold, metrics)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly flip, rotate, zoom, shift, blur, re-gamma, add noise and sometimes invert.

    Phantoms are cleaner and more alike than radiographs: the augmentation widens what the
    check has seen (lateral views facing either way, other framings and aspect ratios,
    borders of any grey level, softer or noisier images, inverted displays).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, 1, H, W)`` float in ``0..255``.
    generator : torch.Generator
        Source of randomness (CPU).

    Returns
    -------
    torch.Tensor
        Same shape, float in ``0..255``.
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).float().view(n, 1, 1, 1)

    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = uniform(-0.2, 0.2)
    zoom_x, zoom_y = uniform(0.8, 1.25), uniform(0.8, 1.25)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip / zoom_x, -sin / zoom_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip / zoom_x, cos / zoom_y
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-0.1, 0.1), uniform(-0.1, 0.1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (grid.abs() <= 1.0).all(dim=-1).unsqueeze(1).float()
    border = uniform(0.0, 255.0).view(n, 1, 1, 1) * chance(0.3)
    moved = moved + (1.0 - inside) * border
    blurred = F.avg_pool2d(moved, 3, stride=1, padding=1, count_include_pad=False)
    soft = chance(0.3)
    moved = soft * blurred + (1.0 - soft) * moved
    moved = moved + uniform(0.0, 8.0).view(n, 1, 1, 1) * torch.randn(
        moved.shape, generator=generator
    )
    gamma = torch.exp(uniform(-0.4, 0.4)).view(n, 1, 1, 1)
    out = 255.0 * (moved.clamp(0, 255) / 255.0) ** gamma
    invert = chance(0.15)
    return invert * (255.0 - out) + (1.0 - invert) * out


def anatomy_metrics(checker: AnatomyClassifier, examples: AnatomyExamples) -> dict[str, Any]:
    """Held-out figures of an image check.

    Parameters
    ----------
    checker : AnatomyClassifier
        The model and its threshold.
    examples : AnatomyExamples
        Held-out phantoms.

    Returns
    -------
    dict
        ``images``, ``accuracy`` (argmax), ``view_accuracy`` (AP vs lateral among spine
        images called spine), ``spine_refused`` (share of spine images with
        ``other ≥ threshold``), ``other_let_through`` (share of other images below it),
        ``other_threshold`` and the ``confusion`` matrix (rows: truth, columns: argmax).
    """
    probs = checker.predict(list(examples.images))
    predicted = probs.argmax(axis=1)
    truth = examples.labels
    other = list(AnatomyClass).index(AnatomyClass.OTHER)
    refused = probs[:, other] >= checker.other_threshold
    spine = truth != other
    spine_called = spine & (predicted != other)
    confusion = np.zeros((len(ANATOMY_CLASSES), len(ANATOMY_CLASSES)), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    return {
        "images": len(truth),
        "classes": list(ANATOMY_CLASSES),
        "accuracy": float((predicted == truth).mean()),
        "view_accuracy": float((predicted[spine_called] == truth[spine_called]).mean())
        if spine_called.any()
        else None,
        "spine_refused": float(refused[spine].mean()) if spine.any() else None,
        "other_let_through": float((~refused[~spine]).mean()) if (~spine).any() else None,
        "other_threshold": checker.other_threshold,
        "confusion": confusion.tolist(),
        "data": "held-out synthetic phantoms (spine AP/lateral, chest PA, long bones, hands)",
    }

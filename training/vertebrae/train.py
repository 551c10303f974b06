"""Training of Pisov et al.'s keypoint detector (`spinexr.pipeline.vertebrae.detector`).

The loss is the paper's (``method.md`` §8)::

    L = BCE(objectness) + (1 / #positives) · Σ_positives MAE(e) / G

with the BCE averaged over every anchor of the batch (anchors of objects only partly inside a
crop, and anchors whose best IoU is 0.4–0.5, left out: ``anchors.py``), ``e`` the twelve
encoded keypoint coordinates (image order, ``net.py``) and ``G`` the Genant index of the
matched object (at least 0.25; 1 for the sacrum). Two additions, each a BCE: sacrum vs
vertebra on the positive anchors (the sacrum logit), averaged over them, for the two object
kinds; and the per-image facing (``augment.py``), averaged over the crops whose facing is
known — the paper's CT images all face one way, lateral radiographs do not.

Recipes (`PisovRecipe`):

- `PAPER_RECIPE`: Adam, lr 1e-4 halved after 1k, 1.4k and 2k of 4k iterations, batches of
  30 (Pisov et al.), U-Net channels 16–256 on five levels, 256-pixel crops at 2 mm: for a
  GPU and real data.
- `DEMO_RECIPE`: channels 8–128, 128-pixel crops, 900 batches of 8, Adam lr 2e-3 halved
  after 50, 70 and 85 % of them, two threads: for the demo bundle on two CPU cores (about
  400 s on one free core of the development machine; held-out figures in the report of
  issue 16). It reaches the paper's detection figures only in part: the keypoint regression
  is what a short run trains least.

Runs are reproducible: the data order, the crops and the augmentation come from one seeded
``numpy`` generator, ``torch.manual_seed`` seeds the weights, the thread count is fixed and
deterministic algorithms are asked for (``warn_only`` where a GPU kernel has none).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torchvision.ops import box_iou

from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.vertebrae.anchors import (
    assign_targets,
    encode,
    keypoint_boxes,
    pixel_centres,
)
from spinexr.pipeline.vertebrae.detector import (
    REFERENCE_SIZE_MM,
    PisovDetector,
    PisovHyper,
    body_size_mm,
    build_model,
    save_checkpoint,
)
from spinexr.pipeline.vertebrae.genant import genant_index, heights
from spinexr.pipeline.vertebrae.net import PisovNet, PisovOutput
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind
from spinexr.training.determinism import reproducible_torch
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.augment import (
    AugmentConfig,
    PreparedRecord,
    Sample,
    prepare_record,
    sample_crop,
)
from spinexr.training.vertebrae.records import KeypointRecord

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "pisov.pt"
"""File name of the checkpoint `train_pisov` writes into its output folder."""


@dataclass(frozen=True)
class PisovRecipe:
    """A training recipe: architecture, schedule and augmentation.

    Attributes
    ----------
    name : str
        Recorded in the checkpoint.
    iterations, batch_size : int
        Training length.
    lr : float
        Adam's initial learning rate.
    lr_halvings : tuple of float
        Fractions of `iterations` after which the learning rate halves.
    hyper : PisovHyper
        Network, model spacing, anchors and decoding thresholds.
    augment : AugmentConfig
        Crop size and augmentation.
    threads : int or None
        ``torch.set_num_threads`` during training (None: leave it).
    """

    name: str
    iterations: int
    batch_size: int
    lr: float
    lr_halvings: tuple[float, ...] = (0.25, 0.35, 0.5)
    hyper: PisovHyper = field(default_factory=PisovHyper)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    threads: int | None = None


PAPER_RECIPE = PisovRecipe(
    name="paper",
    iterations=4000,
    batch_size=30,
    lr=1e-4,
    hyper=PisovHyper(channels=(16, 32, 64, 128, 256)),
    augment=AugmentConfig(crop=256),
)
"""Pisov et al.'s schedule (GPU, real data)."""

DEMO_RECIPE = PisovRecipe(
    name="demo",
    iterations=900,
    batch_size=8,
    lr=2e-3,
    lr_halvings=(0.5, 0.7, 0.85),
    hyper=PisovHyper(channels=(8, 16, 32, 64, 128)),
    augment=AugmentConfig(crop=128),
    threads=2,
)
"""CPU recipe of the demo bundle (two cores, about five minutes)."""


# ----------------------------------------------------------------------------- loss


@dataclass(frozen=True)
class BatchTargets:
    """Targets of one batch.

    Attributes
    ----------
    objectness, weight : torch.Tensor
        ``(N, A, H, W)`` objectness target and loss weight of every anchor.
    index : tuple of torch.Tensor
        ``(n, a, y, x)`` of the positive anchors, each ``(P,)``.
    encoded : torch.Tensor
        ``(P, 12)`` encoded keypoint targets of the positives.
    genant : torch.Tensor
        ``(P,)`` Genant index of each positive's object.
    sacrum : torch.Tensor
        ``(P,)`` float, 1 where the object is the sacrum.
    faces_right : torch.Tensor
        ``(N,)`` float, 1 facing right, 0 facing left, NaN unknown.
    """

    objectness: torch.Tensor
    weight: torch.Tensor
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    encoded: torch.Tensor
    genant: torch.Tensor
    sacrum: torch.Tensor
    faces_right: torch.Tensor


def build_targets(samples: Sequence[Sample], shapes: torch.Tensor) -> BatchTargets:
    """Assign anchors and encode keypoints for a batch of crops.

    Parameters
    ----------
    samples : sequence of Sample
        Crops of one size.
    shapes : torch.Tensor
        ``(A, 2)`` anchor ``(w, h)`` in model pixels.

    Returns
    -------
    BatchTargets
        On the device of `shapes`.
    """
    dev = shapes.device
    objectness, weight = [], []
    idx: list[list[torch.Tensor]] = [[], [], [], []]
    encoded, genant, sacrum = [], [], []
    for n, s in enumerate(samples):
        _, h, w = s.image.shape
        kp = s.keypoints.to(dev)
        t = assign_targets(keypoint_boxes(kp), shapes, h, w, ignore_boxes=s.ignore_boxes.to(dev))
        objectness.append(t.objectness)
        weight.append(t.weight)
        a, y, x = torch.nonzero(t.objectness > 0, as_tuple=True)
        g = t.matched[a, y, x]
        centres = pixel_centres(y, x)
        encoded.append(encode(kp[g], centres, shapes[a]).reshape(-1, 12))
        genant.append(s.genant.to(dev)[g])
        sacrum.append(s.sacrum.to(dev)[g].float())
        for lst, v in zip(idx, (torch.full_like(a, n), a, y, x), strict=True):
            lst.append(v)
    return BatchTargets(
        torch.stack(objectness),
        torch.stack(weight),
        (torch.cat(idx[0]), torch.cat(idx[1]), torch.cat(idx[2]), torch.cat(idx[3])),
        torch.cat(encoded),
        torch.cat(genant),
        torch.cat(sacrum),
        torch.tensor([s.faces_right for s in samples], dtype=torch.float32, device=dev),
    )


@dataclass(frozen=True)
class LossParts:
    """The loss and its terms.

    Attributes
    ----------
    total : torch.Tensor
        Sum of the terms (scalar, with gradient).
    objectness, keypoints, sacrum, facing : float
        Each term's value.
    positives : int
        Positive anchors in the batch.
    """

    total: torch.Tensor
    objectness: float
    keypoints: float
    sacrum: float
    facing: float
    positives: int


def pisov_loss(model: PisovNet, output: PisovOutput, targets: BatchTargets) -> LossParts:
    """Pisov et al.'s loss plus the sacrum term (module docstring).

    Parameters
    ----------
    model : PisovNet
        The network (its keypoint map is evaluated at the positives).
    output : PisovOutput
        Its output.
    targets : BatchTargets
        From `build_targets`.

    Returns
    -------
    LossParts
        Total loss and terms.
    """
    scores = output.scores
    obj = F.binary_cross_entropy_with_logits(
        scores[:, :, 0], targets.objectness, weight=targets.weight, reduction="sum"
    ) / targets.weight.sum().clamp(min=1.0)
    n, a, y, x = targets.index
    positives = int(n.numel())
    zero = scores.sum() * 0.0
    if positives:
        encoded = model.keypoints(output.features, n, a, y, x)
        mae = (encoded - targets.encoded).abs().mean(dim=1)
        kp = (mae / targets.genant).sum() / positives
        sac = F.binary_cross_entropy_with_logits(scores[n, a, 1, y, x], targets.sacrum)
    else:
        kp = sac = zero
    known = ~torch.isnan(targets.faces_right)
    facing = (
        F.binary_cross_entropy_with_logits(output.facing[known], targets.faces_right[known])
        if bool(known.any())
        else zero
    )
    total = obj + kp + sac + facing
    return LossParts(
        total,
        float(obj.detach()),
        float(kp.detach()),
        float(sac.detach()),
        float(facing.detach()),
        positives,
    )


# ----------------------------------------------------------------------------- training


def data_digest(records: Sequence[KeypointRecord]) -> str:
    """SHA-256 of the training data (identifiers, pixels, spacing, objects), in order.

    Parameters
    ----------
    records : sequence of KeypointRecord
        The training records.

    Returns
    -------
    str
        Hex digest.
    """
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.study}|{r.series}|{r.image}|{r.display.shape}|{r.spacing_mm}".encode())
        h.update(np.ascontiguousarray(r.display, dtype=np.uint8).tobytes())
        for o in r.objects:
            h.update(f"{o.kind.value}|{o.level}".encode())
            h.update(np.ascontiguousarray(o.keypoints, dtype=np.float64).tobytes())
    return h.hexdigest()


def reference_size_mm(records: Sequence[KeypointRecord]) -> float:
    """Median vertebra size in mm (`detector.body_size_mm`), for `PisovDetector.search_scale`.

    Parameters
    ----------
    records : sequence of KeypointRecord
        Records with a spacing.

    Returns
    -------
    float
        The median; `REFERENCE_SIZE_MM` without any vertebra.
    """
    sizes: list[float] = []
    for r in records:
        if r.spacing_mm is None:
            continue
        sizes.extend(body_size_mm(o.keypoints, r.spacing_mm) for o in r.vertebrae)
    return float(np.median(sizes)) if sizes else REFERENCE_SIZE_MM


def _order(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Record indices: a new permutation every pass through the data."""
    while True:
        yield from (int(i) for i in rng.permutation(n))


def train_pisov(
    records: Sequence[KeypointRecord],
    out: Path,
    *,
    seed: int,
    iterations: int,
    batch_size: int,
    lr: float,
    device: str = "cpu",
    progress: bool = True,
    recipe: PisovRecipe = PAPER_RECIPE,
) -> Path:
    """Train the detector and write its checkpoint.

    Parameters
    ----------
    records : sequence of KeypointRecord
        Training images; those without a spacing are skipped (they cannot be resampled).
    out : pathlib.Path
        Folder for the checkpoint `CHECKPOINT_NAME` (created).
    seed : int
        Seed of the weights, the data order and the augmentation.
    iterations, batch_size : int
        Training length (`PAPER_RECIPE`: 4000 × 30).
    lr : float
        Adam's initial learning rate, halved at ``recipe.lr_halvings``.
    device : str
        ``cpu``, ``cuda``, ``auto``.
    progress : bool
        Print progress lines (iteration, loss, it/s, ETA) to stderr.
    recipe : PisovRecipe
        Architecture, schedule shape, augmentation and threads (its own iterations,
        batch size and learning rate are overridden by the arguments).

    Returns
    -------
    pathlib.Path
        The checkpoint.

    Raises
    ------
    ValueError
        With no record that has a spacing, or non-positive sizes.
    """
    if iterations < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("iterations and batch_size must be positive, lr above 0")
    started = time.monotonic()
    usable = [r for r in records if r.spacing_mm is not None]
    if not usable:
        raise ValueError("no training record has a pixel spacing")
    if len(usable) < len(records):
        logger.info("skipping %d records without spacing", len(records) - len(usable))
    hyper = replace(recipe.hyper, reference_size_mm=reference_size_mm(usable))
    torch_device = resolve_device(device)
    with reproducible_torch(recipe.threads):
        prepared = [prepare_record(r, hyper.model_spacing_mm) for r in usable]
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        model = build_model(hyper).to(torch_device)
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        milestones = sorted({max(1, round(f * iterations)) for f in recipe.lr_halvings})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=0.5)
        shapes = hyper.shapes().to(torch_device)
        order = _order(len(prepared), rng)
        bar = RateProgress(iterations, "iterations", prefix="pisov", unit="it")
        recent: list[float] = []
        for it in range(1, iterations + 1):
            parts = _step(model, optimiser, prepared, order, rng, recipe, batch_size, shapes)
            schedule.step()
            recent = [*recent[-49:], float(parts.total.detach())]
            if progress:
                bar.label = f"loss {np.mean(recent):.4f} (obj {parts.objectness:.4f}), iterations"
                bar.update(it)
        model = model.cpu().eval()
    seconds = time.monotonic() - started
    training: dict[str, Any] = {
        "recipe": recipe.name,
        "seed": seed,
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
        "lr_halvings": list(recipe.lr_halvings),
        "augment": {k: float(v) for k, v in vars(recipe.augment).items()},
        "threads": recipe.threads,
        "device": str(torch_device),
        "records": len(usable),
        "objects": int(sum(len(r.objects) for r in usable)),
        "data_digest": data_digest(usable),
        "final_loss": float(np.mean(recent)),
        "seconds": round(seconds, 1),
        "torch": str(torch.__version__),
    }
    path = save_checkpoint(out / CHECKPOINT_NAME, model, hyper, training)
    if progress:
        print(f"[pisov] {iterations} iterations in {seconds:.0f} s -> {path}", file=sys.stderr)
    return path


def _step(
    model: PisovNet,
    optimiser: torch.optim.Optimizer,
    prepared: Sequence[PreparedRecord],
    order: Iterator[int],
    rng: np.random.Generator,
    recipe: PisovRecipe,
    batch_size: int,
    shapes: torch.Tensor,
) -> LossParts:
    """One optimisation step on a fresh batch of crops."""
    samples = [sample_crop(prepared[next(order)], recipe.augment, rng) for _ in range(batch_size)]
    dev = shapes.device
    x = torch.stack([s.image for s in samples]).to(dev)
    targets = build_targets(samples, shapes)
    parts = pisov_loss(model, model(x), targets)
    optimiser.zero_grad(set_to_none=True)
    parts.total.backward()
    optimiser.step()
    return parts


# ----------------------------------------------------------------------------- quick check


def match_objects(
    found: Sequence[DetectedObject], truth: Sequence[np.ndarray], iou: float = 0.5
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of detections to true keypoint sets, best score first.

    Parameters
    ----------
    found : sequence of DetectedObject
        Detections.
    truth : sequence of numpy.ndarray
        ``(6, 2)`` true keypoints.
    iou : float
        Minimum IoU of the keypoint boxes.

    Returns
    -------
    list of tuple of int
        ``(detection index, truth index)`` pairs.
    """
    if not found or not truth:
        return []
    det_boxes = torch.tensor([d.box for d in found], dtype=torch.float64)
    true_boxes = keypoint_boxes(torch.tensor(np.array(truth), dtype=torch.float64))
    ious = box_iou(det_boxes, true_boxes).numpy()
    pairs, used = [], set()
    for i in sorted(range(len(found)), key=lambda k: -found[k].score):
        cand = [(ious[i, j], j) for j in range(len(truth)) if j not in used and ious[i, j] > iou]
        if cand:
            j = max(cand)[1]
            used.add(j)
            pairs.append((i, j))
    return pairs


def quick_figures(
    detector: PisovDetector, records: Sequence[KeypointRecord], *, use_spacing: bool = True
) -> dict[str, float]:
    """Training-side check on held-out records: detection and keypoint figures of vertebrae.

    Matches detected vertebrae to true ones (`match_objects`, IoU > 0.5 of keypoint boxes)
    and reports recall, precision, the vertebra-centre error (mean of the six keypoints, mm),
    the height MAE (mm, the three heights), the Genant index MAE and the sacrum's recall.
    Not the evaluation (``evaluate``): no confidence intervals, no grades.

    Parameters
    ----------
    detector : PisovDetector
        The trained detector.
    records : sequence of KeypointRecord
        Held-out records with a spacing (used for the mm figures).
    use_spacing : bool
        Give the detector the spacing (else it searches the scale; mm figures still use the
        record's spacing).

    Returns
    -------
    dict
        ``recall``, ``precision``, ``centre_mm``, ``height_mae_mm``, ``genant_mae``,
        ``sacrum_recall``, ``vertebrae``, ``seconds_per_image``.
    """
    tp = n_true = n_found = 0
    centre_err: list[float] = []
    height_err: list[float] = []
    g_err: list[float] = []
    sacrum_hits = sacrum_total = 0
    started = time.monotonic()
    for r in records:
        if r.spacing_mm is None:
            continue
        found = detector.predict(r.display, r.spacing_mm if use_spacing else None)
        verts = [d for d in found if d.kind is ObjectKind.VERTEBRA]
        truth = [o.keypoints for o in r.vertebrae]
        pairs = match_objects(verts, truth)
        tp += len(pairs)
        n_true += len(truth)
        n_found += len(verts)
        row_mm, col_mm = r.spacing_mm
        for i, j in pairs:
            d = (np.mean(verts[i].keypoints, axis=0) - np.mean(truth[j], axis=0)) * (col_mm, row_mm)
            centre_err.append(float(np.hypot(*d)))
            hp = heights(verts[i].keypoints, r.spacing_mm)
            ht = heights(truth[j], r.spacing_mm)
            height_err.extend(abs(a - b) for a, b in zip(hp, ht, strict=True))
            g_err.append(abs(genant_index(hp) - genant_index(ht)))
        if r.sacrum is not None:
            sacrum_total += 1
            sacra = [d for d in found if d.kind is ObjectKind.SACRUM]
            sacrum_hits += bool(match_objects(sacra, [r.sacrum.keypoints]))
    return {
        "recall": tp / n_true if n_true else math.nan,
        "precision": tp / n_found if n_found else math.nan,
        "centre_mm": float(np.mean(centre_err)) if centre_err else math.nan,
        "height_mae_mm": float(np.mean(height_err)) if height_err else math.nan,
        "genant_mae": float(np.mean(g_err)) if g_err else math.nan,
        "sacrum_recall": sacrum_hits / sacrum_total if sacrum_total else math.nan,
        "vertebrae": float(n_true),
        "seconds_per_image": (time.monotonic() - started) / max(1, len(records)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Train on phantoms and print held-out figures (``python -m ...vertebrae.train``)."""
    from spinexr.training.vertebrae.phantoms import generate_keypoint_records

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=("demo", "paper"), default="demo")
    p.add_argument("--train", type=int, default=200, help="training phantoms")
    p.add_argument("--test", type=int, default=50, help="held-out phantoms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--threads", type=int, help="torch threads (default: the recipe's)")
    p.add_argument("--crop", type=int, help="crop side in model pixels (default: the recipe's)")
    p.add_argument("--channels", help="U-Net channels, e.g. 8,16,32,64 (default: the recipe's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("var/pisov"))
    args = p.parse_args(argv)
    recipe = DEMO_RECIPE if args.recipe == "demo" else PAPER_RECIPE
    recipe = replace(
        recipe,
        iterations=args.iterations or recipe.iterations,
        batch_size=args.batch_size or recipe.batch_size,
        lr=args.lr or recipe.lr,
        threads=args.threads or recipe.threads,
        augment=replace(recipe.augment, crop=args.crop or recipe.augment.crop),
    )
    if args.channels:
        channels = tuple(int(c) for c in args.channels.split(","))
        recipe = replace(recipe, hyper=replace(recipe.hyper, channels=channels))
    t0 = time.monotonic()
    train = generate_keypoint_records(args.train, args.seed, test_fraction=0.0)
    test = generate_keypoint_records(args.test, args.seed + 1000, test_fraction=0.0)
    print(f"[pisov] phantoms in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    path = train_pisov(
        train,
        args.out,
        seed=args.seed,
        iterations=recipe.iterations,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        device=args.device,
        recipe=recipe,
    )
    detector = PisovDetector.from_checkpoint(path, args.device)
    for use_spacing in (True, False):
        figures = quick_figures(detector, test, use_spacing=use_spacing)
        label = "with spacing" if use_spacing else "spacing searched"
        print(f"[pisov] held-out {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

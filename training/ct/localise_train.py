"""Training of the CT centre-line localiser (`spinexr.pipeline.ct.localise`) on CT phantoms.

Pisov et al.'s step 1 (``method.md`` §8): the loss is the mean absolute error between the
per-slice soft-argmax points and the curve through the middle-height keypoints, which the
phantoms give per slice (`CtPhantom.centreline`), interpolated onto the slices of the
resampled volume. One addition, a BCE on each slice's presence logit
(`localise.presence_logits`: spine on the slice or not) weighted by
`LocaliserRecipe.presence_weight`, so that the per-slice confidence means something; head
phantoms (`LocaliserRecipe.heads`) give slices without spine, the training crops the ends of
the others.

Training runs on random crops (`LocaliserRecipe.crop`, voxels of the resampled grid) chosen
so that every centre point of the crop's slices lies inside it; inference runs on the whole
volume. Adam at the paper's lr 1e-3.

Runs are reproducible: the phantoms come from seeds derived from the recipe's seed
(`phantom_seed`), the batches and crops from one seeded ``numpy`` generator,
``torch.manual_seed`` seeds the weights, the thread count can be fixed and deterministic
algorithms are asked for.

``python -m spinexr.training.ct.localise_train`` trains, prints held-out figures on
phantoms of other seeds and writes the checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from spinexr.pipeline.ct.localise import (
    LocaliserConfig,
    LocaliserNet,
    build_localiser,
    lps_to_index,
    points_from_logits,
    presence_logits,
    resample_to,
    save_localiser,
    soft_argmax_per_slice,
)
from spinexr.training.determinism import reproducible_torch
from spinexr.training.phantoms.ct import CtPhantom, make_ct_phantom, make_head_phantom

FloatArray = npt.NDArray[np.float64]

HELD_OUT_SEED_OFFSET = 1_000_000
"""Added to a recipe's seed for held-out phantoms (`main`)."""


@dataclass(frozen=True)
class LocaliserRecipe:
    """A training recipe.

    Attributes
    ----------
    phantoms : int
        Chest / abdomen phantoms (size ``"small"``), made from `phantom_seed`.
    heads : int
        Head phantoms (no spine) added for the presence loss.
    steps, batch : int
        Adam steps and crops per step.
    lr : float
        Adam's learning rate (Pisov et al.: 1e-3).
    seed : int
        Seeds the phantoms, the crops and the weights.
    crop : tuple of int
        ``(slices, rows, columns)`` of a training crop on the resampled grid.
    presence_weight : float
        Weight of the per-slice presence BCE next to the MAE (in voxels).
    config : LocaliserConfig
        Network and input.
    threads : int or None
        ``torch.set_num_threads`` during training (None: leave it).
    log_every : int
        Steps between progress lines.
    """

    phantoms: int = 16
    heads: int = 2
    steps: int = 400
    batch: int = 3
    lr: float = 1e-3
    seed: int = 0
    crop: tuple[int, int, int] = (32, 64, 64)
    presence_weight: float = 1.0
    config: LocaliserConfig = field(default_factory=LocaliserConfig)
    threads: int | None = None
    log_every: int = 25


@dataclass(frozen=True)
class PreparedPhantom:
    """A phantom on the model's grid with its per-slice targets.

    Attributes
    ----------
    array : numpy.ndarray
        ``float32`` ``(D, H, W)`` resampled, windowed volume.
    affine : numpy.ndarray
        Its 4×4 affine.
    target : numpy.ndarray
        ``(D, 2)`` ``(row, column)`` index of the centre on each slice (NaN without spine).
    truth_lps : numpy.ndarray
        ``(D, 3)`` the same points in LPS mm.
    """

    array: npt.NDArray[np.float32]
    affine: FloatArray
    target: FloatArray
    truth_lps: FloatArray

    @property
    def present(self) -> npt.NDArray[np.bool_]:
        """``(D,)`` slices with spine."""
        return np.asarray(~np.isnan(self.target[:, 0]))


def phantom_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of the ``index``-th phantom of a run seeded ``seed``.

    Parameters
    ----------
    seed : int
        The run's seed.
    index : int
        Phantom number (heads continue after the spine phantoms).

    Returns
    -------
    numpy.random.SeedSequence
        Its seed.
    """
    return np.random.SeedSequence([seed, index])


def make_phantoms(count: int, seed: int, *, heads: int = 0) -> list[CtPhantom]:
    """Make the small CT phantoms of a run: ``count`` chest/abdomen, then ``heads`` heads.

    Parameters
    ----------
    count : int
        Phantoms with spine.
    seed : int
        The run's seed (`phantom_seed`).
    heads : int
        Head phantoms.

    Returns
    -------
    list of CtPhantom
        The phantoms.
    """
    out = [make_ct_phantom(phantom_seed(seed, i), size="small") for i in range(count)]
    out += [make_head_phantom(phantom_seed(seed, count + i), size="small") for i in range(heads)]
    return out


def prepare_phantom(phantom: CtPhantom, config: LocaliserConfig) -> PreparedPhantom:
    """Resample a phantom to the model's grid and put its centre line on the new slices.

    The centre line (one LPS point per original slice) is interpolated linearly at each new
    slice's position along the original slice index; a new slice between a slice with spine
    and one without has none.

    Parameters
    ----------
    phantom : CtPhantom
        The phantom.
    config : LocaliserConfig
        Spacing and window.

    Returns
    -------
    PreparedPhantom
        Volume, affine and targets.
    """
    res = resample_to(phantom.hu, phantom.grid.affine(), config.spacing_mm, window=config.window)
    cl = np.asarray(phantom.centreline, dtype=np.float64)
    d = res.array.shape[0]
    k = np.arange(d, dtype=np.float64) * float(res.scale[0])
    k0 = np.clip(np.floor(k).astype(np.intp), 0, len(cl) - 1)
    k1 = np.minimum(k0 + 1, len(cl) - 1)
    t = (k - k0)[:, None]
    truth = cl[k0] * (1.0 - t) + cl[k1] * t  # NaN propagates from either neighbour
    exact = t[:, 0] == 0.0
    truth[exact] = cl[k0[exact]]
    target = lps_to_index(res.affine, truth)[:, 1:]
    return PreparedPhantom(res.array, res.affine, target, truth)


def sample_crop(
    item: PreparedPhantom, crop: tuple[int, int, int], rng: np.random.Generator, margin: int = 4
) -> tuple[npt.NDArray[np.float32], FloatArray]:
    """Cut a random training crop whose slices' centre points all lie inside it.

    Parameters
    ----------
    item : PreparedPhantom
        The volume and targets.
    crop : tuple of int
        ``(slices, rows, columns)``; the volume is padded with zeros (air) where smaller.
    rng : numpy.random.Generator
        Source of the position.
    margin : int
        Voxels kept between the points and the crop's sides where possible.

    Returns
    -------
    volume : numpy.ndarray
        ``float32`` crop.
    target : numpy.ndarray
        ``(slices, 2)`` centre indices in the crop (NaN where none or outside it).
    """
    vol, tgt = item.array, item.target
    cd, ch, cw = crop
    pads = [(0, max(0, c - n)) for c, n in zip(crop, vol.shape, strict=True)]
    if any(p[1] for p in pads):
        vol = np.pad(vol, pads)
        tgt = np.pad(tgt, ((0, pads[0][1]), (0, 0)), constant_values=np.nan)
    d, h, w = vol.shape
    z0 = int(rng.integers(0, d - cd + 1))
    t = tgt[z0 : z0 + cd].copy()
    starts = []
    for axis, (c, n) in enumerate(((ch, h), (cw, w))):
        v = t[:, axis][~np.isnan(t[:, axis])]
        lo, hi = 0, n - c
        if v.size:
            lo = max(lo, math.ceil(v.max() - (c - 1 - margin)))
            hi = min(hi, math.floor(v.min() - margin))
        s = int(rng.integers(lo, hi + 1)) if lo <= hi else int(np.clip((lo + hi) // 2, 0, n - c))
        starts.append(s)
    r0, c0 = starts
    t -= np.array([r0, c0], dtype=np.float64)
    outside = (t < 0).any(axis=1) | (t > np.array([ch - 1, cw - 1])).any(axis=1)
    t[outside] = np.nan
    out = np.ascontiguousarray(vol[z0 : z0 + cd, r0 : r0 + ch, c0 : c0 + cw])
    return out, t


def localiser_loss(
    logits: torch.Tensor, target: torch.Tensor, presence_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pisov et al.'s MAE on slices with spine plus the presence BCE on every slice.

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, D, H, W)`` network output.
    target : torch.Tensor
        ``(N, D, 2)`` centre indices (NaN on slices without spine).
    presence_weight : float
        Weight of the BCE.

    Returns
    -------
    loss : torch.Tensor
        Scalar to minimise.
    mae : torch.Tensor
        Scalar MAE (voxels; 0 when no slice has spine), detached.
    """
    coords, _ = soft_argmax_per_slice(logits)
    present = ~torch.isnan(target[..., 0])
    if bool(present.any()):
        mae = (coords[present] - target[present]).abs().mean()
    else:
        mae = coords.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(presence_logits(logits), present.to(logits.dtype))
    return mae + presence_weight * bce, mae.detach()


def train_localiser(
    recipe: LocaliserRecipe,
    data: Sequence[PreparedPhantom] | None = None,
    *,
    stream: TextIO | None = None,
) -> tuple[LocaliserNet, list[float]]:
    """Train a localiser.

    Parameters
    ----------
    recipe : LocaliserRecipe
        What to train and how.
    data : sequence of PreparedPhantom, optional
        Prepared phantoms (made from the recipe with `make_phantoms` when omitted).
    stream : file-like, optional
        Progress lines every ``recipe.log_every`` steps (default stderr).

    Returns
    -------
    model : LocaliserNet
        The trained network, in eval mode.
    losses : list of float
        The loss of every step.
    """
    out = stream if stream is not None else sys.stderr
    if data is None:
        phantoms = make_phantoms(recipe.phantoms, recipe.seed, heads=recipe.heads)
        data = [prepare_phantom(p, recipe.config) for p in phantoms]
    if not data:
        raise ValueError("no training phantoms")
    losses: list[float] = []
    with reproducible_torch(recipe.threads):
        torch.manual_seed(recipe.seed)
        rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 0x10CA1]))
        model = build_localiser(recipe.config)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        spacing = recipe.config.spacing_mm
        t0 = time.monotonic()
        for step in range(1, recipe.steps + 1):
            crops = [
                sample_crop(data[int(rng.integers(len(data)))], recipe.crop, rng)
                for _ in range(recipe.batch)
            ]
            x = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
            y = torch.from_numpy(np.stack([c[1] for c in crops])).to(torch.float32)
            loss, mae = localiser_loss(model(x), y, recipe.presence_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if step % recipe.log_every == 0 or step == recipe.steps:
                elapsed = time.monotonic() - t0
                rate = step / max(elapsed, 1e-9)
                print(
                    f"[localise] step {step}/{recipe.steps}: loss {losses[-1]:.3f}, "
                    f"MAE {float(mae) * spacing:.2f} mm ({rate:.2f} it/s, "
                    f"ETA {(recipe.steps - step) / rate:.0f} s)",
                    file=out,
                    flush=True,
                )
    model.eval()
    return model, losses


@torch.no_grad()
def evaluate_localiser(
    model: LocaliserNet, phantoms: Sequence[CtPhantom | PreparedPhantom]
) -> dict[str, float]:
    """Distances (mm) between predicted and true centre points over slices with spine.

    Each phantom is run whole (`localise.localise`'s path); the predicted and true points of
    a slice of the resampled volume lie on the same plane.

    Parameters
    ----------
    model : LocaliserNet
        The network.
    phantoms : sequence of CtPhantom or PreparedPhantom
        Evaluation phantoms (heads count only for the confidence figures).

    Returns
    -------
    dict
        ``mean_mm``, ``median_mm``, ``p95_mm``, ``max_mm`` and ``slices`` over slices with
        spine; ``confidence_spine`` and ``confidence_none``: mean confidence on slices with
        and without spine (NaN when there are none).
    """
    model.eval()
    dists: list[FloatArray] = []
    conf_in: list[FloatArray] = []
    conf_out: list[FloatArray] = []
    for ph in phantoms:
        item = ph if isinstance(ph, PreparedPhantom) else prepare_phantom(ph, model.config)
        logits = model(torch.from_numpy(item.array)[None, None])[0]
        points, conf = points_from_logits(logits, item.affine)
        ok = item.present
        dists.append(np.linalg.norm(points[ok] - item.truth_lps[ok], axis=1))
        conf_in.append(conf[ok])
        conf_out.append(conf[~ok])
    d = np.concatenate(dists) if dists else np.zeros(0)
    ci, co = np.concatenate(conf_in or [np.zeros(0)]), np.concatenate(conf_out or [np.zeros(0)])

    def stat(a: FloatArray, f: Any) -> float:
        return float(f(a)) if a.size else math.nan

    return {
        "mean_mm": stat(d, np.mean),
        "median_mm": stat(d, np.median),
        "p95_mm": stat(d, lambda a: np.percentile(a, 95)),
        "max_mm": stat(d, np.max),
        "slices": float(d.size),
        "confidence_spine": stat(ci, np.mean),
        "confidence_none": stat(co, np.mean),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Train, print held-out figures, write the checkpoint (``python -m ...localise_train``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=LocaliserRecipe.phantoms)
    p.add_argument("--heads", type=int, default=LocaliserRecipe.heads)
    p.add_argument("--steps", type=int, default=LocaliserRecipe.steps)
    p.add_argument("--batch", type=int, default=LocaliserRecipe.batch)
    p.add_argument("--lr", type=float, default=LocaliserRecipe.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", help="U-Net channels, e.g. 8,16,32")
    p.add_argument("--crop", help="training crop slices,rows,columns, e.g. 32,64,64")
    p.add_argument("--threads", type=int)
    p.add_argument("--test", type=int, default=8, help="held-out phantoms (other seeds)")
    p.add_argument("--out", type=Path, default=Path("var/ct-localiser/localiser.pt"))
    args = p.parse_args(argv)
    recipe = LocaliserRecipe(
        phantoms=args.phantoms,
        heads=args.heads,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
    )
    if args.channels:
        ch = tuple(int(c) for c in args.channels.split(","))
        recipe = replace(recipe, config=replace(recipe.config, channels=ch))
    if args.crop:
        a, b, c = (int(v) for v in args.crop.split(","))
        recipe = replace(recipe, crop=(a, b, c))
    t0 = time.monotonic()
    model, losses = train_localiser(recipe)
    seconds = time.monotonic() - t0
    test = make_phantoms(args.test, args.seed + HELD_OUT_SEED_OFFSET, heads=1)
    figures = evaluate_localiser(model, test)
    print(
        f"[localise] trained in {seconds:.0f} s; held-out ({args.test} phantoms + 1 head): "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
    )
    recipe_dict = asdict(recipe)
    recipe_dict["config"] = recipe.config.to_dict()
    recipe_dict["crop"] = list(recipe.crop)
    save_localiser(
        args.out,
        model,
        {"recipe": recipe_dict, "seconds": seconds, "final_loss": losses[-1], **figures},
    )
    print(f"[localise] -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train and judge the benign / malignant classifier (Li et al. 2021) on CT phantom cases.

A **case** is one patient: a chest or abdomen CT phantom with a compression fracture at one
fully visible level, painted with a benign or malignant pattern
(`spinexr.training.phantoms.malignancy`), and the network's inputs for that vertebra
(`spinexr.pipeline.ct.characterise.roi_stack`: five 3 mm sagittal slices with their
neighbours). Training uses the inputs from the true keypoints; the end-to-end evaluation
replaces them with the CT method's.

`train_characteriser` follows the paper: cross-entropy on the sigmoid output, Adam (lr 1e-4,
β1 0.5), batch 32, L2 regularisation (weight decay), random affine augmentation (translation,
scaling, rotation) drawn afresh for every sample of every epoch, early stopping on the
validation loss (the best epoch's weights are kept). `judge` gives the paper's figures: per
slice and per patient (the highest slice probability) sensitivity, specificity and accuracy
at the threshold, and ROC AUC. ImageNet weights cannot be downloaded here: ``init`` takes a
local state dict of torchvision's ResNet-50 (a site should use ImageNet weights, as the paper
did); without it the network starts from random weights, as the demo does.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torchvision.transforms import v2

from spinexr.pipeline.ct.characterise import MalignancyNet, roi_stack
from spinexr.pipeline.vertebrae.genant import Deformity
from spinexr.training.determinism import reproducible_torch
from spinexr.training.metrics.classification import auroc
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture
from spinexr.training.phantoms.malignancy import Pattern, apply_pattern, draw_features


@dataclass(frozen=True)
class Case:
    """One patient of the characterisation data.

    Attributes
    ----------
    patient : str
        Identifier (folds are drawn by patient).
    malignant : bool
        The truth.
    level : str
        The fractured vertebra.
    inputs : numpy.ndarray
        ``(slices, 3, 64, 64)`` from the true keypoints.
    hard : bool
        A hard case (one subtle feature, or a mimic).
    """

    patient: str
    malignant: bool
    level: str
    inputs: npt.NDArray[np.float32]
    hard: bool = False


@dataclass(frozen=True)
class Patient:
    """One phantom patient's whole volume, before the ROI is taken (for the end-to-end run).

    Attributes
    ----------
    seed : int
        What made it (`make_patient`).
    malignant : bool
        The truth.
    level : str
        The fractured vertebra.
    hu : numpy.ndarray
        ``(slices, rows, columns)`` HU with the pattern painted in.
    affine : numpy.ndarray
        Index → LPS mm.
    keypoints : numpy.ndarray
        ``(6, 3)`` LPS: the fractured vertebra's true keypoints.
    hard : bool
        A hard case.
    """

    seed: int
    malignant: bool
    level: str
    hu: npt.NDArray[np.int16]
    affine: npt.NDArray[np.float64]
    keypoints: npt.NDArray[np.float64]
    hard: bool


def make_patient(seed: int, *, malignant: bool | None = None) -> Patient:
    """Make one phantom patient with a fracture of a benign or malignant pattern.

    Parameters
    ----------
    seed : int
        Seeds the phantom, the fracture, the pattern and the noise.
    malignant : bool, optional
        Force the truth; drawn with probability one half when omitted.

    Returns
    -------
    Patient
        The volume and the fractured vertebra's truth.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x11]))
    if malignant is None:
        malignant = bool(rng.random() < 0.5)
    levels = [f"T{i}" for i in range(6, 12)]
    level = levels[int(rng.integers(len(levels)))]
    deformity = [Deformity.WEDGE, Deformity.BICONCAVE, Deformity.CRUSH][int(rng.integers(3))]
    fracture = LevelFracture(level, float(rng.uniform(0.5, 0.78)), deformity)
    first, last = f"T{int(level[1:]) - 2}", f"T{min(int(level[1:]) + 2, 12)}"
    phantom = make_ct_phantom(
        np.random.SeedSequence([seed, 0x22]),
        levels=(first, last),
        fractures=(fracture,),
        labels=True,
    )
    pattern = Pattern.MALIGNANT if malignant else Pattern.BENIGN
    features = draw_features(pattern, rng)
    hu = apply_pattern(phantom, level, features, rng)
    truth = phantom.vertebra(level)
    return Patient(
        seed,
        malignant,
        level,
        hu,
        np.asarray(phantom.grid.affine(), dtype=np.float64),
        np.asarray(truth.keypoints, dtype=np.float64),
        features.hard,
    )


def make_case(seed: int, *, malignant: bool | None = None) -> Case:
    """Make one phantom patient (`make_patient`) and its inputs from the true keypoints.

    Parameters
    ----------
    seed : int
        Seeds the phantom, the fracture, the pattern and the noise.
    malignant : bool, optional
        Force the truth; drawn with probability one half when omitted.

    Returns
    -------
    Case
        The patient and the network's inputs for the fractured vertebra.
    """
    p = make_patient(seed, malignant=malignant)
    stack = roi_stack(p.hu, p.affine, p.keypoints)
    return Case(f"phantom-{seed}", p.malignant, p.level, stack.inputs, p.hard)


def case_seeds(n: int, seed: int) -> list[tuple[int, bool]]:
    """Return the (patient seed, malignant) pairs of `make_cases` ``(n, seed)``."""
    return [(seed * 100_003 + i, i % 2 == 0) for i in range(n)]


def make_cases(n: int, seed: int, *, progress: bool = True) -> list[Case]:
    """Make ``n`` patients, half malignant (alternating), from child seeds of ``seed``.

    Parameters
    ----------
    n : int
        Patients.
    seed : int
        Seed of the set.
    progress : bool
        Periodic lines with rate and ETA on stderr.

    Returns
    -------
    list of Case
        In order.
    """
    from spinexr.training.progress import RateProgress

    bar = RateProgress(n, "characterisation cases", prefix="li2021") if progress else None
    out = []
    for i, (patient, malignant) in enumerate(case_seeds(n, seed)):
        out.append(make_case(patient, malignant=malignant))
        if bar is not None:
            bar.update(i + 1)
    return out


@dataclass(frozen=True)
class CharacteriserRecipe:
    """How the classifier is trained (Li et al.'s settings unless said otherwise).

    Attributes
    ----------
    epochs : int
        Most epochs (the paper: 100).
    patience : int
        Epochs without a better validation loss before stopping.
    batch : int
        Slices per step (the paper: 32).
    lr, beta1 : float
        Adam (the paper: 1e-4, 0.5).
    weight_decay : float
        L2 regularisation.
    val_fraction : float
        Patients held out for early stopping.
    degrees, translate, scale : float, float, tuple of float
        Random affine augmentation.
    seed : int
        Seeds the split, the weights and the augmentation.
    threads : int or None
        ``torch`` threads.
    init : str or None
        A local torchvision ResNet-50 state dict (e.g. ImageNet weights) to start from.
    schedule : {"constant", "cosine"}
        Learning rate: constant (the paper), or cosine annealing to zero over ``epochs``.
    """

    epochs: int = 100
    patience: int = 8
    batch: int = 32
    lr: float = 1e-4
    beta1: float = 0.5
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    seed: int = 0
    threads: int | None = 1
    init: str | None = None
    schedule: str = "constant"


@dataclass
class TrainingHistory:
    """Losses per epoch and the epoch whose weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _slices(cases: Sequence[Case]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([c.inputs for c in cases])
    y = np.concatenate([np.full(len(c.inputs), float(c.malignant), np.float32) for c in cases])
    return torch.from_numpy(x), torch.from_numpy(y)


def train_characteriser(
    cases: Sequence[Case],
    recipe: CharacteriserRecipe = CharacteriserRecipe(),
    *,
    stream: TextIO | None = None,
) -> tuple[MalignancyNet, TrainingHistory]:
    """Train the classifier with early stopping on held-out patients.

    Parameters
    ----------
    cases : sequence of Case
        Training patients (``val_fraction`` of them, by patient, for early stopping).
    recipe : CharacteriserRecipe
        Settings.
    stream : file-like, optional
        A line per epoch (loss, validation loss, rate, ETA; default stderr).

    Returns
    -------
    model : MalignancyNet
        The best epoch's weights, in eval mode.
    history : TrainingHistory
        Losses and the kept epoch.
    """
    out = stream if stream is not None else sys.stderr
    rng = np.random.default_rng(recipe.seed)
    order = rng.permutation(len(cases))
    n_val = max(1, round(len(cases) * recipe.val_fraction)) if len(cases) > 1 else 0
    val = [cases[int(i)] for i in order[:n_val]]
    train = [cases[int(i)] for i in order[n_val:]] or list(cases)
    history = TrainingHistory()
    started = time.monotonic()
    with reproducible_torch(recipe.threads):
        torch.manual_seed(recipe.seed)
        model = MalignancyNet()
        if recipe.init:
            state = torch.load(recipe.init, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            model.net.load_state_dict(state, strict=False)
        x_train, y_train = _slices(train)
        x_val, y_val = _slices(val) if val else (x_train[:0], y_train[:0])
        augment = v2.RandomAffine(
            degrees=recipe.degrees, translate=(recipe.translate,) * 2, scale=recipe.scale
        )
        opt = torch.optim.Adam(
            model.parameters(),
            lr=recipe.lr,
            betas=(recipe.beta1, 0.999),
            weight_decay=recipe.weight_decay,
        )
        steps = recipe.epochs * math.ceil(len(x_train) / recipe.batch)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            if recipe.schedule == "cosine"
            else None
        )
        loss_fn = nn.BCEWithLogitsLoss()
        best = math.inf
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        waited = 0
        for epoch in range(1, recipe.epochs + 1):
            model.train()
            perm = torch.randperm(len(x_train))
            total = 0.0
            for first in range(0, len(perm), recipe.batch):
                idx = perm[first : first + recipe.batch]
                xb = torch.stack([augment(x) for x in x_train[idx]])
                loss = loss_fn(model(xb), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(idx)
            history.train_loss.append(total / len(x_train))
            model.eval()
            with torch.no_grad():
                val_loss = (
                    float(loss_fn(model(x_val), y_val)) if len(x_val) else history.train_loss[-1]
                )
            history.val_loss.append(val_loss)
            if val_loss < best:
                best, waited, history.best_epoch = val_loss, 0, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
            elapsed = time.monotonic() - started
            print(
                f"[li2021] epoch {epoch}/{recipe.epochs}: loss {history.train_loss[-1]:.3f}, "
                f"validation {val_loss:.3f} ({elapsed / epoch:.1f} s/epoch, ETA "
                f"{elapsed / epoch * (recipe.epochs - epoch):.0f} s at most)",
                file=out,
                flush=True,
            )
            if waited >= recipe.patience:
                break
        model.load_state_dict(best_state)
    history.seconds = time.monotonic() - started
    return model.eval(), history


def judge(
    model: MalignancyNet,
    cases: Sequence[Case],
    threshold: float = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the paper's figures on ``cases``: per slice and per patient, with 95 % CIs.

    Parameters
    ----------
    model : MalignancyNet
        The classifier.
    cases : sequence of Case
        Patients with their truth.
    threshold : float
        Malignant at or above it.
    n_bootstrap : int
        Resamples of patients for the intervals (0: none).
    seed : int
        Seeds the resampling.

    Returns
    -------
    dict
        ``slice`` and ``patient``: ``n``, sensitivity, specificity, accuracy and ROC AUC
        (None when one class is absent), each figure with ``ci95`` (percentile interval over
        patients resampled with replacement).
    """
    probs = [model.probabilities(c.inputs) for c in cases]
    return figures_of([c.malignant for c in cases], probs, threshold, n_bootstrap, seed)


def figures_of(
    truth: Sequence[bool],
    slice_probs: Sequence[npt.ArrayLike],
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-slice and per-patient figures from each patient's slice probabilities.

    Parameters
    ----------
    truth : sequence of bool
        Per patient, malignant.
    slice_probs : sequence of array-like
        Per patient, its slices' probabilities.
    threshold : float
        Malignant at or above it.
    n_bootstrap : int
        Resamples of patients (0: no intervals).
    seed : int
        Seeds the resampling.

    Returns
    -------
    dict
        As `judge`.
    """
    probs = [np.asarray(p, dtype=np.float64).reshape(-1) for p in slice_probs]
    y = np.asarray(truth, dtype=bool)

    def point(index: npt.NDArray[np.intp]) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        s_truth = np.concatenate([np.full(len(probs[i]), y[i]) for i in index])
        s_prob = np.concatenate([probs[i] for i in index])
        p_truth = y[index]
        p_prob = np.array([probs[i].max() for i in index])
        for name, t, p in (("slice", s_truth, s_prob), ("patient", p_truth, p_prob)):
            called = p >= threshold
            both = bool(t.any() and not t.all())
            out[name] = {
                "sensitivity": float(called[t].mean()) if t.any() else None,
                "specificity": float((~called[~t]).mean()) if (~t).any() else None,
                "accuracy": float((called == t).mean()),
                "auroc": auroc(t, p) if both else None,
            }
        return out

    everyone = np.arange(len(y))
    result: dict[str, Any] = {}
    estimate = point(everyone)
    rng = np.random.default_rng(seed)
    draws = [point(rng.integers(0, len(y), len(y))) for _ in range(n_bootstrap)] if len(y) else []
    for level in ("slice", "patient"):
        entry: dict[str, Any] = {
            "n": int(sum(len(p) for p in probs)) if level == "slice" else len(y)
        }
        for key, value in estimate[level].items():
            samples = [float(v) for d in draws if (v := d[level][key]) is not None]
            ci = (
                [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]
                if samples
                else None
            )
            entry[key] = {"value": value, "ci95": ci}
        result[level] = entry
    return result


def cross_validate(
    cases: Sequence[Case],
    k: int,
    recipe: CharacteriserRecipe,
    *,
    n_bootstrap: int = 1000,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """K-fold cross-validation grouped by patient (the paper: 10 folds), pooled figures.

    Parameters
    ----------
    cases : sequence of Case
        Every patient.
    k : int
        Folds.
    recipe : CharacteriserRecipe
        Training settings (each fold trains a new model with early stopping on its own
        held-out share of the training patients).
    n_bootstrap : int
        Resamples for the pooled figures' intervals.
    stream : file-like, optional
        Progress (stderr by default).

    Returns
    -------
    dict
        ``pooled``: `figures_of` over every patient, each predicted by the model that did
        not see it; ``folds``: per fold its patients and best epoch.
    """
    from spinexr.training.ct.crossval import assign_folds

    folds = assign_folds([c.patient for c in cases], k, recipe.seed)
    truth: list[bool] = []
    probs: list[npt.NDArray[np.float64]] = []
    facts = []
    for fold in range(k):
        held_out = [c for c in cases if folds[c.patient] == fold]
        training = [c for c in cases if folds[c.patient] != fold]
        model, history = train_characteriser(training, recipe, stream=stream)
        for c in held_out:
            truth.append(c.malignant)
            probs.append(model.probabilities(c.inputs))
        facts.append(
            {
                "fold": fold + 1,
                "patients": len(held_out),
                "best_epoch": history.best_epoch,
                "seconds": round(history.seconds, 1),
            }
        )
    return {
        "pooled": figures_of(truth, probs, n_bootstrap=n_bootstrap, seed=recipe.seed),
        "folds": facts,
    }


PAPER = {
    "slice": {"sensitivity": 0.90, "specificity": 0.79, "accuracy": 0.85},
    "patient": {"sensitivity": 0.95, "specificity": 0.80, "accuracy": 0.88},
}
"""Li et al. 2021, 10-fold cross-validation on 433 patients (no ROC AUC reported)."""


def format_table(figures: Mapping[str, Any], title: str) -> str:
    """Return the paper's results table (Markdown) with our figures beside the paper's.

    Parameters
    ----------
    figures : mapping
        `figures_of`'s result.
    title : str
        What was evaluated.

    Returns
    -------
    str
        The table.
    """

    def cell(entry: Mapping[str, Any]) -> str:
        value, ci = entry["value"], entry["ci95"]
        if value is None:
            return "n/a"
        return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    lines = [
        f"### {title}",
        "",
        "| level | n | sensitivity | specificity | accuracy | ROC AUC | paper (se / sp / acc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in ("slice", "patient"):
        f = figures[level]
        p = PAPER[level]
        lines.append(
            f"| {level} | {f['n']} | {cell(f['sensitivity'])} | {cell(f['specificity'])} | "
            f"{cell(f['accuracy'])} | {cell(f['auroc'])} | "
            f"{p['sensitivity']:.2f} / {p['specificity']:.2f} / {p['accuracy']:.2f} |"
        )
    return "\n".join(lines)


def save_history(path: Path, history: TrainingHistory) -> Path:
    """Write the losses as CSV (epoch, train, validation)."""
    lines = ["epoch,train_loss,val_loss"] + [
        f"{i},{a:.6f},{b:.6f}"
        for i, (a, b) in enumerate(zip(history.train_loss, history.val_loss, strict=True), 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Train on phantom cases and print the paper's table (``python -m ...characterise_train``)."""
    import argparse
    import json

    from spinexr.pipeline.ct.characterise import save_characteriser

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=160, help="training patients (phantoms)")
    p.add_argument("--test", type=int, default=60, help="held-out patients (other seeds)")
    p.add_argument("--folds", type=int, default=0, help="k-fold CV instead (the paper: 10)")
    p.add_argument("--epochs", type=int, default=CharacteriserRecipe.epochs)
    p.add_argument("--patience", type=int, default=CharacteriserRecipe.patience)
    p.add_argument("--batch", type=int, default=CharacteriserRecipe.batch)
    p.add_argument("--lr", type=float, default=CharacteriserRecipe.lr)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", help="a local torchvision ResNet-50 state dict (ImageNet)")
    p.add_argument("--out", type=Path, default=Path("var/li2021"))
    args = p.parse_args(argv)
    recipe = CharacteriserRecipe(
        epochs=args.epochs,
        patience=args.patience,
        batch=args.batch,
        lr=args.lr,
        schedule=args.schedule,
        seed=args.seed,
        threads=args.threads,
        init=args.init,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    cases = make_cases(args.cases, args.seed)
    if args.folds:
        report = cross_validate(cases, args.folds, recipe)
        print(format_table(report["pooled"], f"{args.folds}-fold cross-validation, phantoms"))
    else:
        model, history = train_characteriser(cases, recipe)
        save_history(args.out / "history.csv", history)
        save_characteriser(args.out / "characteriser.pt", model, {"recipe": repr(recipe)})
        test = make_cases(args.test, args.seed + 1_000)
        report = {"test": judge(model, test), "best_epoch": history.best_epoch}
        report["training_seconds"] = history.seconds
        print(format_table(report["test"], f"{len(test)} held-out phantom patients"))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

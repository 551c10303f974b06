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
from collections.abc import Sequence
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
from spinexr.training.metrics.classification import auroc, binary_metrics
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


def make_case(seed: int, *, malignant: bool | None = None) -> Case:
    """Make one phantom patient with a fracture of a benign or malignant pattern.

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
    stack = roi_stack(hu, phantom.grid.affine(), truth.keypoints)
    return Case(f"phantom-{seed}", malignant, level, stack.inputs, features.hard)


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
    for i in range(n):
        out.append(make_case(seed * 100_003 + i, malignant=i % 2 == 0))
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


def judge(model: MalignancyNet, cases: Sequence[Case], threshold: float = 0.5) -> dict[str, Any]:
    """Return the paper's figures on ``cases``: per slice and per patient.

    Parameters
    ----------
    model : MalignancyNet
        The classifier.
    cases : sequence of Case
        Patients with their truth.
    threshold : float
        Malignant at or above it.

    Returns
    -------
    dict
        ``slice`` and ``patient``: sensitivity, specificity, accuracy, ROC AUC (None when
        one class is absent) and counts.
    """
    slice_probs, slice_truth, patient_probs, patient_truth = [], [], [], []
    for case in cases:
        probs = model.probabilities(case.inputs)
        slice_probs += list(probs)
        slice_truth += [case.malignant] * len(probs)
        patient_probs.append(float(probs.max()))
        patient_truth.append(case.malignant)

    def figures(truth: list[bool], probs: list[float]) -> dict[str, Any]:
        y, p = np.array(truth), np.array(probs)
        m = binary_metrics(y, p, threshold)
        both = y.any() and not y.all()
        return {
            "n": len(y),
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "accuracy": float(((p >= threshold) == y).mean()),
            "auroc": auroc(y, p) if both else None,
        }

    return {
        "slice": figures(slice_truth, slice_probs),
        "patient": figures(patient_truth, patient_probs),
    }


def save_history(path: Path, history: TrainingHistory) -> Path:
    """Write the losses as CSV (epoch, train, validation)."""
    lines = ["epoch,train_loss,val_loss"] + [
        f"{i},{a:.6f},{b:.6f}"
        for i, (a, b) in enumerate(zip(history.train_loss, history.val_loss, strict=True), 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

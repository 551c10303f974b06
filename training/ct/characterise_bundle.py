"""Train the benign / malignant classifier for a bundle and add it to the bundle's CT entry.

`DEMO_CHARACTERISER` is what the demo bundle trains (``make serve``, step 8 of
`spinexr.training.bundles.demo`): Li et al.'s ResNet-50 on phantom patients
(`characterise_train.make_cases`) from random weights, since ImageNet weights cannot be
downloaded here. It departs from the paper where a random start needs it: lr 1e-3 annealed
to zero (cosine) over 6 epochs instead of a constant 1e-4 for up to 100, on 800 phantom
patients (the validation loss still picks the epoch kept; ``training/README.md``, "Benign or
malignant"). It is
seeded and runs on a fixed number of threads, so the same recipe gives the same weights on
the same machine.

`train_characteriser_for_bundle` trains it and judges it on held-out patients from their
true keypoints; `add_characteriser_to_bundle` writes it into the bundle's ``ct`` entry
(which must exist: the characterisation runs on the CT method's vertebrae) with what it was
trained on, which the SR states.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from spinexr.pipeline.bundle import Bundle, verify_bundle
from spinexr.pipeline.errors import BundleError
from spinexr.training.bundles.build import set_manifest_entry
from spinexr.training.ct.characterise_train import CharacteriserRecipe

CT_CHARACTERISER: Final = "ct/characteriser.pt"
"""Where the classifier goes in the bundle folder."""

TRAINED_ON_PHANTOMS: Final = (
    "synthetic CT phantoms with painted benign and malignant fracture patterns "
    "(spinexr.training.phantoms.malignancy), not patient data; not for clinical use"
)
"""What the demo classifier was trained on (stated in the SR)."""


@dataclass(frozen=True)
class CharacteriserBundleRecipe:
    """How a bundle's classifier is trained and checked.

    Attributes
    ----------
    cases : int
        Training patients (phantoms; the recipe's ``val_fraction`` of them for validation).
    test : int
        Held-out patients (another seed) it is judged on.
    seed : int
        Seed of the patients.
    training : CharacteriserRecipe
        The network's training.
    """

    cases: int = 800
    test: int = 60
    seed: int = 0
    training: CharacteriserRecipe = field(
        default_factory=lambda: CharacteriserRecipe(
            epochs=6, patience=6, lr=1e-3, schedule="cosine", threads=2
        )
    )

    def describe(self) -> dict[str, Any]:
        """Return the recipe as plain values (for the manifest)."""
        return dataclasses.asdict(self)


DEMO_CHARACTERISER: Final = CharacteriserBundleRecipe()
"""The demo bundle's recipe."""


@dataclass(frozen=True)
class TrainedCharacteriser:
    """The checkpoint and its held-out figures."""

    checkpoint: Path
    metrics: dict[str, Any]


def train_characteriser_for_bundle(
    work: Path,
    recipe: CharacteriserBundleRecipe = DEMO_CHARACTERISER,
    *,
    stream: TextIO | None = None,
) -> TrainedCharacteriser:
    """Train the classifier on phantom patients and judge it on held-out ones.

    Parameters
    ----------
    work : pathlib.Path
        Folder for the checkpoint and the loss history (created).
    recipe : CharacteriserBundleRecipe
        What to train.
    stream : file-like, optional
        Progress lines (default stderr).

    Returns
    -------
    TrainedCharacteriser
        ``work/characteriser.pt`` and its figures on the held-out patients (ROI from the
        true keypoints: the end-to-end figure needs the CT models, `characterise_e2e`).
    """
    from spinexr.pipeline.ct.characterise import save_characteriser
    from spinexr.training.ct.characterise_train import (
        judge,
        make_cases,
        save_history,
        train_characteriser,
    )

    out = stream if stream is not None else sys.stderr
    work.mkdir(parents=True, exist_ok=True)
    cases = make_cases(recipe.cases, recipe.seed)
    model, history = train_characteriser(cases, recipe.training, stream=out)
    save_history(work / "history.csv", history)
    test = make_cases(recipe.test, recipe.seed + 1_000, progress=False)
    figures = judge(model, test, n_bootstrap=1000, seed=recipe.seed)
    held_out = patient_figures(figures)
    metrics = {
        "trained_on": TRAINED_ON_PHANTOMS,
        "recipe": recipe.describe(),
        "training_seconds": round(history.seconds, 1),
        "best_epoch": history.best_epoch,
        "test_phantoms_ground_truth_roi": held_out,
    }
    checkpoint = save_characteriser(work / "characteriser.pt", model, {"metrics": metrics})
    print(
        f"[li2021] trained in {history.seconds:.0f} s; {recipe.test} held-out patients "
        f"(true keypoints): accuracy {shown(held_out['accuracy'])}, ROC AUC "
        f"{shown(held_out['auroc'])}",
        file=out,
        flush=True,
    )
    return TrainedCharacteriser(checkpoint, metrics)


def shown(value: object) -> str:
    """Return a figure with three decimals, or ``n/a`` when there is none."""
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def patient_figures(figures: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the per-patient values of `figures_of` (intervals left out); None: no patient.

    Parameters
    ----------
    figures : mapping or None
        `characterise_train.figures_of`'s result.

    Returns
    -------
    dict
        ``patients`` and, when there are any, ``sensitivity``, ``specificity``,
        ``accuracy`` and ``auroc``.
    """
    if figures is None:
        return {"patients": 0}
    patient = figures["patient"]
    return {"patients": patient["n"]} | {
        key: patient[key]["value"] for key in ("sensitivity", "specificity", "accuracy", "auroc")
    }


def add_characteriser_to_bundle(
    bundle_dir: Path,
    checkpoint: Path,
    metrics: Mapping[str, Any],
    *,
    threshold: float = 0.5,
) -> Bundle:
    """Add (or replace) the classifier in a bundle's CT entry; everything else stays.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        A bundle with CT models (``ct`` entry).
    checkpoint : pathlib.Path
        The classifier (copied into the bundle).
    metrics : mapping
        How it was trained and validated (``trained_on`` is stated in the SR).
    threshold : float
        Malignant at or above this probability.

    Returns
    -------
    Bundle
        The re-verified bundle.

    Raises
    ------
    BundleError
        When the bundle has no CT models.
    """
    bundle = verify_bundle(bundle_dir)
    if bundle.manifest.ct is None:
        raise BundleError(f"{bundle_dir}: no CT models to characterise the fractures of")
    entry = bundle.manifest.ct.model_dump()
    entry["characteriser"] = CT_CHARACTERISER
    entry["malignancy_threshold"] = threshold
    entry["metrics"] = {**entry["metrics"], "characteriser": dict(metrics)}
    return set_manifest_entry(bundle_dir, "ct", entry, {CT_CHARACTERISER: Path(checkpoint)})

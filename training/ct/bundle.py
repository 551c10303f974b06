"""Train the CT models on CT phantoms and write them into a model bundle (manifest ``ct``).

`DEMO_CT_RECIPE` is what the demo bundle trains (``make serve``, `spinexr.training.bundles.
demo`): the localiser's default recipe (16 chest/abdomen phantoms and 2 heads, 400 Adam steps
at lr 1e-3, as in the paper) and Keypoint R-CNN's light CPU configuration on 300 CT reformats
for 600 steps, 80 % of those phantoms with fractures (``training/README.md``, "CT"). Both
are seeded and run on a fixed number of threads, so the same recipe gives the same weights
on the same machine.

`train_ct_models` trains both (progress lines with rates and ETA on stderr); `add_ct_to_bundle`
copies them into a bundle under `CT_LOCALISER` and `CT_KEYPOINTS`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from spinexr.pipeline.bundle import Bundle
from spinexr.training.bundles.build import set_manifest_entry
from spinexr.training.ct.localise_train import LocaliserRecipe

CT_LOCALISER: Final = "ct/localiser.pt"
"""Where the localiser goes in the bundle folder."""

CT_KEYPOINTS: Final = "ct/keypoints.pt"
"""Where the CT keypoint model goes in the bundle folder."""


@dataclass(frozen=True)
class CtModelsRecipe:
    """How the CT models are trained.

    Attributes
    ----------
    localiser : LocaliserRecipe
        The centre-line network.
    keypoint_phantoms : int
        CT phantoms whose reformats train the keypoint model.
    keypoint_fracture_probability : float
        The share of them with one to three fractures (0.8: twice the radiograph phantoms'
        share; with 0.4 the model overestimated G on fractured vertebrae by 0.08 on
        average, with 0.8 by 0.04).
    keypoint_iterations, keypoint_batch : int
        Its SGD steps and images per step.
    keypoint_lr : float
        Its learning rate.
    keypoint_seed : int
        Seeds its phantoms and weights.
    threads : int
        ``torch`` threads of the keypoint training.
    """

    localiser: LocaliserRecipe = field(default_factory=lambda: LocaliserRecipe(threads=1))
    keypoint_phantoms: int = 300
    keypoint_fracture_probability: float = 0.8
    keypoint_iterations: int = 600
    keypoint_batch: int = 2
    keypoint_lr: float = 4e-4
    keypoint_seed: int = 7
    threads: int = 1

    def describe(self) -> dict[str, Any]:
        """Return the recipe as plain values (for the manifest)."""
        out = asdict(self)
        out["localiser"]["config"] = self.localiser.config.to_dict()
        out["localiser"]["crop"] = list(self.localiser.crop)
        return out


DEMO_CT_RECIPE: Final = CtModelsRecipe()
"""The demo bundle's CT recipe."""


@dataclass(frozen=True)
class TrainedCtModels:
    """The two checkpoints and how long they took."""

    localiser: Path
    keypoints: Path
    seconds: dict[str, float]


def train_ct_models(
    work: Path, recipe: CtModelsRecipe = DEMO_CT_RECIPE, *, stream: TextIO | None = None
) -> TrainedCtModels:
    """Train the CT localiser and the CT keypoint model on phantoms.

    Parameters
    ----------
    work : pathlib.Path
        Folder for the checkpoints (created).
    recipe : CtModelsRecipe
        What to train.
    stream : file-like, optional
        Progress lines (default stderr).

    Returns
    -------
    TrainedCtModels
        ``work/localiser.pt`` and the keypoint checkpoint, with seconds per model.
    """
    from spinexr.pipeline.ct.localise import save_localiser
    from spinexr.pipeline.vertebrae.krcnn import KRCNNConfig
    from spinexr.training.ct.keypoints import generate_ct_keypoint_records
    from spinexr.training.ct.localise_train import train_localiser
    from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn

    out = stream if stream is not None else sys.stderr
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model, losses = train_localiser(recipe.localiser, stream=out)
    localiser_seconds = time.monotonic() - started
    localiser = save_localiser(
        work / "localiser.pt",
        model,
        {"recipe": recipe.describe()["localiser"], "final_loss": losses[-1]},
    )
    started = time.monotonic()
    records = generate_ct_keypoint_records(
        recipe.keypoint_phantoms,
        recipe.keypoint_seed,
        fracture_probability=recipe.keypoint_fracture_probability,
    )
    keypoints = train_keypointrcnn(
        records,
        work / "keypoints",
        seed=recipe.keypoint_seed,
        iterations=recipe.keypoint_iterations,
        batch_size=recipe.keypoint_batch,
        lr=recipe.keypoint_lr,
        config=KRCNNConfig.cpu(),
        threads=recipe.threads,
    )
    seconds = {"localiser": localiser_seconds, "keypoints": time.monotonic() - started}
    print(
        f"[ct-models] localiser {seconds['localiser']:.0f} s, keypoints "
        f"{seconds['keypoints']:.0f} s",
        file=out,
        flush=True,
    )
    return TrainedCtModels(localiser=localiser, keypoints=keypoints, seconds=seconds)


def add_ct_to_bundle(
    bundle_dir: Path,
    localiser: Path,
    keypoints: Path,
    metrics: Mapping[str, Any],
    *,
    arch: str = "keypointrcnn",
    score_threshold: float = 0.5,
) -> Bundle:
    """Add (or replace) a bundle's CT models; the other files stay as they are.

    Parameters
    ----------
    bundle_dir : pathlib.Path
        A bundle that verifies.
    localiser, keypoints : pathlib.Path
        The checkpoints (copied into the bundle).
    metrics : mapping
        How they were validated (recorded in the manifest entry).
    arch : {"pisov", "keypointrcnn"}
        The keypoint model's architecture.
    score_threshold : float
        Lowest reported vertebra score.

    Returns
    -------
    Bundle
        The re-verified bundle (its device UID changes: weight files were added).
    """
    entry = {
        "localiser": CT_LOCALISER,
        "keypoint_model": arch,
        "keypoint_checkpoint": CT_KEYPOINTS,
        "score_threshold": score_threshold,
        "metrics": dict(metrics),
    }
    files = {CT_LOCALISER: Path(localiser), CT_KEYPOINTS: Path(keypoints)}
    return set_manifest_entry(bundle_dir, "ct", entry, files)

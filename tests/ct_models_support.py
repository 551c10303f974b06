"""The demo bundle's CT models, trained here exactly as the demo trains them and cached.

`demo_characteriser` does the same for the benign / malignant classifier
(`spinexr.training.ct.characterise_bundle.DEMO_CHARACTERISER`, about 9 minutes cold).

`demo_ct_models` trains the localiser and the CT keypoint model with
`spinexr.training.ct.bundle.DEMO_CT_RECIPE` (seeded, fixed threads: the demo's models) and
caches both under $SPINEXR_CACHE (default ~/.cache/spinexr) by a digest of the recipe and of
every source file that shapes them, like the radiograph keypoint model of
``test_vertebrae_end_to_end``: a cold run trains them (about 20 minutes on this 2-core
machine), a warm one reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from spinexr.training.ct.bundle import DEMO_CT_RECIPE, train_ct_models
from spinexr.training.ct.characterise_bundle import (
    DEMO_CHARACTERISER,
    train_characteriser_for_bundle,
)

ROOT = Path(__file__).resolve().parents[1]

SOURCES = [
    ROOT / "pipeline" / name
    for name in (
        "ct/localise.py",
        "ct/reformat.py",
        "vertebrae/straighten.py",
        "vertebrae/genant.py",
        "vertebrae/krcnn.py",
        "vertebrae/objects.py",
    )
] + [
    ROOT / "training" / name
    for name in (
        "determinism.py",
        "ct/bundle.py",
        "ct/keypoints.py",
        "ct/localise_train.py",
        "vertebrae/augment.py",
        "vertebrae/krcnn_train.py",
        "vertebrae/records.py",
        "phantoms/fractures.py",
    )
]
SOURCES += sorted((ROOT / "training" / "phantoms").glob("ct*.py"))


def _cached(
    name: str, recipe: object, sources: list[Path], train: Callable[[Path], dict[str, Path]]
) -> Path:
    """The cache folder of ``name`` for this recipe and these sources, filled once.

    ``train(tmp)`` returns file name → file for the folder; they are copied into a partial
    folder that replaces the cache folder in one rename.
    """
    digest = hashlib.sha256(repr(recipe).encode())
    for path in sources:
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    folder = cache / "test-models" / f"{name}-{digest.hexdigest()[:16]}"
    if not folder.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            files = train(Path(tmp))
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for file_name, source in files.items():
                shutil.copyfile(source, partial / file_name)
            os.replace(partial, folder)
    return folder


def demo_ct_models() -> tuple[Path, Path]:
    """Return the cached (localiser, keypoint) checkpoints, training them when absent."""

    def train(tmp: Path) -> dict[str, Path]:
        trained = train_ct_models(tmp)
        return {"localiser.pt": trained.localiser, "keypoints.pt": trained.keypoints}

    folder = _cached("ct", DEMO_CT_RECIPE, SOURCES, train)
    return folder / "localiser.pt", folder / "keypoints.pt"


CHARACTERISER_SOURCES = [
    ROOT / "pipeline" / "ct" / "characterise.py",
    ROOT / "pipeline" / "vertebrae" / "genant.py",
    ROOT / "training" / "determinism.py",
    ROOT / "training" / "ct" / "characterise_train.py",
    ROOT / "training" / "ct" / "characterise_bundle.py",
    ROOT / "training" / "phantoms" / "fractures.py",
    ROOT / "training" / "phantoms" / "malignancy.py",
    *sorted((ROOT / "training" / "phantoms").glob("ct*.py")),
]


def demo_characteriser() -> tuple[Path, dict[str, object]]:
    """Return the cached demo classifier's checkpoint and metrics, training it when absent."""

    def train(tmp: Path) -> dict[str, Path]:
        trained = train_characteriser_for_bundle(tmp, DEMO_CHARACTERISER)
        metrics = tmp / "metrics.json"
        metrics.write_text(json.dumps(trained.metrics))
        return {"characteriser.pt": trained.checkpoint, "metrics.json": metrics}

    folder = _cached("li2021", DEMO_CHARACTERISER, CHARACTERISER_SOURCES, train)
    return folder / "characteriser.pt", json.loads((folder / "metrics.json").read_text())


if __name__ == "__main__":
    print(demo_ct_models())
    print(demo_characteriser())

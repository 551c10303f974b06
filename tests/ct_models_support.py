"""The demo bundle's CT models, trained here exactly as the demo trains them and cached.

`demo_characteriser` does the same for the benign / malignant classifier
(`spinexr.training.ct.characterise_bundle.DEMO_CHARACTERISER`, about 7 minutes cold).

`demo_ct_models` trains the localiser and the CT keypoint model with
`spinexr.training.ct.bundle.DEMO_CT_RECIPE` (seeded, fixed threads: the demo's models) and
caches both under $SPINEXR_CACHE (default ~/.cache/spinexr) by a digest of the recipe and of
every source file that shapes them, like the radiograph keypoint model of
``test_vertebrae_end_to_end``: a cold run trains them (about 20 minutes on this 2-core
machine), a warm one reuses them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
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


def demo_ct_models() -> tuple[Path, Path]:
    """Return the cached (localiser, keypoint) checkpoints, training them when absent."""
    digest = hashlib.sha256(repr(DEMO_CT_RECIPE).encode())
    for path in SOURCES:
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    folder = cache / "test-models" / f"ct-{digest.hexdigest()[:16]}"
    localiser, keypoints = folder / "localiser.pt", folder / "keypoints.pt"
    if not (localiser.is_file() and keypoints.is_file()):
        with tempfile.TemporaryDirectory() as tmp:
            trained = train_ct_models(Path(tmp))
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            shutil.copyfile(trained.localiser, partial / "localiser.pt")
            shutil.copyfile(trained.keypoints, partial / "keypoints.pt")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
    return localiser, keypoints


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
    import json

    digest = hashlib.sha256(repr(DEMO_CHARACTERISER).encode())
    for path in CHARACTERISER_SOURCES:
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    folder = cache / "test-models" / f"li2021-{digest.hexdigest()[:16]}"
    checkpoint, metrics = folder / "characteriser.pt", folder / "metrics.json"
    if not (checkpoint.is_file() and metrics.is_file()):
        with tempfile.TemporaryDirectory() as tmp:
            trained = train_characteriser_for_bundle(Path(tmp), DEMO_CHARACTERISER)
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            shutil.copyfile(trained.checkpoint, partial / "characteriser.pt")
            (partial / "metrics.json").write_text(json.dumps(trained.metrics))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
    return checkpoint, json.loads(metrics.read_text())


if __name__ == "__main__":
    print(demo_ct_models())
    print(demo_characteriser())

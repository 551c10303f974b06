"""The demo bundle's CT models, trained here exactly as the demo trains them and cached.

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


if __name__ == "__main__":
    print(demo_ct_models())

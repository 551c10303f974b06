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

import pydicom

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


def deliver_ct_studies(
    tmp_path: Path,
    bundle: Path,
    studies: list[object],
    delivered: Callable[[list[pydicom.Dataset]], bool],
    what: str,
    **settings: str,
) -> dict[str, list[pydicom.Dataset]]:
    """Send CT studies to `serve` with ``bundle``; return what a storescp PACS got, by study.

    Parameters
    ----------
    tmp_path : pathlib.Path
        The test's folder (node data, PACS folder, log).
    bundle : pathlib.Path
        The model bundle.
    studies : list of CtStudyFiles
        Sent in order, one ``storescu`` each.
    delivered : callable
        Whether everything expected has arrived, given every object received so far.
    what : str
        What is waited for (the timeout message).
    **settings : str
        More ``SPINEXR_...`` settings.

    Returns
    -------
    dict
        Study Instance UID → the objects received for it.
    """
    from testsupport import make_node, start_storescp, storescu, wait_for

    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="2",
        SPINEXR_MODELS__BUNDLE=str(bundle),
        SPINEXR_MODELS__DEVICE="cpu",
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
        **settings,
    )
    node.start()
    try:
        for study in studies:
            files = [str(p) for s in study.series for p in s.paths]  # type: ignore[attr-defined]
            storescu(node.dicom_port, files)

        def arrived() -> list[pydicom.Dataset] | None:
            received = [pydicom.dcmread(p) for p in pacs_dir.iterdir()]
            return received if delivered(received) else None

        received = wait_for(arrived, 900, what, node)
    finally:
        node.stop()
        pacs.terminate()
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for ds in received:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return by_study

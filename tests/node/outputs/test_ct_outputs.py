"""The CT analysis in the outputs: Comprehensive 3D SR, reformat Secondary Capture and its GSPS.

The result is built from a CT phantom's ground truth (its measurable vertebrae, their
keypoints in the patient, grades from the true heights) and a reformat image, so that what is
tested is the encoding: dciodvfy and PixelMed find no error, highdicom reads back every
figure and every SCOORD3D point, and the SR's and the GSPS's tracking UIDs agree.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import (
    dciodvfy_errors,
    make_settings,
    pixelmed_sr_report,
    write_object,
)

from spinexr.node.jobs.sources import ct_evidence
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.readback import read_ct_analysis, read_ct_vertebrae, read_vertebrae
from spinexr.pipeline.ct.findings import (
    CtAnalysis,
    CtSeriesVerdict,
    CtStatus,
    CtVertebraFinding,
)
from spinexr.pipeline.ct.stage import CtReformat
from spinexr.pipeline.fusion import summarise_study
from spinexr.pipeline.results import FusionMode, Outcome, Provenance, StudyResult
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.findings import VertebraFinding
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.training.ct.keypoints import gradable
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture
from spinexr.training.phantoms.ct_dicom import write_ct_study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    phantom = make_ct_phantom(
        5,
        levels=("T5", "T11"),
        fractures=(
            LevelFracture("T8", 0.55, Deformity.WEDGE),
            LevelFracture("T10", 0.70, Deformity.BICONCAVE),
        ),
        scoliosis=False,
    )
    return phantom, write_ct_study(tmp_path_factory.mktemp("ct"), phantom)


def _provenance() -> Provenance:
    return Provenance(
        bundle_name="spinexr-test",
        bundle_version="1.0",
        device_uid="2.25.1234",
        weights_digest="ab" * 32,
        demo=True,
        software_version="0",
        torch_device="cpu",
    )


def _analysed(phantom, files) -> tuple[CtAnalysis, CtReformat]:
    axial = files.role("axial")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in axial.paths]
    findings = []
    for number, truth in enumerate(gradable(phantom), start=1):
        # Reformat keypoints: the body drawn on a 400 x 200 image, 40 px per vertebra.
        top = 10.0 + 40.0 * (number - 1)
        h = np.array(truth.heights) * 1.5
        xy = [
            (60, top),
            (60, top + h[0]),
            (90, top),
            (90, top + h[1]),
            (120, top),
            (120, top + h[2]),
        ]
        findings.append(
            CtVertebraFinding(
                finding=VertebraFinding(
                    number=number,
                    score=0.9,
                    keypoints=xy,
                    heights_px=genant.heights(xy),
                    heights_mm=truth.heights,
                    genant_index=truth.genant_index,
                    grade=truth.grade,
                    deformity=truth.deformity,
                ),
                keypoints_lps=[tuple(float(v) for v in p) for p in truth.keypoints],
            )
        )
    analysis = CtAnalysis(
        status=CtStatus.ANALYSED,
        series=[
            CtSeriesVerdict(
                series_instance_uid=s.series_uid,
                series_number=s.series_number,
                instances=len(s.paths),
                chosen=s.role == "axial",
                reasons=[] if s.role == "axial" else [f"{s.role}: test reason"],
            )
            for s in files.series
        ],
        decided_by=["eligibility"],
        series_instance_uid=axial.series_uid,
        frame_of_reference_uid=str(headers[0].FrameOfReferenceUID),
        slices=len(headers),
        reformat_size=(400, 200),
        reformat_spacing_mm=(1.0, 1.0),
        vertebrae=findings,
        model="ct-localiser + keypointrcnn 1",
    )
    reformat = CtReformat(
        display=np.random.default_rng(0).integers(0, 255, (400, 200), dtype=np.uint8),
        spacing_mm=(1.0, 1.0),
        series_instance_uid=axial.series_uid,
        sop_instance_uids=tuple(str(h.SOPInstanceUID) for h in headers),
    )
    return analysis, reformat


def _result(files, analysis: CtAnalysis) -> StudyResult:
    summary = summarise_study([], 0.5, analysis)
    result = StudyResult(
        study_instance_uid=files.study_uid,
        outcome=summary.outcome,
        failure_reason=summary.failure_reason,
        probability=summary.probability,
        decision=summary.decision,
        threshold=0.5,
        display_threshold=0.3,
        fusion_mode=FusionMode.PAPER,
        ct=analysis,
        provenance=_provenance(),
        analysed_at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
    )
    return StudyResult.from_json(result.to_json())


def test_analysed_ct_outputs_validate_and_read_back(study, tmp_path: Path) -> None:
    phantom, files = study
    analysis, reformat = _analysed(phantom, files)
    result = _result(files, analysis)
    assert result.outcome is Outcome.ABNORMAL and result.probability is None
    paths = [p for s in files.series for p in s.paths]
    sources = ct_evidence(paths, result)
    assert len(sources) == len(files.role("axial").paths) + 2  # one of each other series
    built = build_outputs(sources, result, make_settings(), job_key="ct-test", ct_reformat=reformat)
    assert [b.kind for b in built] == ["sr", "reformat", "reformat"]
    written = {
        b.dataset.Modality: write_object(b.dataset, tmp_path / f"{b.dataset.Modality}.dcm")
        for b in built
    }
    for path in written.values():
        errors, _ = dciodvfy_errors(path)
        assert errors == [], (path.name, errors)
    report = pixelmed_sr_report([written["SR"]], tmp_path)[written["SR"]]
    assert any("Found Root Template TID_1500" in ln for ln in report), report
    assert [ln for ln in report if ln.startswith("Error")] == []

    sr = pydicom.dcmread(written["SR"])
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert read_vertebrae(sr) == []  # no radiograph vertebra
    summary = read_ct_analysis(sr)
    assert summary is not None and summary.status == "analysed"
    assert summary.worst_grade is GenantGrade.SEVERE
    assert "test reason" in summary.note
    reported = read_ct_vertebrae(sr)
    assert len(reported) == len(analysis.vertebrae)
    for got, want in zip(reported, analysis.vertebrae, strict=True):
        assert got.grade is want.finding.grade
        assert got.deformity is want.finding.deformity
        assert got.genant_index == pytest.approx(want.finding.genant_index, abs=1e-6)
        assert got.heights_mm == pytest.approx(want.finding.heights_mm, abs=1e-4)
        assert got.frame_of_reference_uid == analysis.frame_of_reference_uid
        kp = np.asarray(want.keypoints_lps)
        for (top, bottom), (i, j) in zip(got.height_lines, ((0, 1), (2, 3), (4, 5)), strict=True):
            assert np.allclose(top, kp[i], atol=1e-3) and np.allclose(bottom, kp[j], atol=1e-3)
            assert float(np.linalg.norm(np.subtract(top, bottom))) == pytest.approx(
                float(np.linalg.norm(kp[i] - kp[j])), abs=1e-3
            )

    sc = pydicom.dcmread(written["OT"])
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "REFORMATTED"]
    assert len(sc.SourceImageSequence) == len(reformat.sop_instance_uids)
    assert np.array_equal(sc.pixel_array, reformat.display)
    gsps = pydicom.dcmread(written["PR"])
    ref = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert str(ref.ReferencedSOPInstanceUID) == str(sc.SOPInstanceUID)
    tracking = {
        str(g.TrackingUID)
        for ann in gsps.GraphicAnnotationSequence
        for g in ann.get("GraphicObjectSequence", [])
    }
    assert tracking == {v.tracking_uid for v in reported}
    layers = {str(layer.GraphicLayer) for layer in gsps.GraphicLayerSequence}
    assert {"VERT_SEVERE", "VERT_MODERATE", "VERT_NORMAL", "AI_SUMMARY"} <= layers


def test_a_ct_not_analysed_says_why_in_a_plain_sr(study, tmp_path: Path) -> None:
    _, files = study
    analysis = CtAnalysis(
        status=CtStatus.NOT_ANALYSED,
        reason="no_eligible_series",
        message="none of the 1 series is eligible (1.2.3: tilted)",
        series=[
            CtSeriesVerdict(
                series_instance_uid="1.2.3", instances=3, reasons=["tilted: 15.0 degrees"]
            )
        ],
    )
    result = _result(files, analysis)
    assert result.outcome is Outcome.FAILED
    assert "no_eligible_series" in (result.failure_reason or "")
    paths = [p for s in files.series for p in s.paths]
    sources = ct_evidence(paths, result)
    assert len(sources) == len(files.series)  # one instance per series
    built = build_outputs(sources, result, make_settings(), job_key="ct-refused")
    assert [b.kind for b in built] == ["sr"]
    path = write_object(built[0].dataset, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path)[0] == []
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    summary = read_ct_analysis(sr)
    assert summary is not None and summary.status == "no_eligible_series"
    assert "tilted: 15.0 degrees" in summary.note and summary.worst_grade is None
    assert read_ct_vertebrae(sr) == []


def test_a_characterised_vertebra_carries_its_call_in_the_sr_and_the_gsps(
    study, tmp_path: Path
) -> None:
    import torch

    from spinexr.pipeline.ct.characterise import MalignancyNet
    from spinexr.pipeline.ct.findings import CharacterisationStatus
    from spinexr.pipeline.ct.stage import characterise_vertebrae

    phantom, files = study
    analysis, reformat = _analysed(phantom, files)
    torch.manual_seed(0)
    model = MalignancyNet().eval()  # untrained: this test is about the encoding
    vertebrae, status, note = characterise_vertebrae(
        phantom.hu, phantom.grid.affine(), analysis.vertebrae, model, threshold=0.5
    )
    assert status is CharacterisationStatus.CHARACTERISED and note is None
    (called,) = [v for v in vertebrae if v.characterisation is not None]
    assert called.finding.genant_index == min(v.finding.genant_index for v in vertebrae)
    assert len(called.characterisation.slice_probabilities) == 5
    analysis = analysis.model_copy(
        update={"vertebrae": vertebrae, "characterisation_status": status}
    )
    result = _result(files, CtAnalysis.model_validate(analysis.model_dump()))
    paths = [p for s in files.series for p in s.paths]
    built = build_outputs(
        ct_evidence(paths, result), result, make_settings(), job_key="ct-li", ct_reformat=reformat
    )
    written = {
        b.dataset.Modality: write_object(b.dataset, tmp_path / f"{b.dataset.Modality}.dcm")
        for b in built
    }
    for path in written.values():
        assert dciodvfy_errors(path)[0] == [], path.name
    report = pixelmed_sr_report([written["SR"]], tmp_path)[written["SR"]]
    assert [ln for ln in report if ln.startswith("Error")] == []
    sr = pydicom.dcmread(written["SR"])
    call = called.characterisation
    (got,) = [v for v in read_ct_vertebrae(sr) if v.characterisation is not None]
    assert got.number == called.finding.number and got.characterisation == call.label
    assert got.malignancy_probability == pytest.approx(call.probability, abs=1e-6)
    summary = read_ct_analysis(sr)
    assert summary.characterisation_status == "characterised"
    assert summary.characterisation == call.label
    assert f"{call.label} {call.probability:.2f}" in summary.note
    gsps = pydicom.dcmread(written["PR"])
    texts = [
        str(t.UnformattedTextValue)
        for ann in gsps.GraphicAnnotationSequence
        for t in ann.get("TextObjectSequence", [])
    ]
    assert any(t.endswith(f" - {call.label} {call.probability:.2f}") for t in texts), texts


def test_without_a_fracture_the_characterisation_is_not_applicable(study) -> None:
    from spinexr.pipeline.ct.characterise import MalignancyNet
    from spinexr.pipeline.ct.findings import CharacterisationStatus
    from spinexr.pipeline.ct.stage import characterise_vertebrae
    from spinexr.pipeline.vertebrae.genant import GenantGrade

    phantom, files = study
    analysis, _ = _analysed(phantom, files)
    normal = [v for v in analysis.vertebrae if v.finding.grade is GenantGrade.NORMAL]
    _, status, note = characterise_vertebrae(
        phantom.hu, phantom.grid.affine(), normal, MalignancyNet().eval()
    )
    assert status is CharacterisationStatus.NOT_APPLICABLE
    assert note == "not applicable: no vertebra at or above the trigger grade (mild)"

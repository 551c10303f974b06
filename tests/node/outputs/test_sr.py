from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    dciodvfy_errors,
    failed_result,
    make_settings,
    make_study,
    normal_result,
    pixelmed_sr_report,
    write_object,
)
from pydicom.dataset import Dataset

from spinexr.node import MANUFACTURER
from spinexr.node.outputs import codes
from spinexr.node.outputs.provenance import DEMO_WARNING, box_trackings
from spinexr.node.outputs.sr import SupersededReport, build_sr, outcome_text
from spinexr.node.settings import Settings
from spinexr.pipeline.results import ImageError, Outcome, StudyResult

SR_SERIES = f"{UID_ROOT}.1.1"


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _child(item: Dataset, value: str, scheme: str = "DCM") -> Dataset | None:
    for child in item.get("ContentSequence", []):
        if "ConceptNameCodeSequence" in child and _name(child) == (value, scheme):
            return child
    return None


def _groups(sr: Dataset) -> list[Dataset]:
    measurements = next(i for i in _items(sr) if _name(i) == ("126010", "DCM"))
    return [g for g in measurements.ContentSequence if _name(g) == ("125007", "DCM")]


def _roi_groups(sr: Dataset) -> list[Dataset]:
    """The planar ROI groups of the boxes (not the frames of the abnormality groups)."""
    return [
        g
        for g in _groups(sr)
        if _child(g, "111030") is not None and _finding(g) != ("SPINE_XR_ABN", "99SPINEXR")
    ]


def _finding(group: Dataset) -> tuple[str, str]:
    finding = _child(group, "121071")
    assert finding is not None
    code = finding.ConceptCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _tracking_uid(group: Dataset) -> str:
    uid = _child(group, "112040")
    assert uid is not None
    return str(uid.UID)


def _figures(sr: Dataset, roi: Dataset) -> Dataset:
    """The TID 1501 group paired with a planar ROI group (same tracking UID, right after)."""
    groups = _groups(sr)
    after = groups[groups.index(roi) + 1]
    assert str(after.ContentTemplateSequence[0].TemplateIdentifier) == "1501"
    assert _tracking_uid(after) == _tracking_uid(roi)
    return after


def _inferred_from(num: Dataset) -> np.ndarray:
    """The points of the SCOORD a NUM is INFERRED FROM."""
    (scoord,) = [i for i in num.ContentSequence if i.RelationshipType == "INFERRED FROM"]
    assert scoord.ValueType == "SCOORD"
    return np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)


def _qualitative(sr: Dataset) -> Dataset:
    root_items = sr.ContentSequence
    return next(i for i in root_items if _name(i) == ("C0034375", "UMLS"))


def _build(
    sources: list[Dataset],
    result: StudyResult,
    settings: Settings,
    sop: str,
    predecessor: SupersededReport | None = None,
) -> Dataset:
    return build_sr(
        sources,
        result,
        settings,
        series_uid=SR_SERIES,
        sop_uid=f"{UID_ROOT}.1.2.{sop}",
        predecessor=predecessor,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SRs the validators check: multi-box, single-box, normal (superseding), failed."""
    folder = tmp_path_factory.mktemp("sr")
    settings = make_settings()
    sources = make_study(3, Variant(photometric="MONOCHROME1", sop_class="DX"))
    abnormal = abnormal_result(sources)
    images = [
        abnormal.images[0].model_copy(update={"boxes": abnormal.images[0].boxes[:1]}),
        abnormal.images[1].model_copy(update={"boxes": []}),
    ]
    single = abnormal.model_copy(update={"images": images})
    superseded = SupersededReport(abnormal.study_instance_uid, f"{UID_ROOT}.9.1", f"{UID_ROOT}.9.2")
    objects = {
        "abnormal": _build(sources, abnormal, settings, "1"),
        "single_box": _build(sources, single, settings, "2"),
        "normal": _build(sources, normal_result(sources), settings, "3", superseded),
        "failed": _build(sources, failed_result(sources), settings, "4"),
    }
    return {k: write_object(v, folder / f"{k}.dcm") for k, v in objects.items()}


def test_every_sr_passes_dciodvfy(written: dict[str, Path]) -> None:
    for name, path in written.items():
        errors, warnings = dciodvfy_errors(path)
        assert errors == [], name
        # The only warnings: dciodvfy does not know private coding schemes (ours is declared
        # in the Coding Scheme Identification Sequence).
        assert all("Unrecognized defined term = <99SPINEXR>" in w for w in warnings), warnings


# Its TID 1501 has no qualitative-evaluation rows (our decision CODE), and with several boxes
# it checks TID 1410 groups against TID 1501 (which has no geometric purpose row).
_KNOWN_WARNINGS = re.compile(
    r"^Warning: [\d.]+: .*/CODE \((ABN_DECISION,99SPINEXR,\"Abnormal at decision threshold\""
    r"|130400,DCM,\"Geometric purpose of region\")\): Content Item not in template$"
)


@pytest.mark.slow
def test_every_sr_passes_pixelmed_template_validation(
    written: dict[str, Path], tmp_path: Path
) -> None:
    report = pixelmed_sr_report(list(written.values()), tmp_path)
    for name, path in written.items():
        lines = report[path]
        assert any("Found Root Template TID_1500" in ln for ln in lines), (name, lines)
        errors = [ln for ln in lines if ln.startswith("Error")]
        assert errors == [], (name, errors)
        warnings = [ln for ln in lines if ln.startswith("Warning")]
        assert all(_KNOWN_WARNINGS.match(w) for w in warnings), (name, warnings)


def test_one_planar_roi_per_displayed_box_with_its_coordinates(
    written: dict[str, Path], settings: Settings
) -> None:
    sr = pydicom.dcmread(written["abnormal"])
    sources = make_study(3, Variant(photometric="MONOCHROME1", sop_class="DX"))
    result = abnormal_result(sources)
    trackings = box_trackings(result, settings.node.uid_root)
    groups = _roi_groups(sr)
    assert len(groups) == len(trackings) == 3  # the box below the display threshold is left out
    for group, tracking in zip(groups, trackings, strict=True):
        assert str(group.ContentTemplateSequence[0].TemplateIdentifier) == "1410"
        identifier = _child(group, "112039")
        uid = _child(group, "112040")
        assert identifier is not None and identifier.TextValue == tracking.identifier
        assert uid is not None and tracking.uid == uid.UID
        finding = _child(group, "121071")
        assert finding is not None
        value = finding.ConceptCodeSequence[0]
        expected = codes.finding_code(tracking.box.label)
        assert (value.CodeValue, value.CodingSchemeDesignator) == (
            expected.value,
            expected.scheme_designator,
        )
        region = _child(group, "111030")
        assert region is not None and region.GraphicType == "POLYLINE"
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        box = tracking.box
        expected_points = [
            [box.xmin, box.ymin],
            [box.xmax, box.ymin],
            [box.xmax, box.ymax],
            [box.xmin, box.ymax],
            [box.xmin, box.ymin],
        ]
        np.testing.assert_allclose(points, expected_points, atol=1e-3)
        (image,) = region.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == tracking.sop_instance_uid
        # OHIF takes a planar ROI group's region from its first NUM: the score is in the
        # TID 1501 group paired with it, inferred from a copy of the region.
        assert all(i.ValueType != "NUM" for i in group.ContentSequence)
        figures = _figures(sr, group)
        assert _finding(figures) == _finding(group)
        score = _child(figures, "DETECTION_SCORE", "99SPINEXR")
        assert score is not None
        assert float(score.MeasuredValueSequence[0].NumericValue) == pytest.approx(box.score)
        np.testing.assert_allclose(_inferred_from(score), expected_points, atol=1e-3)


def test_image_and_study_groups_carry_probability_threshold_and_decision(
    written: dict[str, Path],
) -> None:
    sr = pydicom.dcmread(written["abnormal"])
    frames = [
        g
        for g in _groups(sr)
        if _child(g, "111030") is not None and _finding(g) == ("SPINE_XR_ABN", "99SPINEXR")
    ]
    plain = [_figures(sr, frame) for frame in frames]
    assert [_child(g, "112039").TextValue for g in plain] == [  # type: ignore[union-attr]
        "study abnormality",
        "image 1 abnormality",
        "image 2 abnormality",
    ]
    sources = make_study(3, Variant(photometric="MONOCHROME1", sop_class="DX"))
    image_1, image_2 = (str(ds.SOPInstanceUID) for ds in sources)
    # The study's probability is image 1's (the maximum): its frame is on image 1.
    drawn_on = [image_1, image_1, image_2]
    expected = [(0.91, "373066001"), (0.91, "373066001"), (0.40, "373067005")]
    for frame, group, (probability, decision), image in zip(
        frames, plain, expected, drawn_on, strict=True
    ):
        region = _child(frame, "111030")
        assert region is not None
        (ref,) = region.ContentSequence
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image
        whole = [[0, 0], [384, 0], [384, 512], [0, 512], [0, 0]]
        np.testing.assert_allclose(
            np.asarray(region.GraphicData, dtype=float).reshape(-1, 2), whole
        )
        assert all(i.ValueType != "NUM" for i in frame.ContentSequence)
        num = _child(group, "ABN_PROBABILITY", "99SPINEXR")
        threshold = _child(group, "DECISION_THRESH", "99SPINEXR")
        code = _child(group, "ABN_DECISION", "99SPINEXR")
        assert num is not None and threshold is not None and code is not None
        assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(probability)
        np.testing.assert_allclose(_inferred_from(num), whole)
        unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("{probability}", "UCUM")
        assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.5)
        assert code.ConceptCodeSequence[0].CodeValue == decision
    image_ref = _child(plain[1], "121112")
    assert image_ref is not None


def test_sr_header_provenance_and_evidence(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["abnormal"])
    assert sr.Manufacturer == MANUFACTURER
    assert sr.ManufacturerModelName == "spinexr-demo"
    assert list(sr.SoftwareVersions)[1] == "spinexr-demo 1.2.0"
    assert sr.DeviceUID == f"{UID_ROOT}.7.1"
    assert sr.SeriesDescription.endswith(DEMO_WARNING)
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert (
        sr.PatientID
        and sr.StudyInstanceUID == sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID
    )
    purposes = [
        item.PurposeOfReferenceCodeSequence[0].CodeValue
        for item in sr.ContributingEquipmentSequence
        if item.Manufacturer == MANUFACTURER
    ]
    assert purposes == ["109102"]
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SPINEXR"
    observer = next(i for i in _items(sr) if _name(i) == ("121012", "DCM"))
    assert sr.DeviceUID == observer.UID
    procedure = next(i for i in _items(sr) if _name(i) == ("121058", "DCM"))
    assert procedure.ConceptCodeSequence[0].CodeValue == "363679005"
    outcome = _child(_qualitative(sr), "111017")
    assert outcome is not None and outcome.ConceptCodeSequence[0].CodeValue == "111242"


def test_no_finding_sr_says_so_and_lists_its_predecessor(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["normal"])
    assert _roi_groups(sr) == []
    qualitative = _qualitative(sr)
    outcome = _child(qualitative, "111017")
    assert outcome is not None
    assert outcome.ConceptCodeSequence[0].CodeMeaning == codes.NO_ABNORMAL_FINDING.meaning
    summary = _child(qualitative, "121111")
    assert summary is not None and "No abnormal finding" in summary.TextValue
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == sr.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == f"{UID_ROOT}.9.1"
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == f"{UID_ROOT}.9.2"


def test_failed_sr_says_why_and_still_references_the_sources(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["failed"])
    # The study's frame on the first image, with its finding only (nothing to pair it with).
    (group,) = _groups(sr)
    assert str(group.ContentTemplateSequence[0].TemplateIdentifier) == "1410"
    assert _finding(group) == ("SPINE_XR_ABN", "99SPINEXR")
    qualitative = _qualitative(sr)
    outcome = _child(qualitative, "111017")
    assert outcome is not None and outcome.ConceptCodeSequence[0].CodeValue == "111245"
    summary = _child(qualitative, "121111")
    assert summary is not None
    assert summary.TextValue == (
        f"{DEMO_WARNING}. Analysis failed: no image could be analysed (undecodable pixel data)"
    )
    failures = [
        i for i in qualitative.ContentSequence if _name(i) == ("ANALYSIS_FAILED", "99SPINEXR")
    ]
    assert len(failures) == 2
    referenced = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert len(referenced) == 2


def test_partial_failure_and_non_ascii_reasons(settings: Settings) -> None:
    sources = make_study(5, Variant())
    result = abnormal_result(sources, demo=False)
    broken = result.images[1].model_copy(
        update={
            "boxes": [],
            "probability": None,
            "classifier_probability": None,
            "decision": None,
            "error": ImageError(reason="bad", message="Pixel-Daten unlesbar – naïve ✗"),
        }
    )
    result = result.model_copy(update={"images": [result.images[0], broken]})
    sr = _build(sources, result, settings, "9")
    qualitative = _qualitative(sr)
    outcome = _child(qualitative, "111017")
    assert outcome is not None and outcome.ConceptCodeSequence[0].CodeValue == "111244"
    failure = _child(qualitative, "ANALYSIS_FAILED", "99SPINEXR")
    assert failure is not None and failure.TextValue.isascii()
    assert "naive" in failure.TextValue
    assert "1 of 2 images could not be analysed" in outcome_text(result)
    assert not outcome_text(result).startswith(DEMO_WARNING)


def test_sources_must_match_the_result(settings: Settings) -> None:
    sources = make_study(6, Variant())
    other = make_study(7, Variant())
    with pytest.raises(ValueError, match="belong to"):
        _build(other, abnormal_result(sources), settings, "8")
    with pytest.raises(ValueError, match="not among the sources"):
        _build(sources[:1], abnormal_result(sources), settings, "8")
    assert abnormal_result(sources).outcome is Outcome.ABNORMAL

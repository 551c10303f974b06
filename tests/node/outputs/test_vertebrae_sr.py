from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pydicom.sr._concepts_dict as concepts
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
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from vertebrae_outputs_support import (
    AP_NOT_LATERAL,
    MODEL,
    lateral_analysis,
    not_analysed,
    with_vertebrae,
)

from spinexr.node.outputs import codes
from spinexr.node.outputs.readback import (
    read_findings,
    read_report,
    read_vertebrae,
    read_vertebral_analyses,
)
from spinexr.node.outputs.sr import build_sr
from spinexr.node.outputs.vertebrae_sr import keypoint_algorithm, level_code, note_text
from spinexr.node.outputs.vertebrae_tracking import vertebra_trackings
from spinexr.pipeline.results import Outcome, StudyResult
from spinexr.pipeline.vertebrae.findings import LevelRule, VertebralAnalysis, VertebralStatus
from spinexr.pipeline.vertebrae.genant import GenantGrade


def _build(sources: list[Dataset], result: StudyResult, n: int) -> Dataset:
    return build_sr(
        sources,
        result,
        make_settings(),
        series_uid=f"{UID_ROOT}.5.1",
        sop_uid=f"{UID_ROOT}.5.2.{n}",
    )


def _cases() -> dict[str, tuple[list[Dataset], StudyResult]]:
    """SRs covering every encoding: levels and mm, numbered without spacing, no finding with
    magnification-corrected spacing, failed study, one vertebra and no box."""
    sources = make_study(41, Variant(photometric="MONOCHROME1", sop_class="DX"))
    abnormal = abnormal_result(sources)
    lateral = sources[1]
    one = lateral_analysis(lateral, [(30.0, 39.0, 40.0)], levels=False)
    no_boxes = abnormal.model_copy(
        update={"images": [im.model_copy(update={"boxes": []}) for im in abnormal.images]}
    )
    failed_status = not_analysed(VertebralStatus.FAILED, "image could not be decoded")
    return {
        "levels_mm": (
            sources,
            with_vertebrae(abnormal, [AP_NOT_LATERAL, lateral_analysis(lateral)]),
        ),
        "from_top_no_spacing": (
            sources,
            with_vertebrae(
                abnormal, [None, lateral_analysis(lateral, levels=False, spacing=False)]
            ),
        ),
        "no_finding": (
            sources,
            with_vertebrae(
                normal_result(sources),
                [
                    not_analysed(VertebralStatus.NO_MODEL, "the bundle has no keypoint model"),
                    lateral_analysis(lateral, [(40.0, 40.0, 40.0)] * 3, magnification=1.1),
                ],
            ),
        ),
        "failed": (sources, with_vertebrae(failed_result(sources), [failed_status] * 2)),
        "one_vertebra": (sources, with_vertebrae(no_boxes, [AP_NOT_LATERAL, one])),
    }


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[list[Dataset], StudyResult]]:
    return _cases()


@pytest.fixture(scope="module")
def written(
    cases: dict[str, tuple[list[Dataset], StudyResult]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vertebrae_sr")
    return {
        name: write_object(_build(sources, result, n), folder / f"{name}.dcm")
        for n, (name, (sources, result)) in enumerate(cases.items(), start=1)
    }


def _analyses(result: StudyResult) -> list[VertebralAnalysis]:
    return [a for _, a in result.vertebral_analyses]


# ----------------------------------------------------------------------------- validity


def test_every_vertebral_sr_passes_dciodvfy(written: dict[str, Path]) -> None:
    for name, path in written.items():
        errors, warnings = dciodvfy_errors(path)
        assert errors == [], (name, errors)
        assert all("Unrecognized defined term = <99SPINEXR>" in w for w in warnings), (
            name,
            warnings,
        )


# Its TID 1501 has no qualitative-evaluation rows, and with several ROI groups it checks the
# TID 1410 groups against TID 1501: every coded evaluation is "not in template".
_EVALUATIONS = (
    codes.ABNORMAL_DECISION,
    codes.BOUNDED_BY,
    codes.VERTEBRAL_STATUS,
    codes.WORST_GENANT_GRADE,
    codes.LEVEL_RULE,
    codes.SPACING_BASIS,
    codes.GENANT_GRADE,
    codes.DEFORMITY,
)
_KNOWN_WARNING = re.compile(
    r'^Warning: [\d.]+: .*/CODE \((?P<value>[^,]+),(?P<scheme>[^,]+),"[^"]+"\): '
    r"Content Item not in template$"
)


def _known_warning(line: str) -> bool:
    match = _KNOWN_WARNING.match(line)
    if match is None:
        return False
    key = (match.group("value"), match.group("scheme"))
    return key == ("130400", "DCM") or key in {(c.value, c.scheme_designator) for c in _EVALUATIONS}


@pytest.mark.slow
def test_every_vertebral_sr_passes_pixelmed_template_validation(
    written: dict[str, Path], tmp_path: Path
) -> None:
    # The failed study's vertebral groups (status only) are those of the AP image in levels_mm.
    checked = {name: path for name, path in written.items() if name != "failed"}
    report = pixelmed_sr_report(list(checked.values()), tmp_path)
    for name, path in checked.items():
        lines = report[path]
        assert any("Found Root Template TID_1500" in ln for ln in lines), (name, lines)
        errors = [ln for ln in lines if ln.startswith("Error")]
        assert errors == [], (name, errors)
        warnings = [ln for ln in lines if ln.startswith("Warning")]
        assert all(_known_warning(w) for w in warnings), (name, warnings)


def _groups(sr: Dataset) -> list[Dataset]:
    (measurements,) = _named(sr, Code("126010", "DCM", "Imaging Measurements"))
    return list(measurements.ContentSequence)


# ----------------------------------------------------------------------------- read back


def test_read_vertebrae_recovers_every_measurement(
    cases: dict[str, tuple[list[Dataset], StudyResult]], written: dict[str, Path]
) -> None:
    for name, (_, result) in cases.items():
        read = read_vertebrae(pydicom.dcmread(written[name]))
        trackings = vertebra_trackings(result, UID_ROOT)
        assert len(read) == len(trackings), name
        for got, tracking in zip(read, trackings, strict=True):
            v = tracking.vertebra
            assert got.sop_instance_uid == tracking.sop_instance_uid
            assert (got.tracking_id, got.tracking_uid) == (tracking.identifier, tracking.uid)
            assert (got.number, got.level) == (v.number, v.level)
            assert got.genant_index == pytest.approx(v.genant_index, rel=1e-12)
            assert (got.grade, got.deformity) == (v.grade, v.deformity)
            assert got.score == pytest.approx(v.score, rel=1e-12)
            if v.heights_mm is None:
                assert got.heights_mm is None and got.spacing == "none"
            else:
                assert got.heights_mm == pytest.approx(v.heights_mm, rel=1e-12)
            expected = np.asarray(v.keypoints).reshape(3, 2, 2)
            np.testing.assert_allclose(np.asarray(got.height_lines), expected, atol=1e-4)
            assert got.outline[0] == got.outline[-1] and len(got.outline) == 7


def test_every_image_has_a_summary_and_only_analysed_images_a_grade(
    cases: dict[str, tuple[list[Dataset], StudyResult]], written: dict[str, Path]
) -> None:
    for name, (_, result) in cases.items():
        read = read_vertebral_analyses(pydicom.dcmread(written[name]))
        expected = [im for im in result.images if im.vertebrae is not None]
        assert [r.sop_instance_uid for r in read] == [im.sop_instance_uid for im in expected]
        for got, image in zip(read, expected, strict=True):
            analysis = image.vertebrae
            assert analysis is not None
            assert got.status is analysis.status
            if analysis.analysed:
                assert got.worst_grade is analysis.worst_grade
                assert got.grade_counts == analysis.grade_counts()
                assert got.lowest_genant == pytest.approx(analysis.lowest_genant, rel=1e-12)
                assert got.level_rule is analysis.level_rule
            else:
                assert got.worst_grade is None and got.grade_counts == {}
                assert got.lowest_genant is None and got.level_rule is None


def test_lesion_readback_is_unchanged_by_vertebrae(
    cases: dict[str, tuple[list[Dataset], StudyResult]], written: dict[str, Path]
) -> None:
    _, result = cases["levels_mm"]
    sr = pydicom.dcmread(written["levels_mm"])
    assert len(read_findings(sr)) == sum(len(im.displayed_boxes) for im in result.images)
    contents = read_report(sr)
    assert contents.outcome is Outcome.ABNORMAL
    assert [a.sop_instance_uid for a in contents.images] == [
        im.sop_instance_uid for im in result.images
    ]


def test_existing_outcomes_stay(written: dict[str, Path]) -> None:
    normal = read_report(pydicom.dcmread(written["no_finding"]))
    assert normal.outcome is Outcome.NO_FINDING and "No abnormal finding" in normal.summary
    failed = read_report(pydicom.dcmread(written["failed"]))
    assert failed.outcome is Outcome.FAILED and failed.summary.endswith(
        "Analysis failed: no image could be analysed (undecodable pixel data)"
    )
    assert len(failed.failures) == 2
    assert read_vertebrae(pydicom.dcmread(written["failed"])) == []


# ----------------------------------------------------------------------------- encoding


def _items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def _named(ds: Dataset, code: Code) -> list[Dataset]:
    return [
        i
        for i in _items(ds)
        if "ConceptNameCodeSequence" in i
        and (
            i.ConceptNameCodeSequence[0].CodeValue,
            i.ConceptNameCodeSequence[0].CodingSchemeDesignator,
        )
        == (code.value, code.scheme_designator)
    ]


def test_levels_are_finding_sites_only_when_established(written: dict[str, Path]) -> None:
    with_levels = pydicom.dcmread(written["levels_mm"])
    sites = {
        (s.ConceptCodeSequence[0].CodeValue, s.ConceptCodeSequence[0].CodeMeaning)
        for s in _named(with_levels, dcm_codes.SCT.FindingSite)
    }
    assert {("66794005", "L1 vertebra"), ("49668003", "L5 vertebra")} <= sites
    numbered = pydicom.dcmread(written["from_top_no_spacing"])
    values = {
        s.ConceptCodeSequence[0].CodeValue for s in _named(numbered, dcm_codes.SCT.FindingSite)
    }
    assert not values & {c.value for c in codes.VERTEBRA_LEVELS.values()}


def test_heights_carry_mm_a_site_modifier_and_their_own_two_point_line(
    written: dict[str, Path],
) -> None:
    sr = pydicom.dcmread(written["levels_mm"])
    heights = _named(sr, codes.HEIGHT)
    assert len(heights) == 3 * 5
    modifiers = []
    for item in heights:
        unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("mm", "UCUM")
        (scoord,) = [c for c in item.ContentSequence if c.ValueType == "SCOORD"]
        assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
        assert len(scoord.GraphicData) == 4
        (site,) = _named(item, dcm_codes.SCT.FindingSite)
        (modifier,) = site.ContentSequence
        modifiers.append(modifier.ConceptCodeSequence[0].CodeMeaning)
    assert modifiers == ["Anterior", "Middle", "Posterior"] * 5
    # Genant index and score each inferred from the outline (7 points), in the vertebra's group.
    for name in (codes.GENANT_INDEX, codes.DETECTION_SCORE):
        per_vertebra = [
            item
            for item in _named(sr, name)
            if any(
                len(c.GraphicData) == 14
                for c in item.get("ContentSequence", [])
                if c.ValueType == "SCOORD"
            )
        ]
        assert len(per_vertebra) == 5


def test_without_spacing_there_are_no_mm_and_a_note_says_so(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["from_top_no_spacing"])
    assert _named(sr, codes.HEIGHT) == []
    notes = [i.TextValue for i in _named(sr, codes.VERTEBRAL_NOTE)]
    assert len(notes) == 1 and "pixel spacing absent" in notes[0]
    assert "levels not established" in notes[0]
    spacing = {i.ConceptCodeSequence[0].CodeValue for i in _named(sr, codes.SPACING_BASIS)}
    assert spacing == {"NO_SPACING"}


def test_magnification_basis_and_factor_are_reported(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["no_finding"])
    spacing = {i.ConceptCodeSequence[0].CodeValue for i in _named(sr, codes.SPACING_BASIS)}
    assert spacing == {"IMAGER_SP_MAG"}
    (factor,) = _named(sr, codes.MAGNIFICATION_FACTOR)
    assert float(factor.MeasuredValueSequence[0].NumericValue) == pytest.approx(1.1)


def test_not_analysed_image_says_why_and_has_no_grade(written: dict[str, Path]) -> None:
    sr = pydicom.dcmread(written["levels_mm"])
    notes = [i.TextValue for i in _named(sr, codes.VERTEBRAL_NOTE)]
    assert any(
        "not analysed for vertebral fractures: not_lateral: AP view (ViewPosition AP)" in n
        for n in notes
    )
    statuses = [i.ConceptCodeSequence[0].CodeValue for i in _named(sr, codes.VERTEBRAL_STATUS)]
    assert statuses == ["VERT_NOT_LATERAL", "VERT_ANALYSED"]
    assert len(_named(sr, codes.WORST_GENANT_GRADE)) == 1  # only the analysed image


def test_tracking_uids_are_deterministic_one_group_per_vertebra(
    cases: dict[str, tuple[list[Dataset], StudyResult]], written: dict[str, Path]
) -> None:
    _, result = cases["levels_mm"]
    first = vertebra_trackings(result, UID_ROOT)
    assert [t.uid for t in first] == [t.uid for t in vertebra_trackings(result, UID_ROOT)]
    assert len({t.uid for t in first}) == len(first)
    sr = pydicom.dcmread(written["levels_mm"])
    uids = [i.UID for i in _named(sr, dcm_codes.DCM.TrackingUniqueIdentifier)]
    for tracking in first:
        assert uids.count(tracking.uid) == 1  # the vertebra's one group


def test_algorithm_identification_of_the_keypoint_model(
    cases: dict[str, tuple[list[Dataset], StudyResult]],
) -> None:
    _, result = cases["levels_mm"]
    analysis = _analyses(result)[0]
    algorithm = keypoint_algorithm(analysis, result)
    assert algorithm is not None
    texts = [str(i.TextValue) for i in algorithm if "TextValue" in i]
    assert texts[:2] == MODEL.split(" ")
    assert "genant_cutoffs=mild<=0.8,moderate<=0.75,severe<=0.6" in texts
    assert "level_rule=sacrum" in texts and "spacing=PixelSpacing" in texts
    bare = analysis.model_copy(update={"model": "keypoints"})
    named = keypoint_algorithm(bare, result)
    assert named is not None
    assert [str(i.TextValue) for i in named][:2] == ["keypoints", result.provenance.bundle_version]
    assert keypoint_algorithm(not_analysed(VertebralStatus.NO_MODEL, "x"), result) is None


def test_note_names_the_worst_vertebra(cases: dict[str, tuple[list[Dataset], StudyResult]]) -> None:
    _, result = cases["levels_mm"]
    text = note_text(result.images[1], 2)
    assert "worst Genant grade severe (L4 G 0.50)" in text
    assert "4 of 5 vertebrae mild or worse" in text and "counted up from the sacrum" in text
    assert _analyses(result)[0].level_rule is LevelRule.SACRUM


def test_unknown_level_gets_no_finding_site(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert level_code("L6") is None
    assert "L6" in caplog.text
    assert level_code(None) is None
    assert level_code("T12") == codes.VERTEBRA_LEVELS["T12"]


# ----------------------------------------------------------------------------- codes


def _dictionary_meanings(code: Code) -> set[str]:
    table = concepts.concepts.get(code.scheme_designator, {})
    return {
        meaning.lower()
        for entry in table.values()
        for value, (meaning, _cids) in entry.items()
        if value == code.value
    }


def test_vertebra_standard_codes_are_in_pydicom_dictionary() -> None:
    for code in codes.VERTEBRA_STANDARD_CODES:
        assert code.meaning.lower() in _dictionary_meanings(code), code


def test_level_codes_are_cid_7603() -> None:
    for level, code in codes.VERTEBRA_LEVELS.items():
        assert getattr(dcm_codes.cid7603, f"{level}Vertebra") == code
    assert len(codes.VERTEBRA_LEVELS) == 17


def test_vertebral_project_codes_fit_and_cover_every_value() -> None:
    tables = (
        codes.GRADE_CODES,
        codes.VERTEBRAE_AT_GRADE,
        codes.DEFORMITY_CODES,
        codes.SPACING_CODES,
        codes.STATUS_CODES,
        codes.LEVEL_RULE_CODES,
    )
    assert set(codes.GRADE_CODES) == {g.value for g in GenantGrade}
    assert set(codes.STATUS_CODES) == {s.value for s in VertebralStatus}
    assert set(codes.LEVEL_RULE_CODES) == {r.value for r in LevelRule}
    project = [c for t in tables for c in t.values() if c.scheme_designator == codes.PROJECT_SCHEME]
    values = [c.value for c in project]
    assert len(values) == len(set(values))
    for code in project:
        assert 0 < len(code.value) <= 16 and code.value == code.value.upper()
        assert 0 < len(code.meaning) <= 64

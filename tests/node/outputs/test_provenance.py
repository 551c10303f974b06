from __future__ import annotations

import pytest
from outputs_support import PROVENANCE, UID_ROOT, Variant, abnormal_result, make_study

from spinexr.node.ingest.header import is_valid_uid
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    box_trackings,
    contributing_equipment,
    output_uid,
    series_description,
)
from spinexr.node.settings import Settings


def test_output_uid_is_valid_deterministic_and_distinct() -> None:
    a = output_uid(UID_ROOT, "job-1", "sr", "")
    assert is_valid_uid(a) and a.startswith(UID_ROOT + ".")
    assert a == output_uid(UID_ROOT, "job-1", "sr", "")
    assert a != output_uid(UID_ROOT, "job-2", "sr", "")
    assert a != output_uid(UID_ROOT, "job-1", "gsps", "")


def test_output_uid_fits_64_characters_under_the_longest_root() -> None:
    root = "1." + "2" * 38  # 40 characters: the longest root settings accept
    for i in range(200):
        uid = output_uid(root, i)
        assert is_valid_uid(uid) and len(uid) <= 64
    with pytest.raises(ValueError):
        output_uid("1." + "2" * 50, "x")


def test_series_description_marks_ai_output_and_demo() -> None:
    settings = Settings()
    demo = series_description(settings, PROVENANCE, "sr")
    assert demo.startswith("AI spinexr SR") and demo.endswith(DEMO_WARNING)
    clinical = series_description(settings, PROVENANCE.model_copy(update={"demo": False}), "gsps")
    assert clinical == "AI spinexr annotations"
    long_prefix = Settings(output={"series_description_prefix": "X" * 80})
    text = series_description(long_prefix, PROVENANCE, "sc")
    assert len(text) <= 64 and text.endswith(DEMO_WARNING)


def test_contributing_equipment_is_processing_equipment_with_the_model() -> None:
    result = abnormal_result(make_study(1, Variant()))
    item = contributing_equipment(result)
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert item.ManufacturerModelName == PROVENANCE.bundle_name
    assert PROVENANCE.bundle_version in item.SoftwareVersions
    assert DEMO_WARNING in item.ContributionDescription


def test_box_trackings_number_displayed_boxes_study_wide() -> None:
    result = abnormal_result(make_study(1, Variant()))
    trackings = box_trackings(result, UID_ROOT)
    assert [t.number for t in trackings] == [1, 2, 3]
    assert [t.identifier for t in trackings] == [
        "box 1 Osteophytes",
        "box 2 Disc space narrowing",
        "box 3 Surgical implant",
    ]
    assert all(t.box.displayed for t in trackings)
    assert len({t.uid for t in trackings}) == 3
    assert [t.uid for t in box_trackings(result, UID_ROOT)] == [t.uid for t in trackings]

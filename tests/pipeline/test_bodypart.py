"""What the header says about an image's anatomy (spinexr.pipeline.bodypart)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from spinexr.pipeline.bodypart import (
    TagAnatomy,
    TagSource,
    dataset_tag_verdict,
    normalise_text,
    tag_verdict,
)

SPINE, OTHER, UNKNOWN = TagAnatomy.SPINE, TagAnatomy.OTHER, TagAnatomy.UNKNOWN


@pytest.mark.parametrize(
    ("body_part", "expected"),
    [
        ("SPINE", SPINE),
        ("LSPINE", SPINE),
        ("cspine", SPINE),
        ("TSPINE", SPINE),
        ("SSPINE", SPINE),
        ("SACRUM", SPINE),
        ("COCCYX", SPINE),
        ("L-SPINE", SPINE),
        ("LUMBAR SPINE", SPINE),
        ("CHEST", OTHER),
        ("HAND", OTHER),
        ("KNEE", OTHER),
        ("PELVIS", OTHER),
        ("SKULL", OTHER),
        ("LOWER EXTREMITY", OTHER),
        ("WHOLEBODY", UNKNOWN),
        ("NECK", UNKNOWN),
        ("", UNKNOWN),
        ("XYZ", UNKNOWN),
    ],
)
def test_body_part_examined_decides_first(body_part: str, expected: TagAnatomy) -> None:
    verdict = tag_verdict(body_part, "Chest PA", "", "XR LWS")
    if expected is UNKNOWN:
        # Nothing from the body part: the series description decides.
        assert verdict.source is TagSource.SERIES_DESCRIPTION and verdict.anatomy is OTHER
    else:
        assert verdict.anatomy is expected and verdict.source is TagSource.BODY_PART


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LWS in 2 Ebenen", SPINE),
        ("Lendenwirbelsäule seitlich", SPINE),
        ("HWS a.p.", SPINE),
        ("Rachis lombaire face", SPINE),
        ("Columna lumbar AP", SPINE),
        ("Colonna lombare", SPINE),
        ("C-spine lateral", SPINE),
        ("Whole spine scoliosis", SPINE),
        ("Thorax + BWS", SPINE),  # both: a spine image may be in it
        ("Thorax p.a.", OTHER),
        ("Tórax PA", OTHER),
        ("Chest 1 view", OTHER),
        ("Hand links", OTHER),
        ("Knie 2 Ebenen", OTHER),
        ("Brachial plexus", UNKNOWN),  # "rachi" inside a word is not the spine
        ("AP", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_description_words_in_several_languages(text: str, expected: TagAnatomy) -> None:
    assert tag_verdict("", text).anatomy is expected
    assert tag_verdict("", "", text).anatomy is expected  # protocol name alike


def test_series_description_before_protocol_name() -> None:
    verdict = tag_verdict("", "LWS lat", "CHEST PA", "")
    assert verdict.anatomy is SPINE and verdict.source is TagSource.SERIES_DESCRIPTION
    verdict = tag_verdict("", "lat", "CHEST PA", "")
    assert verdict.anatomy is OTHER and verdict.source is TagSource.PROTOCOL_NAME


def test_study_description_can_only_say_not_spine() -> None:
    assert tag_verdict("", "", "", "XR CHEST").anatomy is OTHER
    # A spine study may hold a chest image: the image check decides.
    assert tag_verdict("", "", "", "XR LUMBAR SPINE").anatomy is UNKNOWN


def test_reason_names_the_attribute_and_the_vocabulary_word_only() -> None:
    verdict = tag_verdict("", "Mr Smith's chest, please", "", "")
    assert verdict.reason == "Series Description CHEST"
    assert "Smith" not in verdict.reason
    assert tag_verdict("CHEST").reason == "Body Part Examined CHEST"
    assert tag_verdict().reason == "no anatomy in the header"


def test_normalise_text_folds_umlauts_and_accents() -> None:
    assert normalise_text("Wirbelsäule/Becken") == "WIRBELSAEULE BECKEN"
    assert normalise_text("  tórax—PA ") == "TORAX PA"


def test_dataset_verdict_reads_the_four_attributes() -> None:
    ds = Dataset()
    assert dataset_tag_verdict(ds).anatomy is UNKNOWN
    ds.ProtocolName = "Hand PA"
    assert dataset_tag_verdict(ds).anatomy is OTHER
    ds.BodyPartExamined = "LSPINE"
    assert dataset_tag_verdict(ds).anatomy is SPINE

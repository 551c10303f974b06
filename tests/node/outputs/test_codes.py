from __future__ import annotations

import pydicom.sr._concepts_dict as concepts
from pydicom.sr.coding import Code

from spinexr.node.outputs import codes
from spinexr.pipeline.classes import LesionClass


def _dictionary_meanings(code: Code) -> set[str]:
    table = concepts.concepts.get(code.scheme_designator, {})
    return {
        meaning.lower()
        for entry in table.values()
        for value, (meaning, _cids) in entry.items()
        if value == code.value
    }


def test_standard_codes_exist_in_pydicom_dictionary_with_their_meaning() -> None:
    for code in codes.STANDARD_CODES:
        meanings = _dictionary_meanings(code)
        assert meanings, f"{code} is not in pydicom's dictionary"
        assert code.meaning.lower() in meanings, f"{code}: dictionary says {meanings}"


def test_every_lesion_class_has_a_distinct_finding_code() -> None:
    found = [codes.finding_code(c) for c in LesionClass]
    assert len({(c.value, c.scheme_designator) for c in found}) == len(LesionClass)
    for code in found:
        assert code.scheme_designator in {"SCT", codes.PROJECT_SCHEME}
        if code.scheme_designator == "SCT":
            assert code in codes.STANDARD_CODES


def test_project_codes_fit_their_value_representations_and_are_declared() -> None:
    project = [
        v
        for v in vars(codes).values()
        if isinstance(v, Code) and v.scheme_designator == codes.PROJECT_SCHEME
    ]
    project += [c for c in codes.FINDING_CODES.values() if c.scheme_designator == "99SPINEXR"]
    assert len(project) >= 8
    for code in project:
        assert 0 < len(code.value) <= 16 and code.value == code.value.upper()
        assert 0 < len(code.meaning) <= 64
    (item,) = codes.coding_scheme_identification()
    assert item.CodingSchemeDesignator == codes.PROJECT_SCHEME
    assert codes.PROJECT_SCHEME.startswith("99")

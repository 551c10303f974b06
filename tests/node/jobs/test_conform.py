"""Header values the output builders would refuse are repaired in memory, values unlogged."""

from __future__ import annotations

import pytest
from outputs_support import Variant, abnormal_result, make_settings, make_study
from pydicom import config
from pydicom.dataset import Dataset

from spinexr.node.jobs.conform import conform_header
from spinexr.node.outputs.build import build_outputs


def header(**values: str) -> Dataset:
    ds = Dataset()
    with config.disable_value_validation():
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("keyword", "value", "repaired"),
    [
        ("PatientBirthDate", "1931-09-17", "19310917"),
        ("PatientBirthDate", "1931.09.17", "19310917"),
        ("PatientBirthDate", "17/09/1931", ""),  # day first: no valid date, left empty
        ("PatientBirthDate", "unknown", ""),
        ("StudyDate", "2024-02-30", ""),  # no such day
        ("StudyTime", "10:31:07", "103107"),
        ("StudyTime", "25:00", ""),
        ("PatientSex", "f", "F"),
        ("PatientSex", "female", ""),
    ],
)
def test_values_builders_refuse_are_repaired(keyword: str, value: str, repaired: str) -> None:
    ds = header(**{keyword: value})
    assert conform_header(ds) == [keyword]
    assert str(ds.get(keyword)) == repaired


def test_valid_and_empty_values_are_left_alone() -> None:
    ds = header(PatientBirthDate="19310917", StudyDate="", StudyTime="103107.5", PatientSex="O")
    assert conform_header(ds) == []
    assert ds.PatientBirthDate == "19310917" and ds.StudyTime == "103107.5"


def test_a_study_with_a_dashed_birth_date_gets_its_outputs() -> None:
    """Without the repair highdicom refuses the SR (ValueError quoting the birth date)."""
    sources = make_study(3, Variant())
    with config.disable_value_validation():  # new elements, so that setting them is quiet
        for ds in sources:
            del ds.PatientBirthDate, ds.PatientSex
            ds.PatientBirthDate = "1931-09-17"
            ds.PatientSex = "f"
    for ds in sources:
        conform_header(ds)
    built = build_outputs(sources, abnormal_result(sources), make_settings(), job_key="k")
    assert built and all(b.dataset.PatientBirthDate == "19310917" for b in built)

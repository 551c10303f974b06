"""A site's benign / malignant annotation CSV: validator, loader and cases from DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinexr.pipeline.ct.characterise import roi_stack
from spinexr.training.ct.characterise_annotations import (
    cases_from_annotations,
    read_annotations,
    validate_annotations,
)
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_dicom import write_ct_study

HEADER = (
    "patient_id,study_instance_uid,series_instance_uid,level,keypoints_lps,label,truth_source\n"
)


def _points(kp: np.ndarray) -> str:
    return " ".join(f"{v:.4f}" for v in kp.reshape(-1))


def test_a_site_csv_gives_the_cases_the_pipeline_would_make(tmp_path: Path) -> None:
    phantom = make_ct_phantom(6, levels=("T7", "T11"), fractures=())
    study = write_ct_study(tmp_path / "dicom", phantom, distractors=False)
    axial = study.role("axial").series_uid
    t9, t8 = phantom.vertebra("T9").keypoints, phantom.vertebra("T8").keypoints
    csv = tmp_path / "labels.csv"
    csv.write_text(
        HEADER
        + f'P1,{study.study_uid},{axial},T9,"{_points(t9)}",malignant,biopsy\n'
        + f'P2,{study.study_uid},{axial},,"{_points(t8)}",benign,follow_up\n'
    )
    assert validate_annotations(csv) == []
    rows = read_annotations(csv)
    assert [r.malignant for r in rows] == [True, False] and rows[1].level is None
    cases = cases_from_annotations(rows, tmp_path / "dicom")
    assert [c.patient for c in cases] == ["P1", "P2"] and cases[0].malignant
    direct = roi_stack(phantom.hu, phantom.grid.affine(), t9)
    assert np.allclose(cases[0].inputs, direct.inputs, atol=1e-3)


def test_every_problem_is_named_with_its_line(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(
        HEADER
        + "P1,1.2.3,1.2.3.4,T13,,malignant,biopsy\n"  # no such level
        + 'P2,1.2.3,1.2.x,L1,"1 2 3",maybe,rumour\n'  # bad UID, keypoints, label, source
        + ",1.2.3,1.2.3.4,L2,,benign,clinical\n"  # no patient
        + "P3,1.2.3,1.2.3.4,L3,,benign,clinical\n"
        + "P3,1.2.3,1.2.3.4,L3,,malignant,clinical\n"  # the same vertebra twice
        + "P4,1.2.3,1.2.3.4,,,benign,clinical\n"  # neither level nor keypoints
    )
    problems = validate_annotations(csv)
    assert any("line 2: level 'T13'" in p for p in problems)
    assert any("line 7: give keypoints_lps" in p for p in problems)
    assert any("line 3: series_instance_uid is not a UID" in p for p in problems)
    assert any("line 3: keypoints_lps must be 18" in p for p in problems)
    assert any("line 3: label 'maybe'" in p for p in problems)
    assert any("line 3: truth_source 'rumour'" in p for p in problems)
    assert any("line 4: empty patient_id" in p for p in problems)
    assert any("line 6: the same vertebra as line 5" in p for p in problems)
    with pytest.raises(ValueError, match="problem"):
        read_annotations(csv)
    missing = tmp_path / "missing.csv"
    missing.write_text("patient_id,label\nP1,benign\n")
    assert validate_annotations(missing)[0].startswith("line 1: missing column(s)")


def test_a_level_alone_cannot_place_the_roi_yet(tmp_path: Path) -> None:
    csv = tmp_path / "level.csv"
    csv.write_text(HEADER + "P1,1.2.3,1.2.3.4,T9,,benign,follow_up\n")
    rows = read_annotations(csv)
    with pytest.raises(ValueError, match="a level alone cannot place the ROI"):
        cases_from_annotations(rows, tmp_path)

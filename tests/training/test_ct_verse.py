"""The VerSe loader: NIfTI volumes and centroid files in any orientation, grades in both layouts.

A CT phantom is written as VerSe writes a subject (the volume as RAS NIfTI, the centroids in
voxels of the image oriented P, I, R), so the truth is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from spinexr.training.ct.verse import (
    centreline_points,
    find_cases,
    load_case,
    match_to_reference,
    read_grades,
)
from spinexr.training.phantoms.ct import make_ct_phantom

LABELS = {f"T{i}": i + 7 for i in range(1, 13)} | {f"L{i}": i + 19 for i in range(1, 6)}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _write_subject(root: Path, phantom, subject: str = "sub-verse901") -> None:
    image = nib.Nifti1Image(phantom.hu, LPS_TO_RAS @ phantom.grid.affine())
    ras = image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt("RAS")))
    raw = root / "rawdata" / subject
    raw.mkdir(parents=True)
    nib.save(ras, str(raw / f"{subject}_ct.nii.gz"))
    pir = image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt("PIR")))
    inverse = np.linalg.inv(pir.affine)
    items: list[dict] = [{"direction": ["P", "I", "R"]}]
    for v in phantom.vertebrae:
        x, y, z, _ = inverse @ (LPS_TO_RAS @ np.append(v.centre, 1.0))
        items.append({"label": LABELS[v.level], "X": x, "Y": y, "Z": z})
    derivatives = root / "derivatives" / subject
    derivatives.mkdir(parents=True)
    (derivatives / f"{subject}_seg-subreg_ctd.json").write_text(json.dumps(items))


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(8, levels=("T6", "T10"), fractures=())


def test_a_subject_reads_back_in_the_pipeline_orientation(phantom, tmp_path: Path) -> None:
    _write_subject(tmp_path, phantom)
    ((subject, ct, ctd),) = find_cases(tmp_path)
    assert subject == "verse901"
    case = load_case(ct, ctd, {"T8": 2})
    assert case.hu.shape == phantom.hu.shape and np.array_equal(case.hu, phantom.hu)
    assert np.allclose(case.affine, phantom.grid.affine(), atol=1e-4)
    for v in phantom.vertebrae:
        assert np.allclose(case.centroids[v.level], v.centre, atol=1e-3), v.level
    line = centreline_points(case)
    assert len(line) == len(phantom.vertebrae) and np.all(np.diff(line[:, 2]) < 0)
    centres = [phantom.vertebra("T8").centre + 3.0, np.array([0.0, 0.0, 900.0])]
    assert match_to_reference(centres, case) == ["T8", None]
    assert case.grades == {"T8": 2}


def test_grades_in_the_long_and_the_wide_layout(tmp_path: Path) -> None:
    long = tmp_path / "long.csv"
    long.write_text("subject,level,grade\nsub-verse004,T12,2\nsub-verse004,L1,0\n")
    wide = tmp_path / "wide.csv"
    wide.write_text("verse_ID,sex,T12_fx-g,L1_fx-g,L2_fx-g\nverse004,F,3,,0\n")
    assert read_grades(long) == {"verse004": {"T12": 2, "L1": 0}}
    assert read_grades(wide) == {"verse004": {"T12": 3, "L2": 0}}

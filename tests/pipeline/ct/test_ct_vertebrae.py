"""The CT method's steps 2-3 on a phantom: reformat, keypoints back to 3D, heights in 3D.

The detector here is a test double that reports the phantom's true keypoints projected onto
the reformat the pipeline made (what a perfect detector would find), so that what is tested
is the geometry: mapping back to the patient and measuring in 3D. The trained detector is
evaluated end to end by ``python -m spinexr.training.ct.evaluate``.
"""

from __future__ import annotations

import numpy as np
import pytest

from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.reformat import project_xy, sagittal_reformat
from spinexr.pipeline.ct.vertebrae import analyse_ct_volume
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture


class PerfectDetector:
    """Finds exactly the phantom's fully visible vertebrae on whatever reformat it is given."""

    name = "perfect 1"

    def __init__(self, phantom) -> None:
        self.phantom = phantom
        # The reformat the pipeline makes from the same centre points (deterministic).
        self.reformat = sagittal_reformat(phantom.hu, phantom.grid.affine(), phantom.centreline)

    def predict(self, image, spacing_mm):
        out = []
        for v in self.phantom.vertebrae:
            if not v.complete:
                continue
            xy = project_xy(self.reformat, v.keypoints)
            out.append(DetectedObject(kind=ObjectKind.VERTEBRA, score=0.9, keypoints=xy))
        return out


def _run(phantom):
    return analyse_ct_volume(
        phantom.hu,
        phantom.grid.affine(),
        None,
        PerfectDetector(phantom),
        centre_points=phantom.centreline,
    )


def test_heights_are_measured_in_3d_and_grades_follow() -> None:
    fracture = LevelFracture("T8", genant=0.70, deformity=Deformity.WEDGE)
    phantom = make_ct_phantom(21, size="small", levels=("T5", "T10"), fractures=[fracture])
    analysis = _run(phantom)
    truth = [v for v in phantom.vertebrae if v.complete]
    assert len(analysis.vertebrae) == len(truth)
    for found, v in zip(analysis.vertebrae, truth, strict=True):
        # Mapped back, each keypoint is where it was, less its offset from the mid-sagittal
        # plane; the heights, measured between the mapped points, match the truth.
        assert np.linalg.norm(found.keypoints_lps - v.keypoints, axis=1).max() < 2.5
        np.testing.assert_allclose(found.heights_mm, v.heights, atol=0.6)
        assert found.grade is v.grade, (v.level, found.genant_index, v.genant_index)
    t8 = next(f for f, v in zip(analysis.vertebrae, truth, strict=True) if v.level == "T8")
    assert t8.grade is GenantGrade.MODERATE
    assert analysis.worst_grade is GenantGrade.MODERATE
    assert set(analysis.seconds) == {"localisation", "straightening", "detection"}


def test_too_few_spine_slices_is_refused() -> None:
    phantom = make_ct_phantom(22, size="small")
    with pytest.raises(UnsupportedSeriesError) as info:
        analyse_ct_volume(
            phantom.hu,
            phantom.grid.affine(),
            None,
            PerfectDetector(phantom),
            centre_points=np.full((10, 3), np.nan),
            series_instance_uid="1.2.3",
        )
    assert info.value.refusal is CtRefusal.NO_SPINE
    assert info.value.series_instance_uid == "1.2.3"


def test_a_vertebra_cut_by_the_field_of_view_is_not_measured() -> None:
    from spinexr.pipeline.ct.vertebrae import within_volume

    phantom = make_ct_phantom(23, size="small")
    affine, shape = phantom.grid.affine(), phantom.hu.shape
    complete = [v for v in phantom.vertebrae if v.complete]
    partial = [v for v in phantom.vertebrae if not v.complete]
    assert all(within_volume(v.keypoints, shape, affine) for v in complete)
    # The phantom's partly visible end vertebrae reach beyond the first or last slice.
    assert partial and not any(within_volume(v.keypoints, shape, affine) for v in partial)

"""The straightened mid-sagittal reformat the CT keypoint detector reads, and its records."""

from __future__ import annotations

import numpy as np
import pytest

from spinexr.pipeline.ct.reformat import (
    BONE_WINDOW,
    REFORMAT_SPACING_MM,
    REFORMAT_WIDTH_MM,
    reformat_display,
    sagittal_reformat,
)
from spinexr.pipeline.vertebrae import genant
from spinexr.training.ct.keypoints import ct_keypoint_record, gradable
from spinexr.training.phantoms.ct import make_ct_phantom


def test_display_windows_bone_linearly() -> None:
    centre, width = BONE_WINDOW
    hu = np.array([-1024.0, centre - width / 2, centre, centre + width / 2, 3000.0])
    assert reformat_display(hu).tolist() == [0, 0, 128, 255, 255]


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(11, size="small", scoliosis=True)


def test_reformat_shows_every_vertebra_anterior_left(phantom) -> None:
    image = sagittal_reformat(phantom.hu, phantom.grid.affine(), phantom.centreline)
    rows, columns = image.image.shape
    assert columns == pytest.approx(REFORMAT_WIDTH_MM / REFORMAT_SPACING_MM, abs=2)
    display = reformat_display(image.image)
    for vertebra in (v for v in phantom.vertebrae if v.complete):
        rc = image.from_patient(vertebra.keypoints)
        assert (rc[:, 0] > 0).all() and (rc[:, 0] < rows).all()
        # Anterior keypoints (0, 1) left of the posterior ones (4, 5).
        assert rc[[0, 1], 1].mean() < rc[[4, 5], 1].mean()
        r, c = (round(float(v)) for v in rc.mean(axis=0))
        body = display[r - 2 : r + 3, c - 2 : c + 3].mean()
        soft = display[r - 2 : r + 3, 2:7].mean()  # far anterior: soft tissue or air
        assert body > soft + 10, (vertebra.level, body, soft)  # cancellous > soft tissue
        # Mapped back to the patient, the keypoints are where they were, less their offset
        # from the mid-sagittal plane (the image has none; at most ~1.5 mm with scoliosis).
        back = image.to_patient(rc)
        assert np.linalg.norm(back - vertebra.keypoints, axis=1).max() < 2.5, vertebra.level


def test_records_annotate_the_gradable_vertebrae_with_their_heights(phantom) -> None:
    record = ct_keypoint_record(phantom, rng=np.random.default_rng(0))
    complete = [v for v in phantom.vertebrae if v.complete]
    assert [o.level for o in record.objects] == [v.level for v in gradable(phantom)]
    assert record.spacing_mm == (REFORMAT_SPACING_MM, REFORMAT_SPACING_MM)
    assert record.display.dtype == np.uint8
    for obj, truth in zip(record.objects, complete, strict=True):
        heights = np.asarray(genant.heights(obj.keypoints)) * REFORMAT_SPACING_MM
        # The image's heights carry the straightening's distortion (a few per cent).
        np.testing.assert_allclose(heights, truth.heights, rtol=0.15, atol=1.0)


def test_a_head_has_no_record() -> None:
    from spinexr.training.phantoms.ct import make_head_phantom

    with pytest.raises(ValueError, match="no vertebrae"):
        ct_keypoint_record(make_head_phantom(1))

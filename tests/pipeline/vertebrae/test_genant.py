"""Heights, Genant index, grades and deformity types from six keypoints."""

from __future__ import annotations

import numpy as np
import pytest

from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantCutoffs, GenantGrade


def body(
    h_a: float, h_m: float, h_p: float, *, x0: float = 10.0, depth: float = 40.0
) -> np.ndarray:
    """Six keypoints of an upright body whose bottom end plate is the row 100."""
    mid = x0 + depth / 2
    return np.array(
        [
            (x0, 100 - h_a),
            (x0, 100),
            (mid, 100 - h_m),
            (mid, 100),
            (x0 + depth, 100 - h_p),
            (x0 + depth, 100),
        ]
    )


def test_heights_in_pixels_and_mm() -> None:
    kp = body(20, 25, 30)
    assert genant.heights(kp) == pytest.approx((20, 25, 30))
    assert genant.heights(kp, (0.5, 2.0)) == pytest.approx((10, 12.5, 15))


def test_heights_follow_a_tilted_segment() -> None:
    kp = body(30, 30, 30)
    kp[0] = (kp[1][0] + 18, kp[1][1] - 24)  # anterior top moved: segment of length 30
    assert genant.heights(kp)[0] == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("g", "grade"),
    [
        (0.95, GenantGrade.NORMAL),
        (0.801, GenantGrade.NORMAL),
        (0.80, GenantGrade.MILD),
        (0.76, GenantGrade.MILD),
        (0.75, GenantGrade.MODERATE),
        (0.61, GenantGrade.MODERATE),
        (0.60, GenantGrade.SEVERE),
        (0.2, GenantGrade.SEVERE),
    ],
)
def test_grade_cut_offs_are_inclusive_upper_bounds(g: float, grade: GenantGrade) -> None:
    assert genant.grade(g) is grade


def test_site_cut_offs_move_the_grades() -> None:
    strict = GenantCutoffs(mild=0.85, moderate=0.75, severe=0.60)
    assert genant.grade(0.83, strict) is GenantGrade.MILD
    assert genant.grade(0.83) is GenantGrade.NORMAL
    with pytest.raises(ValueError, match="severe < moderate < mild"):
        GenantCutoffs(mild=0.7, moderate=0.75, severe=0.6)


@pytest.mark.parametrize(
    ("h", "kind"),
    [
        ((20, 27, 30), Deformity.WEDGE),
        ((30, 20, 29), Deformity.BICONCAVE),
        ((29, 27, 20), Deformity.CRUSH),
        ((30, 29, 28.5), Deformity.NONE),
    ],
)
def test_deformity_is_the_shortest_height(h: tuple[float, float, float], kind: Deformity) -> None:
    assert genant.deformity(h) is kind


def test_index_and_worst() -> None:
    assert genant.genant_index((20, 25, 40)) == pytest.approx(0.5)
    assert genant.genant_index((0, 0, 0)) == 0.0
    assert genant.worst([GenantGrade.MILD, GenantGrade.SEVERE, GenantGrade.NORMAL]) is (
        GenantGrade.SEVERE
    )
    assert genant.worst([]) is GenantGrade.NORMAL
    assert [g.number for g in GenantGrade] == [0, 1, 2, 3]


def test_flips_swap_the_right_points() -> None:
    kp = body(20, 25, 30)
    flipped = kp.copy()
    flipped[:, 0] = 100 - flipped[:, 0]
    flipped = flipped[list(genant.FLIP_HORIZONTAL)]
    # After a left-right flip and re-indexing, the anterior height is the old posterior one.
    assert genant.heights(flipped) == pytest.approx((30, 25, 20))
    up = kp.copy()
    up[:, 1] = 200 - up[:, 1]
    up = up[list(genant.FLIP_VERTICAL)]
    assert (up[0::2, 1] < up[1::2, 1]).all()  # tops above bottoms again


def test_bad_keypoints_are_refused() -> None:
    with pytest.raises(ValueError, match="six"):
        genant.as_keypoints(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        genant.as_keypoints(np.full((6, 2), np.nan))

"""Level names only where the sacrum fixes the count."""

from __future__ import annotations

import numpy as np

from spinexr.pipeline.vertebrae.findings import LevelRule
from spinexr.pipeline.vertebrae.levels import assign_levels
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind

HEIGHT, PITCH, DEPTH = 30.0, 40.0, 45.0


def box_object(
    top: float, *, kind: ObjectKind = ObjectKind.VERTEBRA, x0: float = 100.0, score: float = 0.9
) -> DetectedObject:
    mid = x0 + DEPTH / 2
    kp = np.array(
        [
            (x0, top),
            (x0, top + HEIGHT),
            (mid, top),
            (mid, top + HEIGHT),
            (x0 + DEPTH, top),
            (x0 + DEPTH, top + HEIGHT),
        ]
    )
    return DetectedObject(kind, score, kp)


def column(n: int, *, first: float = 20.0) -> list[DetectedObject]:
    return [box_object(first + k * PITCH) for k in range(n)]


def test_sacrum_below_the_lowest_vertebra_names_it_l5() -> None:
    vertebrae = column(6)
    s1 = box_object(20.0 + 6 * PITCH, kind=ObjectKind.SACRUM)
    rule, named = assign_levels([s1, *reversed(vertebrae)])
    assert rule is LevelRule.SACRUM
    assert [lvl for _, lvl in named] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert [o.centre[1] for o, _ in named] == sorted(o.centre[1] for o in vertebrae)


def test_without_sacrum_no_level_is_claimed() -> None:
    rule, named = assign_levels(column(5))
    assert rule is LevelRule.FROM_TOP
    assert [lvl for _, lvl in named] == [None] * 5


def test_a_weak_or_distant_sacrum_is_no_anchor() -> None:
    weak = box_object(20.0 + 5 * PITCH, kind=ObjectKind.SACRUM, score=0.3)
    far = box_object(20.0 + 8 * PITCH, kind=ObjectKind.SACRUM)
    aside = box_object(20.0 + 5 * PITCH, kind=ObjectKind.SACRUM, x0=300.0)
    for s1 in (weak, far, aside):
        rule, _ = assign_levels([*column(5), s1])
        assert rule is LevelRule.FROM_TOP


def test_one_vertebra_gets_no_level() -> None:
    rule, named = assign_levels(
        [box_object(20.0), box_object(20.0 + PITCH, kind=ObjectKind.SACRUM)]
    )
    assert rule is LevelRule.FROM_TOP
    assert named[0][1] is None


def test_counting_stops_at_a_missed_vertebra() -> None:
    vertebrae = column(6)
    del vertebrae[2]  # a gap of two pitches between the second and third remaining
    s1 = box_object(20.0 + 6 * PITCH, kind=ObjectKind.SACRUM)
    rule, named = assign_levels([*vertebrae, s1])
    assert rule is LevelRule.SACRUM
    assert [lvl for _, lvl in named] == [None, None, "L3", "L4", "L5"]

"""Fusion rule at its boundaries, the averaging counterpart, display flags, study level."""

from __future__ import annotations

import pytest

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.fusion import (
    BOX_KEEP_SCORE,
    averaged_probability,
    fuse_image,
    keep_boxes,
    mark_displayed,
    summarise_study,
)
from spinexr.pipeline.results import Box, FusionMode, ImageError, ImageResult, Outcome

C = 0.2808


def box(score: float, label: LesionClass = LesionClass.OSTEOPHYTES) -> Box:
    return Box(label=label, score=score, xmin=1, ymin=2, xmax=30, ymax=40)


SCORES = [0.9, 0.5, 0.4999, 0.1, 0.0]


def scores(boxes: list[Box]) -> list[float]:
    return [b.score for b in boxes]


def test_probability_at_threshold_keeps_every_box() -> None:
    assert scores(keep_boxes(C, C, [box(s) for s in SCORES])) == SCORES


def test_probability_just_below_threshold_keeps_only_confident_boxes() -> None:
    kept = keep_boxes(C - 1e-9, C, [box(s) for s in SCORES])
    assert scores(kept) == [0.9, 0.5]  # 0.5 kept (inclusive), 0.4999 dropped
    assert BOX_KEEP_SCORE == 0.5


def test_no_boxes() -> None:
    assert keep_boxes(0.9, C, []) == [] and keep_boxes(0.0, C, []) == []


def test_display_threshold_flags_without_dropping() -> None:
    marked = mark_displayed([box(s) for s in SCORES], 0.4999)
    assert [b.displayed for b in marked] == [True, True, True, False, False]
    assert scores(marked) == SCORES


def test_fuse_image_paper_mode() -> None:
    boxes = [box(0.1), box(0.7), box(0.3)]
    below = fuse_image(0.2, boxes, threshold=C, display_threshold=0.25)
    assert below.probability == 0.2 and below.decision is False
    assert scores(below.boxes) == [0.7] and below.boxes[0].displayed
    above = fuse_image(0.5, boxes, threshold=C, display_threshold=0.25)
    assert above.decision is True
    assert scores(above.boxes) == [0.7, 0.3, 0.1]  # sorted, highest first
    assert [b.displayed for b in above.boxes] == [True, True, False]


def test_averaging_uses_the_highest_box_and_zero_without_boxes() -> None:
    assert averaged_probability(0.4, [box(0.2), box(0.8)]) == pytest.approx(0.6)
    assert averaged_probability(0.4, []) == pytest.approx(0.2)
    # continuity: a negligible box changes almost nothing compared to no box
    assert averaged_probability(0.4, [box(1e-6)]) == pytest.approx(0.2, abs=1e-6)


def test_fuse_image_average_mode_decides_on_the_fused_probability() -> None:
    # p = 0.2 < c*, but (0.2 + 0.45) / 2 = 0.325 ≥ c*: all boxes kept, image abnormal.
    fused = fuse_image(
        0.2,
        [box(0.45), box(0.1)],
        threshold=C,
        display_threshold=0.0,
        mode=FusionMode.PAPER_AVERAGE,
    )
    assert fused.probability == pytest.approx(0.325) and fused.decision is True
    assert scores(fused.boxes) == [0.45, 0.1]
    # a clean detector output halves p: 0.5 → 0.25 < c*
    clean = fuse_image(0.5, [], threshold=C, display_threshold=0.0, mode=FusionMode.PAPER_AVERAGE)
    assert clean.probability == pytest.approx(0.25) and clean.decision is False


def image(
    probability: float | None, boxes: list[Box] | None = None, reason: str = ""
) -> ImageResult:
    if probability is None:
        return ImageResult(sop_instance_uid="1.2.3.9", error=ImageError(reason=reason, message="x"))
    return ImageResult(
        sop_instance_uid=f"1.2.3.{int(probability * 1000)}",
        classifier_probability=probability,
        probability=probability,
        decision=probability >= C,
        boxes=boxes or [],
    )


def test_study_probability_is_the_max_over_images() -> None:
    s = summarise_study([image(0.1), image(0.25), image(None, reason="too_small")], C)
    assert s.probability == 0.25 and s.decision is False
    assert s.outcome is Outcome.NO_FINDING and s.flagged_classes == []


def test_study_abnormal_at_threshold_and_flags_displayed_classes_only() -> None:
    shown = box(0.6, LesionClass.VERTEBRAL_COLLAPSE)
    hidden = box(0.1, LesionClass.SURGICAL_IMPLANT).model_copy(update={"displayed": False})
    s = summarise_study([image(C, [hidden, shown]), image(0.05)], C)
    assert s.decision is True and s.outcome is Outcome.ABNORMAL
    assert s.flagged_classes == [LesionClass.VERTEBRAL_COLLAPSE]


def test_displayed_box_makes_the_outcome_abnormal_below_threshold() -> None:
    s = summarise_study([image(0.1, [box(0.7, LesionClass.OSTEOPHYTES)])], C)
    assert s.decision is False and s.outcome is Outcome.ABNORMAL
    assert s.flagged_classes == [LesionClass.OSTEOPHYTES]


def test_study_fails_when_no_image_was_analysed() -> None:
    s = summarise_study([image(None, reason="multi_frame"), image(None, reason="too_small")], C)
    assert s.outcome is Outcome.FAILED and s.probability is None and s.decision is None
    assert s.failure_reason is not None
    assert "multi_frame" in s.failure_reason and "too_small" in s.failure_reason
    empty = summarise_study([], C)
    assert empty.outcome is Outcome.FAILED and "no images" in str(empty.failure_reason)

"""Decision fusion of the classifier and the detector (``method.md`` section 6).

The paper's rule, with p the image probability and c* the operating threshold:

- ``p ≥ c*``: keep every detector box;
- ``p < c*``: keep only boxes with score ``≥ 0.5`` (`BOX_KEEP_SCORE`).

Optional counterpart (`FusionMode.PAPER_AVERAGE`): the image probability becomes
``(p + s_max) / 2`` with s_max the highest box score of the detector, **0 when it found no
box**. Zero keeps the fused probability continuous and monotone in the box scores (an image
with one box of score 0.01 must not score lower than the same image with no box), and lets a
clean detector output pull p down, as the paper's averaging intends. The box rule then uses
the fused probability, so an image called abnormal always shows all its kept boxes; c* must
have been fitted for the bundle's mode.

The display threshold is separate: boxes below it stay in the result (the SR may list them)
with ``displayed = False``; builders that draw boxes use the displayed ones.

Study level: probability = max over analysed images (Li et al.), decision at c*, and a class is
flagged when any displayed box has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.ct.findings import CtAnalysis
from spinexr.pipeline.results import Box, FusionMode, ImageResult, Outcome

BOX_KEEP_SCORE: Final = 0.5
"""Below c*, boxes scoring at least this are kept (inclusive)."""


@dataclass(frozen=True)
class FusedImage:
    """Fusion output for one image.

    Attributes
    ----------
    probability : float
        Image probability used for the decision.
    decision : bool
        ``probability ≥ threshold``.
    boxes : list of Box
        Kept boxes, highest score first, each with its ``displayed`` flag.
    """

    probability: float
    decision: bool
    boxes: list[Box]


@dataclass(frozen=True)
class StudySummary:
    """Study-level conclusion from the image results.

    Attributes
    ----------
    outcome : Outcome
        ``ABNORMAL`` if the decision is positive or any box is displayed, ``NO_FINDING``
        otherwise, ``FAILED`` if no image was analysed.
    probability : float or None
        Max over analysed images.
    decision : bool or None
        ``probability ≥ threshold``.
    flagged_classes : list of LesionClass
        Classes with a displayed box, in class-id order.
    failure_reason : str or None
        Set when the outcome is ``FAILED``.
    """

    outcome: Outcome
    probability: float | None
    decision: bool | None
    flagged_classes: list[LesionClass]
    failure_reason: str | None


def keep_boxes(probability: float, threshold: float, boxes: Sequence[Box]) -> list[Box]:
    """Apply the paper's fusion rule.

    Parameters
    ----------
    probability : float
        Image probability p.
    threshold : float
        Operating threshold c*.
    boxes : sequence of Box
        Detector boxes.

    Returns
    -------
    list of Box
        All boxes if ``p ≥ c*``, else those with ``score ≥ 0.5``; order preserved.
    """
    if probability >= threshold:
        return list(boxes)
    return [b for b in boxes if b.score >= BOX_KEEP_SCORE]


def averaged_probability(probability: float, boxes: Sequence[Box]) -> float:
    """Return ``(p + highest box score) / 2``, the highest score being 0 with no box.

    Parameters
    ----------
    probability : float
        Classifier probability p.
    boxes : sequence of Box
        All detector boxes of the image (before the fusion rule).

    Returns
    -------
    float
        The fused probability.
    """
    top = max((b.score for b in boxes), default=0.0)
    return (probability + top) / 2.0


def mark_displayed(boxes: Sequence[Box], display_threshold: float) -> list[Box]:
    """Set ``displayed = score ≥ display_threshold`` on each box (copies).

    Parameters
    ----------
    boxes : sequence of Box
        Boxes.
    display_threshold : float
        Lowest displayed score (inclusive).

    Returns
    -------
    list of Box
        Copies with the flag set, same order.
    """
    return [b.model_copy(update={"displayed": b.score >= display_threshold}) for b in boxes]


def fuse_image(
    classifier_probability: float,
    boxes: Sequence[Box],
    *,
    threshold: float,
    display_threshold: float,
    mode: FusionMode = FusionMode.PAPER,
) -> FusedImage:
    """Combine the classifier probability and the detector boxes of one image.

    Parameters
    ----------
    classifier_probability : float
        Ensemble probability p.
    boxes : sequence of Box
        Detector boxes in original pixels.
    threshold : float
        c*, fitted for `mode`.
    display_threshold : float
        Lowest displayed box score.
    mode : FusionMode
        ``paper`` or ``paper+average``.

    Returns
    -------
    FusedImage
        Probability, decision and kept boxes (highest score first).
    """
    if mode is FusionMode.PAPER_AVERAGE:
        probability = averaged_probability(classifier_probability, boxes)
    else:
        probability = float(classifier_probability)
    kept = sorted(keep_boxes(probability, threshold, boxes), key=lambda b: -b.score)
    return FusedImage(
        probability=probability,
        decision=probability >= threshold,
        boxes=mark_displayed(kept, display_threshold),
    )


def summarise_study(
    images: Sequence[ImageResult], threshold: float, ct: CtAnalysis | None = None
) -> StudySummary:
    """Conclude at study level from the image results and the CT analysis.

    The study is ``ABNORMAL`` when the decision is positive, a box is displayed, or a
    vertebra (on a radiograph or on the CT) is graded mild or worse (Genant grade ≥ 1 is a
    fracture). It is ``FAILED`` only when neither a radiograph nor a CT series could be
    analysed; the probability and decision are the radiographs' (None without one).

    Parameters
    ----------
    images : sequence of ImageResult
        All radiographs of the study, failed ones included.
    threshold : float
        c*.
    ct : CtAnalysis, optional
        The study's CT analysis (None without CT images).

    Returns
    -------
    StudySummary
        Outcome, max probability, decision and flagged classes.
    """
    analysed = [im for im in images if im.probability is not None]
    ct_analysed = ct is not None and ct.analysed
    if not analysed and not ct_analysed:
        reasons = sorted({im.error.reason for im in images if im.error is not None})
        parts = [f"no image could be analysed: {', '.join(reasons)}"] if reasons else []
        if ct is not None:
            parts.append(f"CT not analysed: {ct.reason}: {ct.message}")
        none = "no image could be analysed: the study has no images"
        detail = "; ".join(parts) if parts else none
        return StudySummary(Outcome.FAILED, None, None, [], detail)
    probability = (
        max(float(im.probability) for im in analysed if im.probability is not None)
        if analysed
        else None
    )
    decision = None if probability is None else probability >= threshold
    flagged = sorted({b.label for im in analysed for b in im.displayed_boxes})
    fractured = any(
        v.fractured for im in analysed if im.vertebrae is not None for v in im.vertebrae.vertebrae
    ) or (ct is not None and ct.fractured)
    outcome = Outcome.ABNORMAL if decision or flagged or fractured else Outcome.NO_FINDING
    return StudySummary(outcome, probability, decision, flagged, None)

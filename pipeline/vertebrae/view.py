"""Which images are lateral views: the header first, else the bundle's image model.

Vertebral fractures are graded on lateral views only. ``ViewPosition`` (PS3.3 C.8.11.5;
defined terms AP, PA, LL, RL, RLD, LLD, RLO, LLO, plus the ``LATERAL`` / ``LAT`` some
modalities write) decides when present; then the View Code Sequence (CID 4010 codes, by
code or by meaning); many modalities leave both empty, and then the anatomy model's
``spine_lateral`` and ``spine_ap`` probabilities decide (lateral when the lateral share of the
two is at least 0.5). The decision, its source and the score go into the result.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.dataset import Dataset

from spinexr.pipeline.anatomy import AnatomyClass
from spinexr.pipeline.vertebrae.findings import ViewSource


class View(enum.StrEnum):
    """Projection of a radiograph as far as the fracture analysis is concerned."""

    LATERAL = "lateral"
    AP = "ap"
    OBLIQUE = "oblique"
    UNKNOWN = "unknown"


_POSITIONS: dict[str, View] = {
    "LL": View.LATERAL,
    "RL": View.LATERAL,
    "LATERAL": View.LATERAL,
    "LAT": View.LATERAL,
    "AP": View.AP,
    "PA": View.AP,
    "RLD": View.AP,  # decubitus frontal views
    "LLD": View.AP,
    "RLO": View.OBLIQUE,
    "LLO": View.OBLIQUE,
}

_LATERAL_CODES = {"399173006", "399198007", "260436000"}
"""SCT left lateral, right lateral, lateral (CID 4010)."""

_AP_CODES = {"399348003", "399300004"}
"""SCT antero-posterior, postero-anterior (CID 4010)."""


@dataclass(frozen=True)
class ViewDecision:
    """The projection decided for an image.

    Attributes
    ----------
    view : View
        The decision.
    source : ViewSource
        Where it came from.
    detail : str
        Human-readable: the tag value or the score.
    score : float or None
        The image model's lateral share when it was consulted.
    """

    view: View
    source: ViewSource
    detail: str
    score: float | None = None


def view_from_header(ds: Dataset) -> ViewDecision:
    """Decide the view from ViewPosition, then the View Code Sequence.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image header.

    Returns
    -------
    ViewDecision
        ``unknown`` with source ``none`` when the header says nothing usable.
    """
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in _POSITIONS:
        return ViewDecision(
            _POSITIONS[position], ViewSource.VIEW_POSITION, f"ViewPosition {position}"
        )
    for item in ds.get("ViewCodeSequence", None) or []:
        value = str(item.get("CodeValue", "") or "")
        meaning = str(item.get("CodeMeaning", "") or "").lower()
        if value in _LATERAL_CODES or ("lateral" in meaning and "oblique" not in meaning):
            return ViewDecision(View.LATERAL, ViewSource.VIEW_CODE, f"view code {meaning or value}")
        if value in _AP_CODES or "anterior" in meaning or "frontal" in meaning:
            return ViewDecision(View.AP, ViewSource.VIEW_CODE, f"view code {meaning or value}")
        if "oblique" in meaning:
            return ViewDecision(View.OBLIQUE, ViewSource.VIEW_CODE, f"view code {meaning}")
    return ViewDecision(View.UNKNOWN, ViewSource.NONE, "no view in the header")


def view_from_scores(scores: Mapping[str, float]) -> ViewDecision:
    """Decide lateral or AP from the anatomy model's probabilities.

    Parameters
    ----------
    scores : mapping of str to float
        ``spine_ap``, ``spine_lateral`` and ``other`` probabilities.

    Returns
    -------
    ViewDecision
        Lateral when ``p_lateral / (p_lateral + p_ap) ≥ 0.5``; unknown when both are 0.
    """
    lateral = float(scores.get(AnatomyClass.SPINE_LATERAL.value, 0.0))
    ap = float(scores.get(AnatomyClass.SPINE_AP.value, 0.0))
    if lateral + ap <= 0.0:
        return ViewDecision(View.UNKNOWN, ViewSource.IMAGE_MODEL, "image model: no spine view")
    share = lateral / (lateral + ap)
    view = View.LATERAL if share >= 0.5 else View.AP
    return ViewDecision(view, ViewSource.IMAGE_MODEL, f"image model: lateral {share:.2f}", share)

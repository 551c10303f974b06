"""Lateral or not: ViewPosition, the View Code Sequence, then the image model."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from spinexr.pipeline.vertebrae.findings import ViewSource
from spinexr.pipeline.vertebrae.view import View, view_from_header, view_from_scores


def header(position: str | None = None, code: tuple[str, str] | None = None) -> Dataset:
    ds = Dataset()
    if position is not None:
        ds.ViewPosition = position
    if code is not None:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "SCT", code[1]
        ds.ViewCodeSequence = [item]
    return ds


@pytest.mark.parametrize(
    ("position", "view"),
    [
        ("LL", View.LATERAL),
        ("RL", View.LATERAL),
        ("LATERAL", View.LATERAL),
        ("AP", View.AP),
        ("PA", View.AP),
        ("LLO", View.OBLIQUE),
    ],
)
def test_view_position_decides(position: str, view: View) -> None:
    decision = view_from_header(header(position))
    assert decision.view is view
    assert decision.source is ViewSource.VIEW_POSITION


def test_view_code_when_position_is_empty() -> None:
    decision = view_from_header(header("", ("399173006", "left lateral")))
    assert (decision.view, decision.source) == (View.LATERAL, ViewSource.VIEW_CODE)
    decision = view_from_header(header(None, ("399348003", "antero-posterior")))
    assert decision.view is View.AP


def test_nothing_in_the_header_is_unknown() -> None:
    assert view_from_header(header()).view is View.UNKNOWN


def test_image_model_share_decides() -> None:
    lat = view_from_scores({"spine_ap": 0.1, "spine_lateral": 0.7, "other": 0.2})
    assert lat.view is View.LATERAL and lat.score == pytest.approx(0.875)
    assert lat.source is ViewSource.IMAGE_MODEL
    assert view_from_scores({"spine_ap": 0.6, "spine_lateral": 0.3, "other": 0.1}).view is View.AP
    assert view_from_scores({"other": 1.0}).view is View.UNKNOWN

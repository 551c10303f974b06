from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    dciodvfy_errors,
    make_study,
    write_object,
)
from pydicom.dataset import Dataset
from testsupport import require_tool
from vertebrae_outputs_support import (
    AP_NOT_LATERAL,
    GRADED_HEIGHTS,
    lateral_analysis,
    not_analysed,
    with_vertebrae,
)

from spinexr.node.outputs.gsps import CLASS_LAYERS, SUMMARY_LAYER, build_gsps
from spinexr.node.outputs.render import layer_colours, render_preview
from spinexr.node.outputs.vertebrae_gsps import (
    GRADE_COLOURS,
    GRADE_LAYERS,
    STATUS_LAYER,
    label_box,
    vertebra_label,
)
from spinexr.node.outputs.vertebrae_tracking import vertebra_trackings
from spinexr.node.settings import Settings
from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.vertebrae.findings import VertebralStatus
from spinexr.pipeline.vertebrae.genant import GenantGrade

VARIANTS = {
    "cr-mono2": Variant(),
    "dx-mono1": Variant(photometric="MONOCHROME1", sop_class="DX"),
}


def _study(variant: Variant, **lateral: bool) -> tuple[list[Dataset], StudyResult]:
    sources = make_study(51, variant)
    result = with_vertebrae(
        abnormal_result(sources), [AP_NOT_LATERAL, lateral_analysis(sources[1], **lateral)]
    )
    return sources, result


def _gsps(source: Dataset, result: StudyResult, settings: Settings) -> Dataset:
    return build_gsps(
        source, result, settings, series_uid=f"{UID_ROOT}.6.1", sop_uid=f"{UID_ROOT}.6.2"
    )


def _layer_objects(ps: Dataset, layer: str, keyword: str) -> list[Dataset]:
    return [
        obj
        for ann in ps.GraphicAnnotationSequence
        if ann.GraphicLayer == layer
        for obj in ann.get(keyword, [])
    ]


@pytest.mark.parametrize("name", VARIANTS)
def test_vertebral_gsps_passes_dciodvfy_and_dcmpschk(
    name: str, settings: Settings, tmp_path: Path
) -> None:
    dcmpschk = require_tool("dcmpschk")
    sources, result = _study(VARIANTS[name])
    numbered = with_vertebrae(
        result, [None, lateral_analysis(sources[1], levels=False, spacing=False)]
    )
    for number, (source, res) in enumerate(
        [(sources[0], result), (sources[1], result), (sources[1], numbered)]
    ):
        path = write_object(_gsps(source, res, settings), tmp_path / f"ps{number}.dcm")
        errors, warnings = dciodvfy_errors(path)
        assert errors == [] and warnings == [], (name, number, errors, warnings)
        check = subprocess.run([dcmpschk, str(path)], capture_output=True, text=True)
        lines = (check.stdout + check.stderr).splitlines()
        assert [ln for ln in lines if ln.startswith("E:")] == [], lines
        assert any("Test passed" in ln for ln in lines), lines


def test_one_layer_per_grade_coloured_and_fractures_on_top(settings: Settings) -> None:
    sources, result = _study(VARIANTS["cr-mono2"])
    ps = _gsps(sources[1], result, settings)
    orders = {
        str(layer.GraphicLayer): int(layer.GraphicLayerOrder) for layer in ps.GraphicLayerSequence
    }
    grade_orders = [orders[GRADE_LAYERS[g]] for g in GenantGrade]
    assert grade_orders == sorted(grade_orders)
    others = [orders[n] for n in (*CLASS_LAYERS.values(), SUMMARY_LAYER) if n in orders]
    assert min(grade_orders) > max(others)
    assert len(set(orders.values())) == len(orders)
    colours = layer_colours(ps)
    for grade, rgb in GRADE_COLOURS.items():
        assert np.abs(np.subtract(colours[GRADE_LAYERS[grade]], rgb)).max() <= 2, grade


def test_three_height_lines_and_a_label_per_vertebra_tracked_like_the_sr(
    settings: Settings,
) -> None:
    sources, result = _study(VARIANTS["cr-mono2"])
    ps = _gsps(sources[1], result, settings)
    rows, cols = int(sources[1].Rows), int(sources[1].Columns)
    for tracking in vertebra_trackings(result, UID_ROOT):
        v = tracking.vertebra
        layer = GRADE_LAYERS[v.grade]
        lines = [
            g
            for g in _layer_objects(ps, layer, "GraphicObjectSequence")
            if g.TrackingUID == tracking.uid
        ]
        assert [
            (g.GraphicType, g.NumberOfGraphicPoints, g.GraphicAnnotationUnits) for g in lines
        ] == [("POLYLINE", 2, "PIXEL")] * 3
        np.testing.assert_allclose(
            np.asarray([g.GraphicData for g in lines], dtype=float).reshape(-1, 2),
            np.asarray(v.keypoints),
            atol=1e-3,
        )
        (label,) = [
            t
            for t in _layer_objects(ps, layer, "TextObjectSequence")
            if t.TrackingUID == tracking.uid
        ]
        assert label.UnformattedTextValue == vertebra_label(v)
        assert label.TrackingID == tracking.identifier
        left, top, right, bottom = label_box(v, rows, cols)
        assert 0 <= left < right <= cols and 0 <= top < bottom <= rows
        assert right <= min(x for x, _ in v.keypoints[:2])  # anterior side (faces left)
        assert top <= np.mean([y for _, y in v.keypoints[:2]]) <= bottom


def test_labels_name_the_level_or_the_number() -> None:
    sources = make_study(52, Variant())
    with_levels = lateral_analysis(sources[1])
    numbered = lateral_analysis(sources[1], levels=False)
    assert [vertebra_label(v) for v in with_levels.vertebrae[:4]] == [
        "L1 G 1.00 normal",
        "L2 G 0.78 mild wedge",
        "L3 G 0.69 moderate biconcave",
        "L4 G 0.50 severe crush",
    ]
    assert vertebra_label(numbered.vertebrae[0]) == "#1 G 1.00 normal"


def test_label_stays_inside_and_moves_posterior_when_there_is_no_room() -> None:
    sources = make_study(53, Variant())
    v = lateral_analysis(sources[1]).vertebrae[3]
    shifted = v.model_copy(update={"keypoints": [(x - 148.0, y) for x, y in v.keypoints]})
    left, _, right, bottom = label_box(shifted, 512, 384)
    assert left >= max(x for x, _ in shifted.keypoints)  # beside the posterior height
    assert right <= 384 and bottom <= 512


def test_image_not_analysed_shows_why(settings: Settings) -> None:
    sources, result = _study(VARIANTS["cr-mono2"])
    ps = _gsps(sources[0], result, settings)
    (text,) = _layer_objects(ps, STATUS_LAYER, "TextObjectSequence")
    assert text.UnformattedTextValue == (
        "not analysed for vertebral fractures: AP view (ViewPosition AP)"
    )
    assert not any(
        n in {str(x.GraphicLayer) for x in ps.GraphicLayerSequence} for n in GRADE_LAYERS.values()
    )
    small = with_vertebrae(
        result, [not_analysed(VertebralStatus.TOO_SMALL, "image too small"), None]
    )
    ps = _gsps(sources[0], small, settings)
    (text,) = _layer_objects(ps, STATUS_LAYER, "TextObjectSequence")
    assert text.UnformattedTextValue.endswith("image too small")
    bare = with_vertebrae(result, [None, None])
    layers = {str(x.GraphicLayer) for x in _gsps(sources[1], bare, settings).GraphicLayerSequence}
    assert STATUS_LAYER not in layers and not layers & set(GRADE_LAYERS.values())


@pytest.mark.parametrize("name", VARIANTS)
def test_preview_draws_the_height_lines_on_the_keypoints(name: str, settings: Settings) -> None:
    sources, result = _study(VARIANTS[name])
    lateral = sources[1]
    ps = _gsps(lateral, result, settings)
    rgb = render_preview(lateral, ps, max_size=None, line_width=1)
    colours = layer_colours(ps)
    trackings = vertebra_trackings(result, UID_ROOT)
    assert len(trackings) == len(GRADED_HEIGHTS)
    for tracking in trackings:
        v = tracking.vertebra
        colour = colours[GRADE_LAYERS[v.grade]]
        for x, y in v.keypoints:
            assert tuple(rgb[math.floor(y), math.floor(x)]) == colour, (v.label, x, y)
        # Halfway along the middle height, and a grey pixel inside the body off the lines.
        (x0, y0), (x1, y1) = v.keypoints[2], v.keypoints[3]
        assert tuple(rgb[math.floor((y0 + y1) / 2), math.floor((x0 + x1) / 2)]) == colour
        r, g, b = (int(c) for c in rgb[math.floor((y0 + y1) / 2), math.floor(x0) + 8])
        assert r == g == b, (v.label, (r, g, b))

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    dciodvfy_errors,
    failed_result,
    make_study,
    normal_result,
    write_object,
)
from pydicom.dataset import Dataset
from testsupport import require_tool

from spinexr.node.outputs.gsps import CLASS_LAYERS, SUMMARY_LAYER, build_gsps, label_box
from spinexr.node.outputs.provenance import box_trackings
from spinexr.node.outputs.sr import build_sr
from spinexr.node.settings import Settings
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.spacing import read_pixel_spacing

VARIANTS = {
    "cr-mono2-window": Variant(),
    "dx-mono1-window": Variant(photometric="MONOCHROME1", sop_class="DX"),
    "cr-mono1-lut": Variant(photometric="MONOCHROME1", voi_lut_sequence=True, window=False),
    "dx-mono2-window+lut": Variant(sop_class="DX", voi_lut_sequence=True),
}


def _gsps(source: Dataset, result: object, settings: Settings, n: int = 1) -> Dataset:
    return build_gsps(
        source,
        result,  # type: ignore[arg-type]
        settings,
        series_uid=f"{UID_ROOT}.2.1",
        sop_uid=f"{UID_ROOT}.2.2.{n}",
    )


def _objects(ds: Dataset, keyword: str) -> list[Dataset]:
    return [obj for ann in ds.GraphicAnnotationSequence for obj in ann.get(keyword, [])]


@pytest.mark.parametrize("name", VARIANTS)
def test_gsps_passes_dciodvfy_and_dcmpschk(name: str, settings: Settings, tmp_path: Path) -> None:
    dcmpschk = require_tool("dcmpschk")
    sources = make_study(30, VARIANTS[name])
    for result in (abnormal_result(sources), normal_result(sources)):
        for number, source in enumerate(sources):
            path = write_object(_gsps(source, result, settings, number), tmp_path / "ps.dcm")
            errors, warnings = dciodvfy_errors(path)
            assert errors == [] and warnings == [], (name, errors, warnings)
            check = subprocess.run([dcmpschk, str(path)], capture_output=True, text=True)
            lines = (check.stdout + check.stderr).splitlines()
            assert [ln for ln in lines if ln.startswith("E:")] == [], lines
            assert any("Test passed" in ln for ln in lines), lines


@pytest.mark.parametrize("name", VARIANTS)
def test_presentation_follows_the_source(name: str, settings: Settings) -> None:
    sources = make_study(31, VARIANTS[name])
    result = abnormal_result(sources)
    for source in sources:
        ps = _gsps(source, result, settings)
        mono1 = source.PhotometricInterpretation == "MONOCHROME1"
        assert ps.PresentationLUTShape == ("INVERSE" if mono1 else "IDENTITY")
        (voi,) = ps.SoftcopyVOILUTSequence
        if "VOILUTSequence" not in source:
            first = lambda v: v[0] if isinstance(v, pydicom.multival.MultiValue) else v  # noqa: E731
            assert float(voi.WindowCenter) == pytest.approx(float(first(source.WindowCenter)))
            assert float(voi.WindowWidth) == pytest.approx(float(first(source.WindowWidth)))
            assert "VOILUTSequence" not in voi
            explanation = source.get("WindowCenterWidthExplanation")
            if explanation:
                assert voi.WindowCenterWidthExplanation == first(explanation)
        else:
            (lut,) = voi.VOILUTSequence
            (src,) = source.VOILUTSequence
            assert list(lut.LUTDescriptor) == list(src.LUTDescriptor)
            np.testing.assert_array_equal(
                np.frombuffer(lut.LUTData, "<u2"), np.frombuffer(src.LUTData, "<u2")
            )
        spacing = read_pixel_spacing(source)
        (area,) = ps.DisplayedAreaSelectionSequence
        assert [float(v) for v in area.PresentationPixelSpacing] == pytest.approx(
            [spacing.row_mm, spacing.column_mm]
        )
        assert list(area.DisplayedAreaBottomRightHandCorner) == [source.Columns, source.Rows]
        assert ps.BodyPartExamined == source.BodyPartExamined
        assert ps.PatientID == source.PatientID and ps.StudyInstanceUID == source.StudyInstanceUID
        (series,) = ps.ReferencedSeriesSequence
        assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_imager_pixel_spacing_when_the_source_has_no_pixel_spacing(settings: Settings) -> None:
    sources = make_study(32, Variant())
    source = sources[0]
    source.ImagerPixelSpacing = ["0.15", "0.16"]
    del source.PixelSpacing
    ps = _gsps(source, abnormal_result(sources), settings)
    (area,) = ps.DisplayedAreaSelectionSequence
    assert [float(v) for v in area.PresentationPixelSpacing] == [0.15, 0.16]
    del source.ImagerPixelSpacing
    ps = _gsps(source, abnormal_result(sources), settings)
    (area,) = ps.DisplayedAreaSelectionSequence
    assert "PresentationPixelSpacing" not in area
    assert list(area.PresentationPixelAspectRatio) == [1, 1]


def test_layers_per_class_and_tracking_shared_with_the_sr(settings: Settings) -> None:
    sources = make_study(33, Variant(photometric="MONOCHROME1", sop_class="DX"))
    result = abnormal_result(sources)
    sr = build_sr(sources, result, settings, series_uid=f"{UID_ROOT}.1", sop_uid=f"{UID_ROOT}.2")
    sr_uids = {
        item.UID
        for item in _walk(sr)
        if item.get("ValueType") == "UIDREF"
        and item.ConceptNameCodeSequence[0].CodeValue == "112040"
    }
    trackings = box_trackings(result, settings.node.uid_root)
    ap = _gsps(sources[0], result, settings)
    layers = [layer.GraphicLayer for layer in ap.GraphicLayerSequence]
    assert layers == [
        CLASS_LAYERS[LesionClass.OSTEOPHYTES],
        CLASS_LAYERS[LesionClass.DISC_SPACE_NARROWING],
        SUMMARY_LAYER,
    ]
    orders = [int(layer.GraphicLayerOrder) for layer in ap.GraphicLayerSequence]
    assert orders == sorted(orders) and len(set(orders)) == 3
    colours = {
        tuple(layer.GraphicLayerRecommendedDisplayCIELabValue) for layer in ap.GraphicLayerSequence
    }
    assert len(colours) == 3
    graphics = _objects(ap, "GraphicObjectSequence")
    texts = [t for t in _objects(ap, "TextObjectSequence") if "TrackingUID" in t]
    # two displayed boxes on the AP; the third AP box is below the display threshold
    assert len(graphics) == len(texts) == 2
    ap_trackings = [t for t in trackings if t.sop_instance_uid == sources[0].SOPInstanceUID]
    assert [g.TrackingUID for g in graphics] == [t.uid for t in ap_trackings]
    assert {g.TrackingUID for g in graphics} <= sr_uids
    assert [t.UnformattedTextValue for t in texts] == [
        "Osteophytes 0.87",
        "Disc space narrowing 0.64",
    ]
    for graphic, text, tracking in zip(graphics, texts, ap_trackings, strict=True):
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
        assert len(points) == 5 and (points[0] == points[-1]).all()
        assert points[0] == pytest.approx([tracking.box.xmin, tracking.box.ymin], abs=1e-3)
        assert points[2] == pytest.approx([tracking.box.xmax, tracking.box.ymax], abs=1e-3)
        assert text.TrackingID == graphic.TrackingID == tracking.identifier
        assert text.GraphicGroupID == graphic.GraphicGroupID == tracking.number
        # the label sits on the box's top edge, starting at its left edge
        assert text.BoundingBoxBottomRightHandCorner[1] == pytest.approx(
            tracking.box.ymin, abs=1e-3
        )
        assert text.BoundingBoxTopLeftHandCorner[0] == pytest.approx(tracking.box.xmin, abs=1e-3)
    groups = {g.GraphicGroupID: g.GraphicGroupLabel for g in ap.GraphicGroupSequence}
    assert groups == {t.number: t.identifier for t in ap_trackings}
    lateral = _gsps(sources[1], result, settings)
    assert [g.TrackingUID for g in _objects(lateral, "GraphicObjectSequence")] == [trackings[2].uid]


def test_normal_image_has_only_the_summary_and_demo_is_labelled(settings: Settings) -> None:
    sources = make_study(34, Variant())
    ps = _gsps(sources[0], normal_result(sources), settings)
    assert [layer.GraphicLayer for layer in ps.GraphicLayerSequence] == [SUMMARY_LAYER]
    (summary,) = _objects(ps, "TextObjectSequence")
    assert "no abnormality" in summary.UnformattedTextValue
    assert "DEMO - NOT FOR CLINICAL USE" in summary.UnformattedTextValue
    assert summary.BoundingBoxAnnotationUnits == "DISPLAY"
    assert ps.ContentLabel == "AI_SPINEXR_DEMO"
    assert "DEMO" in ps.ContentDescription and "GraphicGroupSequence" not in ps


def test_label_boxes_stay_inside_the_image(settings: Settings) -> None:
    sources = make_study(35, Variant())
    result = abnormal_result(sources)
    for tracking in box_trackings(result, settings.node.uid_root):
        left, top, right, bottom = label_box(tracking, 512, 384)
        assert 0 <= left < right <= 384 and 0 <= top < bottom <= 512
    lateral = [t for t in box_trackings(result, UID_ROOT) if t.box.ymin < 10]
    (top_box,) = lateral
    _, top, _, _ = label_box(top_box, 512, 384)
    assert top == pytest.approx(top_box.box.ymax)  # no room above: below the box


def test_failed_or_unknown_image_is_refused(settings: Settings) -> None:
    sources = make_study(36, Variant())
    with pytest.raises(ValueError, match="not analysed"):
        _gsps(sources[0], failed_result(sources), settings)
    with pytest.raises(ValueError, match="not part of the result"):
        _gsps(make_study(37, Variant())[0], normal_result(sources), settings)


def _walk(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_walk(item))
    return out

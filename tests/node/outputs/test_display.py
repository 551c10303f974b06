"""How the GSPS display: dcmtk applies each to its image; the node's preview draws them."""

from __future__ import annotations

import copy
import io
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    make_settings,
    make_study,
    normal_result,
    write_object,
)
from PIL import Image
from pydicom.dataset import Dataset
from testsupport import require_tool

from spinexr.node.outputs.boxes import CLASS_COLOURS, box_corners
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.gsps import CLASS_LAYERS, SUMMARY_LAYER, build_gsps
from spinexr.node.outputs.render import (
    PALETTE,
    layer_colours,
    present,
    preview_png,
    preview_scale,
    render_preview,
)
from spinexr.node.settings import Settings
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.display import Lut, Window, read_voi
from spinexr.pipeline.preprocess import decode_pixels, display_image, gray_to_rgb, resize_image
from spinexr.pipeline.results import Box, StudyResult
from spinexr.training.phantoms.image import render_phantom

VARIANTS = {
    "cr-mono2-window": Variant(),
    "dx-mono1-window": Variant(photometric="MONOCHROME1", sop_class="DX"),
    "cr-mono1-lut": Variant(photometric="MONOCHROME1", voi_lut_sequence=True, window=False),
    "cr-mono2-lut": Variant(voi_lut_sequence=True, window=False),
    "dx-mono2-window+lut": Variant(sop_class="DX", voi_lut_sequence=True),
    "cr-mono1-window+lut": Variant(photometric="MONOCHROME1", voi_lut_sequence=True),
}
SEED = 60
LESIONS = [LesionClass.OSTEOPHYTES, LesionClass.DISC_SPACE_NARROWING]


def _study(name: str) -> list[Dataset]:
    return make_study(SEED, VARIANTS[name])


def _gsps(source: Dataset, result: StudyResult, settings: Settings) -> Dataset:
    return build_gsps(
        source, result, settings, series_uid=f"{UID_ROOT}.5.1", sop_uid=f"{UID_ROOT}.5.2"
    )


def _vertebral_centres(view: str) -> list[tuple[int, int, int, int]]:
    """Central half of each fully visible vertebral body of the phantom (x0, y0, x1, y1)."""
    phantom = render_phantom(SEED, view=view, size="small", lesions=LESIONS, region="LSPINE")  # type: ignore[arg-type]
    out = []
    for vertebra in phantom.spine.vertebrae:
        if vertebra.visible:
            x0, y0, x1, y1 = vertebra.body.bbox()
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
            out.append((int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)))
    return out


def _assert_bone_bright(gray: npt.NDArray[np.uint8], view: str) -> None:
    centres = _vertebral_centres(view)
    assert len(centres) >= 4
    means = [float(gray[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in centres]
    median = float(np.median(gray))
    assert min(means) > 128 and min(means) > median + 25, (means, median)


def _with_gsps_voi(source: Dataset) -> Dataset:
    """The source with only the VOI its GSPS carries over (first window, else the LUT)."""
    ds = copy.deepcopy(source)
    voi = read_voi(source)
    if isinstance(voi, Window) and "VOILUTSequence" in ds:
        del ds.VOILUTSequence
    if isinstance(voi, Lut):
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
            if keyword in ds:
                delattr(ds, keyword)
    return ds


def _dcmp2pgm(gsps: Dataset, source: Dataset, tmp: Path) -> npt.NDArray[np.uint8]:
    exe = require_tool("dcmp2pgm")
    ps_path = write_object(gsps, tmp / "ps.dcm")
    image_path = write_object(source, tmp / "image.dcm")
    out = tmp / "out.pgm"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [exe, "-p", str(ps_path), str(image_path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout + proc.stderr
    with Image.open(out) as pgm:
        assert pgm.mode == "L"
        return np.asarray(pgm, dtype=np.uint8)


def _dcmpschk(gsps: Dataset, tmp: Path) -> None:
    exe = require_tool("dcmpschk")
    path = write_object(gsps, tmp / "check.dcm")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, lines
    assert [ln for ln in lines if ln.startswith(("E:", "F:"))] == [], lines
    assert any("Test passed" in ln for ln in lines), lines


def _max_diff(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ----------------------------------------------------------------------------- dcmtk


@pytest.mark.integration
@pytest.mark.parametrize("name", VARIANTS)
def test_dcmtk_checks_and_applies_every_gsps(name: str, tmp_path: Path) -> None:
    sources = _study(name)
    settings = make_settings(sr=False, gsps=True)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for result in (abnormal_result(sources), normal_result(sources)):
        built = build_outputs(sources, result, settings, job_key=f"display-{name}")
        presentation_states = [obj for obj in built if obj.kind == "gsps"]
        assert len(presentation_states) == len(sources)
        for obj in presentation_states:
            gsps = obj.dataset
            assert obj.source_sop_instance_uid is not None
            source = by_uid[obj.source_sop_instance_uid]
            _dcmpschk(gsps, tmp_path)
            shown = _dcmp2pgm(gsps, source, tmp_path)
            assert shown.shape == (source.Rows, source.Columns)
            # bone bright whatever the photometric interpretation
            view = "AP" if source.InstanceNumber == 1 else "LAT"
            _assert_bone_bright(shown, view)
            # the VOI is the source's: the node's display pipeline with that VOI gives the
            # same picture (rounding apart)...
            reference = _with_gsps_voi(source)
            expected, _ = display_image(reference, decode_pixels(reference))
            assert _max_diff(shown, expected) <= 1, name
            # ...and so does the preview's presentation-state pipeline, on the file too
            assert _max_diff(shown, present(source, gsps)) <= 1, name
            stored = pydicom.dcmread(tmp_path / "ps.dcm")
            assert _max_diff(shown, present(source, stored)) <= 1, name


@pytest.mark.integration
@pytest.mark.parametrize(
    "name",
    [
        "cr-mono2-window",
        "cr-mono1-lut",
        "dx-mono2-window+lut",
    ],
)
def test_gsps_shows_what_the_models_saw(name: str, settings: Settings, tmp_path: Path) -> None:
    sources = _study(name)
    source = sources[0]
    shown = _dcmp2pgm(_gsps(source, abnormal_result(sources), settings), source, tmp_path)
    expected, _ = display_image(source, decode_pixels(source))
    assert _max_diff(shown, expected) <= 1


@pytest.mark.integration
def test_identity_shape_on_monochrome1_would_show_bone_dark(
    settings: Settings, tmp_path: Path
) -> None:
    # Negative control: the bone-bright check notices a GSPS that forgets to invert.
    sources = _study("dx-mono1-window")
    gsps = _gsps(sources[0], abnormal_result(sources), settings)
    gsps.PresentationLUTShape = "IDENTITY"
    shown = _dcmp2pgm(gsps, sources[0], tmp_path)
    with pytest.raises(AssertionError):
        _assert_bone_bright(shown, "AP")
    assert _max_diff(shown, present(sources[0], gsps)) <= 1


# ----------------------------------------------------------------------------- preview

_PREVIEW_BOXES = (
    Box(label=LesionClass.OSTEOPHYTES, score=0.87, xmin=100.5, ymin=120.25, xmax=160, ymax=170),
    Box(
        label=LesionClass.DISC_SPACE_NARROWING,
        score=0.64,
        xmin=150,
        ymin=300,
        xmax=260.75,
        ymax=330,
    ),
    Box(
        label=LesionClass.VERTEBRAL_COLLAPSE,
        score=0.71,
        xmin=40.2,
        ymin=380.6,
        xmax=120.9,
        ymax=470.3,
    ),
    Box(label=LesionClass.SURGICAL_IMPLANT, score=0.55, xmin=250, ymin=420, xmax=384, ymax=512),
)


def _preview_result(sources: Sequence[Dataset]) -> StudyResult:
    result = abnormal_result(sources)
    first = result.images[0].model_copy(update={"boxes": list(_PREVIEW_BOXES)})
    return result.model_copy(update={"images": [first, result.images[1]]})


def _near(
    rgb: npt.NDArray[np.uint8], x: float, y: float, colour: tuple[int, int, int], tol: int
) -> bool:
    """Whether a pixel within ``tol`` of preview coordinate (x, y) has exactly ``colour``."""
    rows, cols = rgb.shape[:2]
    cx, cy = int(np.floor(x)), int(np.floor(y))
    window = rgb[
        max(cy - tol, 0) : min(cy + tol + 1, rows), max(cx - tol, 0) : min(cx + tol + 1, cols)
    ]
    return bool((window == np.asarray(colour, dtype=np.uint8)).all(axis=-1).any())


def _count(rgb: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> int:
    return int((rgb == np.asarray(colour, dtype=np.uint8)).all(axis=-1).sum())


@pytest.mark.parametrize("max_size", [None, 300, 256])
@pytest.mark.parametrize("name", ["cr-mono2-window", "dx-mono1-window"])
def test_preview_draws_each_box_where_it_is(
    name: str, max_size: int | None, settings: Settings
) -> None:
    sources = _study(name)
    source = sources[0]
    result = _preview_result(sources)
    gsps = _gsps(source, result, settings)
    rgb = render_preview(source, gsps, max_size=max_size)
    rows, cols = int(source.Rows), int(source.Columns)
    scale = preview_scale(rows, cols, max_size)
    assert rgb.shape == (round(rows * scale), round(cols * scale), 3) and rgb.dtype == np.uint8
    colours = layer_colours(gsps)
    tol = 2
    for box in _PREVIEW_BOXES:
        colour = colours[CLASS_LAYERS[box.label]]
        # the layer's CIELab colour converts back to the class colour
        assert np.abs(np.subtract(colour, CLASS_COLOURS[box.label])).max() <= 2
        x0, y0, x1, y1 = (v * scale for v in box_corners(box, rows, cols))
        for t in (0.2, 0.5, 0.8):
            xm, ym = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            for x, y in ((x0, ym), (x1, ym), (xm, y1), (xm, y0)):
                assert _near(rgb, x, y, colour, tol), (box.label, x, y)
        # nothing of that colour well inside the box, nor beside or below it
        margin = tol + 2
        inside = rgb[int(y0) + margin : int(y1) - margin, int(x0) + margin : int(x1) - margin]
        assert inside.size and _count(inside, colour) == 0, box.label
        ym = (y0 + y1) / 2
        for x, y in (
            (x0 - margin - 1, ym),
            (x1 + margin + 1, ym),
            ((x0 + x1) / 2, y1 + margin + 1),
        ):
            if 0 <= x < rgb.shape[1] and 0 <= y < rgb.shape[0]:
                assert not _near(rgb, x, y, colour, 1), (box.label, x, y)
    # the label of the first box is drawn above it (antialiased: tinted, not exactly coloured)
    x0, y0, x1, _ = (v * scale for v in box_corners(_PREVIEW_BOXES[0], rows, cols))
    label_area = rgb[max(int(y0 - 14 * scale), 0) : int(y0) - 1, int(x0) : int(x1)].astype(int)
    tinted = label_area.max(axis=-1) - label_area.min(axis=-1) > 60
    assert tinted.sum() >= 5
    # the summary text (white layer) is drawn in the top strip
    grey = gray_to_rgb(resize_image(present(source, gsps), rgb.shape[:2]))
    strip = slice(0, max(int(0.06 * rgb.shape[0]), 4))
    assert (rgb[strip] != grey[strip]).any(axis=-1).sum() > 20
    assert SUMMARY_LAYER in colours and colours[SUMMARY_LAYER] == (255, 255, 255)


def test_preview_keeps_the_grey_levels_away_from_annotations(settings: Settings) -> None:
    sources = _study("dx-mono1-window")
    source = sources[0]
    gsps = _gsps(source, _preview_result(sources), settings)
    rgb = render_preview(source, gsps, max_size=None)
    gray = present(source, gsps)
    region = (slice(200, 280), slice(10, 90))  # left of the spine, below the summary
    np.testing.assert_array_equal(rgb[region], gray_to_rgb(gray)[region])
    _assert_bone_bright(gray, "AP")


def test_preview_without_gsps_is_the_display_pipeline() -> None:
    sources = _study("dx-mono1-window")
    source = sources[1]
    display, _ = display_image(source, decode_pixels(source))
    np.testing.assert_array_equal(render_preview(source, max_size=None), gray_to_rgb(display))
    small = render_preview(source, max_size=128)
    assert small.shape == (128, 96, 3)
    np.testing.assert_array_equal(small, gray_to_rgb(resize_image(display, (128, 96))))
    _assert_bone_bright(display, "LAT")


def test_preview_png_decodes_to_the_preview(settings: Settings) -> None:
    sources = _study("cr-mono2-window")
    gsps = _gsps(sources[0], _preview_result(sources), settings)
    data = preview_png(sources[0], gsps, max_size=200)
    with Image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        decoded = np.asarray(png)
    np.testing.assert_array_equal(decoded, render_preview(sources[0], gsps, max_size=200))
    assert decoded.shape == (200, 150, 3)


def test_preview_voi_falls_back_to_the_source_and_follows_the_gsps(settings: Settings) -> None:
    sources = _study("cr-mono2-window")
    source = sources[0]
    gsps = _gsps(source, _preview_result(sources), settings)
    with_voi = present(source, gsps)
    del gsps.SoftcopyVOILUTSequence
    np.testing.assert_array_equal(present(source, gsps), with_voi)
    # a narrower window in the GSPS is what the preview shows
    narrow = copy.deepcopy(_gsps(source, _preview_result(sources), settings))
    item = narrow.SoftcopyVOILUTSequence[0]
    item.WindowWidth = float(item.WindowWidth) / 4
    assert _max_diff(present(source, narrow), with_voi) > 50
    # the Presentation LUT Shape decides the polarity
    narrow.PresentationLUTShape = "INVERSE"
    inverted = present(source, narrow)
    narrow.PresentationLUTShape = "IDENTITY"
    assert _max_diff(255 - inverted, present(source, narrow)) <= 1


def test_layer_colours_without_recommended_values(settings: Settings) -> None:
    sources = _study("cr-mono2-window")
    gsps = _gsps(sources[0], _preview_result(sources), settings)
    layers = list(gsps.GraphicLayerSequence)
    del layers[0].GraphicLayerRecommendedDisplayCIELabValue
    layers[1].GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    del layers[1].GraphicLayerRecommendedDisplayCIELabValue
    colours = layer_colours(gsps)
    order = sorted(layers, key=lambda layer: int(layer.GraphicLayerOrder))
    assert colours[str(order[0].GraphicLayer)] == PALETTE[0]
    assert colours[str(order[1].GraphicLayer)] == (255, 255, 255)
    render_preview(sources[0], gsps, max_size=128)  # still draws


def test_preview_refuses_a_gsps_of_another_image(settings: Settings) -> None:
    sources = _study("cr-mono2-window")
    gsps = _gsps(sources[0], _preview_result(sources), settings)
    with pytest.raises(ValueError, match="does not reference"):
        render_preview(sources[1], gsps)
    with pytest.raises(ValueError, match="max_size"):
        render_preview(sources[0], gsps, max_size=0)

"""A source's VOI LUT travels into its GSPS and displays as the source's (issue 14 item 3).

A MONOCHROME1 source whose VOI LUT has 12-bit entries (LUT Descriptor ``[4096, 0, 12]``) got
a GSPS whose VOI LUT said 16 bits per entry with the same 12-bit data, so dcmtk (and any
viewer honouring the GSPS) and the node's preview showed it almost white. Each case renders
the GSPS with dcmtk's ``dcmp2pgm`` and with the node's preview and compares them with the
source rendered with its own VOI LUT (entries scaled by the LUT's bits per entry, inverted
for MONOCHROME1), and validates the GSPS with dciodvfy.

A LUT encoded as PS3.3 C.11.2.1.1.1 requires (8 bits per entry packed two per word, or 16
bits one per word) is carried over unchanged (descriptor, explanation, data with its VR and
bytes). dciodvfy refuses any other encoding in a VOI LUT ("Unrecognized enumerated value"
for 12 bits per entry, "wrong length" for 8-bit entries one per word), so such a table is
carried over re-encoded the nearest allowed way, showing the same picture.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    dciodvfy_errors,
    make_settings,
    make_study,
    normal_result,
    write_object,
)
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from testsupport import require_tool

from spinexr.node.outputs.gsps import build_gsps
from spinexr.node.outputs.render import present, render_preview
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.display import Lut, read_voi
from spinexr.training.phantoms.image import render_phantom

SEED = 61
LESIONS = [LesionClass.OSTEOPHYTES, LesionClass.DISC_SPACE_NARROWING]


# ----------------------------------------------------------------------------- sources


@functools.cache
def _phantom(photometric: str) -> Dataset:
    """The AP phantom image with a 16-bit sigmoid VOI LUT (4096 entries) and no window."""
    variant = Variant(photometric=photometric, voi_lut_sequence=True, window=False)
    return make_study(SEED, variant)[0]


def _lut_item(
    photometric: str,
    bits: int,
    layout: str,
    *,
    first: int = 0,
    entries: int = 4096,
    explanation: bool = True,
) -> Dataset:
    """The phantom's VOI LUT curve with ``bits`` per entry, its LUT Data laid out as asked.

    ``layout`` is the LUT Data VR and how entries fill its 16-bit words: ``"OW words"`` and
    ``"US words"`` one entry per word, ``"OW packed"`` and ``"US packed"`` two 8-bit entries
    per word, the first in the low byte.
    """
    (phantom_item,) = _phantom(photometric).VOILUTSequence
    curve = np.frombuffer(phantom_item.LUTData, dtype="<u2").astype(np.float64) / 65535.0
    values = np.rint(curve[first : first + entries] * (2**bits - 1)).astype(np.int64)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [entries, first, bits])
    if explanation:
        item.LUTExplanation = f"SPINE SIGMOID {bits} BIT"
    vr, fill = layout.split()
    if fill == "packed":
        data = values.astype(np.uint8).tobytes()
        data += b"\x00" * (len(data) % 2)
    else:
        data = values.astype("<u2").tobytes()
    if vr == "US":
        item.add_new("LUTData", "US", [int(v) for v in np.frombuffer(data, dtype="<u2")])
    else:
        item.add_new("LUTData", "OW", data)
    return item


def _source(
    photometric: str,
    bits: int,
    layout: str,
    *,
    first: int = 0,
    entries: int = 4096,
    explanation: bool = True,
) -> Dataset:
    source = copy.deepcopy(_phantom(photometric))
    item = _lut_item(
        photometric, bits, layout, first=first, entries=entries, explanation=explanation
    )
    source.VOILUTSequence = [item]
    return source


def _gsps(source: Dataset) -> Dataset:
    """The node's GSPS of the source (no boxes: only the summary line across the top)."""
    return build_gsps(
        source,
        normal_result([source, source]),
        make_settings(),
        series_uid=f"{UID_ROOT}.6.1",
        sop_uid=f"{UID_ROOT}.6.2",
    )


def _carried(gsps: Dataset) -> Dataset:
    (voi,) = gsps.SoftcopyVOILUTSequence
    (lut,) = voi.VOILUTSequence
    item: Dataset = lut
    return item


# ----------------------------------------------------------------------------- rendering


def _table(item: Dataset) -> npt.NDArray[np.int64]:
    """A little endian VOI LUT item's entries (independent of the node's decoder)."""
    entries, _, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if item["LUTData"].VR == "US":
        words = np.asarray(list(item.LUTData), dtype="<u2")
    else:
        words = np.frombuffer(bytes(item.LUTData), dtype="<u2")
    if bits == 8 and len(words) < entries:
        return np.frombuffer(words.tobytes(), dtype=np.uint8)[:entries].astype(np.int64)
    return words[:entries].astype(np.int64)


def _source_rendering(source: Dataset) -> npt.NDArray[np.uint8]:
    """The source with its own VOI LUT, ``2**bits - 1`` white, MONOCHROME1 inverted.

    Checked against pydicom's ``apply_voi_lut`` where that applies the table (10 to 16 bits
    per entry, one per word: with 8 bits pydicom 3.0 indexes the table with uint8 values,
    so a table of more than 256 entries wraps around).
    """
    values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float64)
    item = source.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    index = np.clip(np.rint(values), first, first + (entries or 65536) - 1).astype(np.int64)
    shown = _table(item)[index - first].astype(np.float64)
    if bits > 8:
        by_pydicom = apply_voi_lut(index, source, index=0, prefer_lut=True)
        np.testing.assert_array_equal(shown, by_pydicom)
    unit = shown / float(2**bits - 1)
    if source.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def _dcmp2pgm(gsps_path: Path, source: Dataset, tmp: Path) -> npt.NDArray[np.uint8]:
    exe = require_tool("dcmp2pgm")
    image_path = write_object(source, tmp / "image.dcm")
    out = tmp / "out.pgm"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [exe, "--pstate", str(gsps_path), str(image_path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout + proc.stderr
    with Image.open(out) as pgm:
        assert pgm.mode == "L"
        return np.asarray(pgm, dtype=np.uint8)


@functools.cache
def _vertebral_centres() -> tuple[tuple[int, int, int, int], ...]:
    """Central half of each fully visible vertebral body of the AP phantom."""
    phantom = render_phantom(SEED, view="AP", size="small", lesions=LESIONS, region="LSPINE")
    out = []
    for vertebra in phantom.spine.vertebrae:
        if vertebra.visible:
            x0, y0, x1, y1 = vertebra.body.bbox()
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
            out.append((int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)))
    return tuple(out)


def _assert_bone_bright(gray: npt.NDArray[np.uint8], what: str) -> None:
    centres = _vertebral_centres()
    assert len(centres) >= 4
    means = [float(gray[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in centres]
    median = float(np.median(gray))
    assert min(means) > 128 and min(means) > median + 25, (what, means, median)


def _max_diff(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _assert_displays_as_the_source(source: Dataset, gsps: Dataset, tmp: Path) -> None:
    """dcmtk and the preview show the source's picture, bone bright; dciodvfy finds no error."""
    expected = _source_rendering(source)
    _assert_bone_bright(expected, "source")
    path = write_object(gsps, tmp / "gsps.dcm")
    shown = _dcmp2pgm(path, source, tmp)
    _assert_bone_bright(shown, "dcmp2pgm")
    assert _max_diff(shown, expected) <= 1, "dcmp2pgm"
    stored = pydicom.dcmread(path)
    for ds in (gsps, stored):
        gray = present(source, ds)
        _assert_bone_bright(gray, "preview")
        assert _max_diff(gray, expected) <= 1, "preview"
    rgb = render_preview(source, stored, max_size=None)
    below_summary = slice(int(0.06 * int(source.Rows)), None)
    assert _max_diff(rgb[below_summary, :, 0], expected[below_summary]) <= 1, "render_preview"
    errors, _ = dciodvfy_errors(path)
    assert errors == [], errors


def _assert_same_item(carried: Dataset, source_item: Dataset) -> None:
    """Same elements, each with the same VR and value."""
    assert sorted(carried.keys()) == sorted(source_item.keys())
    for keyword in ("LUTDescriptor", "LUTExplanation", "LUTData"):
        if keyword not in source_item:
            continue
        mine, theirs = carried[keyword], source_item[keyword]
        assert mine.VR == theirs.VR, (keyword, mine.VR, theirs.VR)
        if isinstance(theirs.value, bytes):
            assert isinstance(mine.value, bytes) and mine.value == theirs.value, keyword
        elif theirs.VM > 1:
            assert list(mine.value) == list(theirs.value), keyword
        else:
            assert mine.value == theirs.value, keyword


# ----------------------------------------------------------------------------- tests


@pytest.mark.integration
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(("bits", "layout"), [(8, "OW packed"), (12, "OW words"), (16, "OW words")])
def test_gsps_with_the_source_voi_lut_displays_as_the_source(
    bits: int, layout: str, photometric: str, tmp_path: Path
) -> None:
    source = _source(photometric, bits, layout)
    src = source.VOILUTSequence[0]
    gsps = _gsps(source)
    _assert_displays_as_the_source(source, gsps, tmp_path)
    carried = _carried(pydicom.dcmread(write_object(gsps, tmp_path / "gsps.dcm")))
    if bits == 12:  # not allowed in a VOI LUT: the same table with 16 bits per entry
        assert list(carried.LUTDescriptor) == [4096, 0, 16]
        assert carried.LUTExplanation == src.LUTExplanation
        np.testing.assert_array_equal(_table(carried), np.rint(_table(src) * 65535 / 4095))
    else:
        _assert_same_item(carried, src)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("bits", "layout", "first", "entries", "explanation"),
    [
        (8, "OW packed", 0, 4096, True),
        (8, "US packed", 0, 4096, True),
        (8, "OW packed", 600, 3290, False),
        (16, "US words", 0, 4096, True),
        (16, "OW words", 500, 3000, False),
    ],
)
def test_gsps_voi_lut_in_a_standard_encoding_is_copied_unchanged(
    bits: int, layout: str, first: int, entries: int, explanation: bool, tmp_path: Path
) -> None:
    source = _source(
        "MONOCHROME1", bits, layout, first=first, entries=entries, explanation=explanation
    )
    gsps = _gsps(source)
    path = write_object(gsps, tmp_path / "copied.dcm")
    _assert_same_item(_carried(pydicom.dcmread(path)), source.VOILUTSequence[0])
    _assert_displays_as_the_source(source, gsps, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("bits", "layout", "entries", "carried_bits"),
    [
        (12, "US words", 4096, 16),
        (10, "OW words", 4096, 16),
        (15, "OW words", 4096, 16),
        (8, "OW words", 4096, 8),
        (8, "US words", 4096, 8),
        # an odd number of 8-bit entries: packed with a padding byte, which dciodvfy counts
        (8, "OW packed", 3291, 16),
    ],
)
def test_gsps_voi_lut_in_another_encoding_is_re_encoded_the_same(
    bits: int, layout: str, entries: int, carried_bits: int, tmp_path: Path
) -> None:
    first = 4096 - entries
    source = _source("MONOCHROME1", bits, layout, first=first, entries=entries)
    src = source.VOILUTSequence[0]
    gsps = _gsps(source)
    carried = _carried(pydicom.dcmread(write_object(gsps, tmp_path / "re-encoded.dcm")))
    assert list(carried.LUTDescriptor) == [entries, first, carried_bits]
    assert carried["LUTDescriptor"].VR == "US" and carried["LUTData"].VR == "OW"
    assert carried.LUTExplanation == src.LUTExplanation
    scale = (2**carried_bits - 1) / (2**bits - 1)
    np.testing.assert_array_equal(_table(carried), np.rint(_table(src) * scale))
    _assert_displays_as_the_source(source, gsps, tmp_path)


def test_big_endian_lut_data_is_carried_little_endian(tmp_path: Path) -> None:
    source = _source("MONOCHROME2", 16, "OW words")
    item = source.VOILUTSequence[0]
    values = _table(item)
    item.LUTData = values.astype(">u2").tobytes()
    item.set_original_encoding(False, False, "iso8859")  # as read from a big endian file
    carried = _carried(pydicom.dcmread(write_object(_gsps(source), tmp_path / "le.dcm")))
    assert list(carried.LUTDescriptor) == [4096, 0, 16] and carried["LUTData"].VR == "OW"
    np.testing.assert_array_equal(_table(carried), values)
    lut = read_voi(source)
    assert isinstance(lut, Lut) and lut.bits == 16
    np.testing.assert_array_equal(lut.data, values)

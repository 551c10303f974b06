"""One display pipeline: the same pixels as pydicom's functions and as the code it replaced.

Each case is a 64×64 image holding every 12-bit stored value once (unsigned; or signed with
a fractional Rescale Slope/Intercept), MONOCHROME1 or MONOCHROME2, with a window (LINEAR,
LINEAR_EXACT, SIGMOID), a VOI LUT (8 bits packed two per word or one per word, as OW or US;
12 bits; 16 bits) or no VOI.

- The models' input (`preprocess.display_image`) is, bit for bit, what the preprocessing
  before `spinexr.pipeline.display` gave: pydicom's ``apply_modality_lut`` and
  ``apply_voi_lut``, then min-max (`_pydicom_models`). Where pydicom 3.0 misreads an 8-bit
  table, the reference is the same table as 16 bits (entries × 257: the same fractions).
- What viewers see (`display.display_pixels`: preview, Secondary Capture) is, bit for bit,
  what ``node/outputs/common.apply_voi`` gave (`_old_viewer`), and the VOI output agrees to
  1e-12 with pydicom's ``apply_windowing`` / ``apply_voi_lut`` scaled by their nominal range;
  MONOCHROME1 inverted as pydicom's ``apply_presentation_lut`` INVERSE does when the picture
  reaches white.

The ``test_pydicom_*`` tests pin what pydicom 3.0 gets wrong, the reason for each hand-written
step of `spinexr.pipeline.display`: when one fails, pydicom was fixed and the workaround can go.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import (
    apply_modality_lut,
    apply_presentation_lut,
    apply_voi_lut,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from spinexr.pipeline.display import (
    Lut,
    Window,
    apply_presentation,
    apply_voi,
    display_pixels,
    read_voi,
    voi_output,
)
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.preprocess import VoiSource, decode_pixels, display_image

SIDE = 64  # 64 × 64 = 4096: every 12-bit stored value once


@dataclass(frozen=True)
class Pixels:
    """Stored values and Modality LUT of a case."""

    signed: bool
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def output_range(self) -> tuple[float, float]:
        """pydicom's nominal window output range: the Modality LUT output of the stored range."""
        lo, hi = (-2048, 2047) if self.signed else (0, 4095)
        return lo * self.slope + self.intercept, hi * self.slope + self.intercept


PIXELS = {"unsigned": Pixels(False), "signed": Pixels(True, 0.5, -100.0)}
WINDOWS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
LUTS = {  # name: (bits, LUT Data VR, entries per word, number of entries)
    "8 packed OW": (8, "OW", 2, 1600),
    "8 packed US": (8, "US", 2, 1600),
    "8 words OW": (8, "OW", 1, 1600),
    "8 words US": (8, "US", 1, 1600),
    "8 words OW 256": (8, "OW", 1, 256),
    "12 words OW": (12, "OW", 1, 1600),
    "16 words OW": (16, "OW", 1, 1600),
    "16 words US": (16, "US", 1, 1600),
}
PYDICOM_MISREADS = {"8 packed OW", "8 packed US", "8 words OW", "8 words US"}
VOIS = (*WINDOWS, *LUTS, "none")
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


def _image(pixels: Pixels, photometric: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = int(pixels.signed)
    stored = np.arange(4096) - (2048 if pixels.signed else 0)
    ds.PixelData = stored.astype("<i2" if pixels.signed else "<u2").tobytes()
    if pixels.signed:
        ds.RescaleSlope, ds.RescaleIntercept = pixels.slope, pixels.intercept
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _table(bits: int, entries: int) -> npt.NDArray[np.int64]:
    """A ramp from 0 to ``2**bits - 1`` across the table's middle, flat at both ends."""
    k = np.arange(entries, dtype=np.float64)
    ramp = np.clip((k - entries / 8) / (entries * 3 / 4), 0.0, 1.0)
    return np.rint(ramp * (2**bits - 1)).astype(np.int64)


def _lut_item(
    values: npt.NDArray[np.int64], first: int, bits: int, vr: str, per_word: int
) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "SS" if first < 0 else "US", [len(values), first, bits])
    data = values.astype(np.uint8).tobytes() if per_word == 2 else values.astype("<u2").tobytes()
    if vr == "US":
        item.add_new("LUTData", "US", [int(v) for v in np.frombuffer(data, dtype="<u2")])
    else:
        item.add_new("LUTData", "OW", data)
    return item


def _case(pixels_name: str, photometric: str, voi: str) -> Dataset:
    pixels = PIXELS[pixels_name]
    ds = _image(pixels, photometric)
    lo, hi = pixels.output_range
    if voi in WINDOWS:
        ds.WindowCenter = lo + 0.4 * (hi - lo)
        ds.WindowWidth = 0.5 * (hi - lo)
        ds.VOILUTFunction = voi
    elif voi in LUTS:
        bits, vr, per_word, entries = LUTS[voi]
        first = int(lo) + 200 if entries > 256 else int((lo + hi) / 2) - 128
        ds.VOILUTSequence = [_lut_item(_table(bits, entries), first, bits, vr, per_word)]
    return ds


def _as_16_bits(ds: Dataset) -> Dataset:
    """The case with its 8-bit VOI LUT as 16 bits, one per word (entries × 257)."""
    out = copy.deepcopy(ds)
    item = out.VOILUTSequence[0]
    entries, first, _ = (int(v) for v in item.LUTDescriptor)
    values = _table(8, entries) * 257
    out.VOILUTSequence = [_lut_item(values, first, 16, "OW", 1)]
    return out


def _stored(ds: Dataset) -> npt.NDArray[np.int64]:
    return decode_pixels(ds).astype(np.int64)


# ----------------------------------------------------------------------------- references


def _pydicom_voi(ds: Dataset) -> npt.NDArray[np.float64]:
    """pydicom's Modality LUT and VOI (inputs of a VOI LUT rounded into its domain)."""
    values = np.asarray(apply_modality_lut(_stored(ds), ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        count, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        values = np.clip(np.rint(values), first, first + count - 1).astype(np.int64)
    return np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)


def _pydicom_models(ds: Dataset) -> npt.NDArray[np.uint8]:
    """The preprocessing before this module: pydicom's VOI, MONOCHROME1 inverted, min-max."""
    values = _pydicom_voi(ds)
    lo, hi = float(values.min()), float(values.max())
    unit = values - lo
    unit /= hi - lo
    if ds.PhotometricInterpretation == "MONOCHROME1":
        np.subtract(1.0, unit, out=unit)
    unit *= 255.0
    np.rint(unit, out=unit)
    return unit.astype(np.uint8)


def _pydicom_unit(ds: Dataset, pixels: Pixels) -> npt.NDArray[np.float64]:
    """pydicom's VOI output scaled by its nominal range to 0..1 (no VOI: the data's range)."""
    out = _pydicom_voi(ds)
    if "VOILUTSequence" in ds:
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds:
        lo, hi = pixels.output_range
    else:
        lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo)


def _old_viewer(ds: Dataset) -> npt.NDArray[np.float64]:
    """``node/outputs/common.apply_voi`` as it was (VOI output in 0..1 for previews and SC)."""
    values = np.asarray(apply_modality_lut(_stored(ds), ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        table = _table(bits, entries)
        index = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
        out = table[index].astype(np.float64) / float(2**bits - 1)
    elif "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        if ds.VOILUTFunction == "SIGMOID":
            out = 1.0 / (1.0 + np.exp(-4.0 * (values - c) / max(w, 1e-6)))
        elif ds.VOILUTFunction == "LINEAR_EXACT":
            out = (values - c) / max(w, 1e-6) + 0.5
        else:
            out = (values - (c - 0.5)) / (w - 1.0) + 0.5
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def _old_sc(ds: Dataset) -> npt.NDArray[np.uint8]:
    """``node/outputs/sc.grayscale_8bit`` as it was."""
    unit = _old_viewer(ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- the proof


@pytest.mark.parametrize("photometric", PHOTOMETRIC)
@pytest.mark.parametrize("pixels", list(PIXELS))
@pytest.mark.parametrize("voi", VOIS)
def test_models_input_is_pydicoms_and_the_old_preprocessing(
    voi: str, pixels: str, photometric: str
) -> None:
    ds = _case(pixels, photometric, voi)
    got, source = display_image(ds, _stored(ds))
    reference = _as_16_bits(ds) if voi in PYDICOM_MISREADS else ds
    np.testing.assert_array_equal(got, _pydicom_models(reference))
    assert source is {
        "none": VoiSource.FULL_RANGE,
        **dict.fromkeys(LUTS, VoiSource.LUT_SEQUENCE),
    }.get(voi, VoiSource.WINDOW)
    assert got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("photometric", PHOTOMETRIC)
@pytest.mark.parametrize("pixels", list(PIXELS))
@pytest.mark.parametrize("voi", VOIS)
def test_viewers_see_pydicoms_voi_and_the_old_outputs(
    voi: str, pixels: str, photometric: str
) -> None:
    ds = _case(pixels, photometric, voi)
    stored = _stored(ds)
    unit = apply_voi(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), read_voi(ds))
    old = _old_viewer(ds)
    np.testing.assert_array_equal(unit, old)
    reference = _as_16_bits(ds) if voi in PYDICOM_MISREADS else ds
    np.testing.assert_allclose(unit, _pydicom_unit(reference, PIXELS[pixels]), rtol=0, atol=1e-12)
    shown = display_pixels(stored, ds)
    np.testing.assert_array_equal(shown, _old_sc(ds))
    full = unit.min() == 0.0 and unit.max() == 1.0  # all but the sigmoid
    if photometric == "MONOCHROME1":
        np.testing.assert_array_equal(apply_presentation(unit, None, ds), 1.0 - unit)
        inverse = Dataset()
        inverse.PresentationLUTShape = "INVERSE"
        # pydicom's INVERSE is max(image) - value: the same where the picture reaches white
        assert full == np.array_equal(apply_presentation_lut(unit, inverse), 1.0 - unit)
    if full:  # then the models' picture is the viewers' one
        models, _ = display_image(ds, stored)
        assert np.abs(models.astype(int) - shown.astype(int)).max() <= 1


def test_signed_lut_and_window_are_read_with_their_signs() -> None:
    lut = read_voi(_case("signed", "MONOCHROME2", "16 words OW"))
    assert isinstance(lut, Lut) and lut.first_mapped == -924 and lut.bits == 16
    window = read_voi(_case("signed", "MONOCHROME2", "SIGMOID"))
    assert isinstance(window, Window) and window.center < 0 and window.function == "SIGMOID"


def test_voi_output_is_in_pydicoms_units() -> None:
    ds = _case("unsigned", "MONOCHROME2", "LINEAR")
    values, voi = voi_output(_stored(ds), ds)
    assert isinstance(voi, Window)
    np.testing.assert_array_equal(values, _pydicom_voi(ds))
    assert values.min() == 0.0 and values.max() == 4095.0


def test_apply_voi_functions() -> None:
    x = np.array([0.0, 900.0, 1000.0, 1100.0, 4000.0])
    linear = apply_voi(x, Window(1000.0, 201.0, None, "LINEAR"))
    np.testing.assert_allclose(linear, [0.0, 0.0025, 0.5025, 1.0, 1.0], atol=1e-3)
    sigmoid = apply_voi(x, Window(1000.0, 200.0, None, "SIGMOID"))
    assert sigmoid[2] == pytest.approx(0.5) and np.all(np.diff(sigmoid) > 0)
    exact = apply_voi(x, Window(1000.0, 200.0, None, "LINEAR_EXACT"))
    np.testing.assert_allclose(exact, [0.0, 0.0, 0.5, 1.0, 1.0])
    holder = Dataset()
    holder.VOILUTSequence = [_lut_item(np.array([0, 100, 255]), 900, 8, "OW", 2)]
    lut = read_voi(holder)
    assert isinstance(lut, Lut) and lut.data.tolist() == [0, 100, 255]
    y = np.array([850.0, 900.0, 901.2, 902.0, 950.0])
    np.testing.assert_allclose(apply_voi(y, lut), [0.0, 0.0, 100 / 255, 1.0, 1.0])
    np.testing.assert_allclose(apply_voi(x, None), x / 4000.0)


def test_presentation_lut_sequence_and_shapes() -> None:
    unit = np.linspace(0.0, 0.8, 9)  # does not reach white
    state = Dataset()
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 8])
    item.add_new("LUTData", "OW", np.arange(255, -1, -1, dtype=np.uint8).tobytes())
    state.PresentationLUTSequence = [item]
    np.testing.assert_allclose(
        apply_presentation(unit, state, Dataset()), 1.0 - unit, atol=0.5 / 255
    )
    del state.PresentationLUTSequence
    mono1 = Dataset()
    mono1.PhotometricInterpretation = "MONOCHROME1"
    state.PresentationLUTShape = "IDENTITY"
    np.testing.assert_array_equal(apply_presentation(unit, state, mono1), unit)
    state.PresentationLUTShape = "INVERSE"
    np.testing.assert_array_equal(apply_presentation(unit, state, Dataset()), 1.0 - unit)
    np.testing.assert_array_equal(apply_presentation(unit, Dataset(), mono1), 1.0 - unit)


def test_an_invalid_window_is_a_header_error_for_models_and_viewers() -> None:
    ds = _case("unsigned", "MONOCHROME2", "LINEAR")
    ds.WindowWidth = 0
    for render in (lambda: display_image(ds, _stored(ds)), lambda: display_pixels(_stored(ds), ds)):
        with pytest.raises(UnsupportedImageError) as info:
            render()
        assert info.value.refusal is ImageRefusal.INVALID_HEADER
        assert "Window Width" in info.value.message


def test_a_short_voi_lut_is_a_header_error() -> None:
    ds = _case("unsigned", "MONOCHROME2", "16 words OW")
    ds.VOILUTSequence[0].LUTDescriptor = [4096, 300, 16]  # its data holds 1600
    with pytest.raises(UnsupportedImageError, match="1600 of its 4096 entries"):
        display_image(ds, _stored(ds))


def test_big_endian_lut_data_is_read_in_its_byte_order() -> None:
    ds = _case("unsigned", "MONOCHROME1", "16 words OW")
    big = copy.deepcopy(ds)
    item = big.VOILUTSequence[0]
    item.LUTData = np.frombuffer(item.LUTData, dtype="<u2").astype(">u2").tobytes()
    item.set_original_encoding(False, False, "iso8859")  # as read from a big endian file
    stored = _stored(ds)
    np.testing.assert_array_equal(display_pixels(stored, big), display_pixels(stored, ds))
    np.testing.assert_array_equal(display_image(big, stored)[0], display_image(ds, stored)[0])


# ----------------------------------------------------------------------------- pydicom 3.0

# A failure below (an assertion, or an expected error no longer raised) means pydicom was fixed.
_FIXED = "pydicom reads this table now: drop the workaround in spinexr.pipeline.display"


def test_pydicom_refuses_8bit_voi_luts_packed_as_the_standard_says() -> None:
    ds = _case("unsigned", "MONOCHROME2", "8 packed OW")
    with pytest.raises(struct.error, match="unpack_from requires a buffer"):
        apply_voi_lut(_stored(ds), ds)
    ds = _case("unsigned", "MONOCHROME2", "8 packed US")
    with pytest.raises(OverflowError):
        apply_voi_lut(_stored(ds), ds)
    # ...which the models and the viewers see as the same table with 16 bits per entry
    got, _ = display_image(ds, _stored(ds))
    np.testing.assert_array_equal(got, display_image(*_with_stored(_as_16_bits(ds)))[0])


def test_pydicom_wraps_8bit_voi_luts_of_more_than_256_entries_one_per_word() -> None:
    ds = _case("unsigned", "MONOCHROME2", "8 words OW")
    item = ds.VOILUTSequence[0]
    entries, first, _ = (int(v) for v in item.LUTDescriptor)
    index = np.clip(_stored(ds), first, first + entries - 1)
    table = _table(8, entries)
    by_pydicom = np.asarray(apply_voi_lut(index, ds), dtype=np.int64)
    right = table[index - first]
    assert not np.array_equal(by_pydicom, right), _FIXED
    np.testing.assert_array_equal(by_pydicom, table[(index - first) % 256])  # indices wrap
    got, _ = display_image(ds, _stored(ds))
    assert len(np.unique(got)) == 256  # the ramp, not a saw-tooth of the table's first entries


def test_pydicom_reads_8bit_voi_luts_of_at_most_256_entries_one_per_word() -> None:
    ds = _case("unsigned", "MONOCHROME2", "8 words OW 256")
    item = ds.VOILUTSequence[0]
    _, first, _ = (int(v) for v in item.LUTDescriptor)
    index = np.clip(_stored(ds), first, first + 255)
    np.testing.assert_array_equal(apply_voi_lut(index, ds), _table(8, 256)[index - first])


def test_pydicom_refuses_9bit_voi_luts() -> None:
    ds = _image(PIXELS["unsigned"], "MONOCHROME2")
    ds.VOILUTSequence = [_lut_item(_table(9, 4096), 0, 9, "OW", 1)]
    with pytest.raises(NotImplementedError, match="'9' bits per LUT entry"):
        apply_voi_lut(_stored(ds), ds)
    np.testing.assert_array_equal(
        display_pixels(_stored(ds), ds), np.rint(_table(9, 4096) / 511 * 255).reshape(SIDE, SIDE)
    )


def test_pydicom_presentation_lut_takes_the_image_extremes_for_black_and_white() -> None:
    unit = np.linspace(0.1, 0.8, 8)  # a picture that reaches neither black nor white
    inverse = Dataset()
    inverse.PresentationLUTShape = "INVERSE"
    by_pydicom = apply_presentation_lut(unit, inverse)
    assert not np.allclose(by_pydicom, 1.0 - unit), "pydicom's INVERSE is 1 - value now"
    np.testing.assert_allclose(by_pydicom, 0.8 - unit)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 8])
    item.add_new("LUTData", "OW", np.arange(256, dtype=np.uint8).tobytes())
    identity = Dataset()
    identity.PresentationLUTSequence = [item]
    stretched = apply_presentation_lut(unit, identity)
    assert stretched.min() == 0 and stretched.max() == 255, "pydicom's sequence is not min-max now"
    np.testing.assert_allclose(
        apply_presentation(unit, identity, Dataset()), np.rint(unit * 255) / 255
    )


def _with_stored(ds: Dataset) -> tuple[Dataset, npt.NDArray[np.int64]]:
    return ds, _stored(ds)

"""Preprocessing: VOI, MONOCHROME1, refusals, pixel spacing, geometry, transfer syntaxes."""

from __future__ import annotations

import copy
import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from testsupport import require_tool

from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.geometry import ResizeTransform
from spinexr.pipeline.preprocess import (
    CLASSIFIER_SIZE,
    VoiSource,
    display_image,
    prepare_image,
    resize_image,
)
from spinexr.pipeline.spacing import SpacingBasis, read_pixel_spacing
from spinexr.training.phantoms import make_phantom_image, write

SIZE = (128, 96)
MAX_STORED = 4095


def phantom(seed: int = 1, **kwargs: object) -> Dataset:
    ds, _ = make_phantom_image(seed, size=SIZE, **kwargs)  # type: ignore[arg-type]
    return ds


def stored(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array)


def set_native(ds: Dataset, arr: np.ndarray) -> None:
    """Replace the pixels with native (uncompressed) data of the same bit depth."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dtype = "<u2" if ds.BitsAllocated == 16 else "u1"
    ds.PixelData = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"


def first_window(ds: Dataset) -> tuple[float, float]:
    c, w = ds["WindowCenter"], ds["WindowWidth"]
    return float(c.value[0] if c.VM > 1 else c.value), float(w.value[0] if w.VM > 1 else w.value)


def reread(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    write(ds, buf)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def display(ds: Dataset) -> np.ndarray:
    return prepare_image(ds).display


def linear_window_lut(center: float, width: float, bits: int = 16) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) tabulated over stored values 0..4095."""
    x = np.arange(MAX_STORED + 1, dtype=np.float64)
    unit = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(unit * (2**bits - 1)).astype("<u2")


def voi_lut_item(lut: np.ndarray, bits: int = 16) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(lut), 0, bits])  # LUT Descriptor
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    return item


# --- VOI and MONOCHROME1 ------------------------------------------------------------------


def test_monochrome1_built_by_inverting_gives_the_same_arrays() -> None:
    mono2 = phantom(3)
    mono1 = copy.deepcopy(mono2)
    set_native(mono1, MAX_STORED - stored(mono2))
    center, width = first_window(mono2)
    # The exact mirror of a DICOM LINEAR window under x → 4095 − x has centre 4096 − c.
    mono1.WindowCenter, mono1.WindowWidth = 4096 - center, width
    mono1.PhotometricInterpretation = "MONOCHROME1"
    a, b = prepare_image(mono2), prepare_image(mono1)
    assert a.voi is b.voi is VoiSource.WINDOW
    np.testing.assert_array_equal(a.display, b.display)
    np.testing.assert_array_equal(a.classifier_input, b.classifier_input)
    np.testing.assert_array_equal(a.detector_input, b.detector_input)
    assert b.photometric == "MONOCHROME1"


def test_monochrome1_without_voi_is_exactly_inverted() -> None:
    mono2 = phantom(4, window=False)
    mono1 = copy.deepcopy(mono2)
    set_native(mono1, MAX_STORED - stored(mono2))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(display(mono2), display(mono1))


@pytest.mark.parametrize("voi", ["window", "lut"])
def test_phantom_factory_monochrome1_matches_monochrome2(voi: str) -> None:
    # The factory mirrors the window exactly (c -> 4096 - c); its 16-bit sigmoid LUT
    # mirrors up to the rounding of a few table entries.
    kw: dict[str, object] = {"voi_lut_sequence": voi == "lut"}
    a = display(phantom(5, **kw)).astype(int)
    b = display(phantom(5, photometric="MONOCHROME1", **kw)).astype(int)
    if voi == "window":
        np.testing.assert_array_equal(a, b)
    else:
        assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.001


def test_monochrome1_inversion_happens_after_voi() -> None:
    # With a narrow window, inverting before VOI (window on inverted values with the
    # original centre) would give a different picture; after VOI it is the mirror image.
    ds = phantom(6)
    ds.WindowCenter, ds.WindowWidth = 1500, 400
    plain = display(ds).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = display(ds).astype(int)
    np.testing.assert_array_equal(inverted, 255 - plain)


def test_voi_lut_sequence_matches_the_window_it_encodes() -> None:
    windowed = phantom(7)
    center, width = first_window(windowed)
    lut_only = copy.deepcopy(windowed)
    del lut_only.WindowCenter, lut_only.WindowWidth
    if "WindowCenterWidthExplanation" in lut_only:
        del lut_only.WindowCenterWidthExplanation
    lut_only.VOILUTSequence = DicomSequence([voi_lut_item(linear_window_lut(center, width))])
    a, b = prepare_image(windowed), prepare_image(lut_only)
    assert a.voi is VoiSource.WINDOW and b.voi is VoiSource.LUT_SEQUENCE
    assert np.abs(a.display.astype(int) - b.display.astype(int)).max() <= 1


def test_voi_lut_sequence_takes_precedence_over_window() -> None:
    ds = phantom(8)
    center, width = first_window(ds)
    seq = DicomSequence([voi_lut_item(linear_window_lut(center + 300, width / 2))])
    lut_only = copy.deepcopy(ds)
    del lut_only.WindowCenter, lut_only.WindowWidth
    lut_only.VOILUTSequence = seq
    both = copy.deepcopy(ds)
    both.VOILUTSequence = copy.deepcopy(seq)
    assert prepare_image(both).voi is VoiSource.LUT_SEQUENCE
    np.testing.assert_array_equal(display(both), display(lut_only))
    assert not np.array_equal(display(both), display(ds))


def test_first_window_is_used() -> None:
    ds = phantom(9)
    center, width = first_window(ds)
    two = copy.deepcopy(ds)
    two.WindowCenter, two.WindowWidth = [center, center + 500], [width, 200]
    one = copy.deepcopy(ds)
    one.WindowCenter, one.WindowWidth = center, width
    np.testing.assert_array_equal(display(two), display(one))


def test_full_range_without_voi() -> None:
    ds = phantom(10, window=False)
    assert prepare_image(ds).voi is VoiSource.FULL_RANGE
    s = stored(ds).astype(np.float64)
    expected = np.rint((s - s.min()) / (s.max() - s.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(display(ds), expected)


def test_modality_rescale_is_applied_before_the_window() -> None:
    ds = phantom(11)
    center, width = first_window(ds)
    rescaled = copy.deepcopy(ds)
    rescaled.RescaleSlope, rescaled.RescaleIntercept = 2, -1000
    # Window in output units of the rescale: the same picture.
    rescaled.WindowCenter, rescaled.WindowWidth = 2 * center - 1000 - 0.5, 2 * (width - 1) + 1
    assert np.abs(display(rescaled).astype(int) - display(ds).astype(int)).max() <= 1


def test_constant_image_gives_zeros_and_voi_lut_handles_float_rescale() -> None:
    ds = phantom(12, window=False)
    set_native(ds, np.full(SIZE, 700, np.uint16))
    assert not display(ds).any()
    lut = phantom(12, voi_lut_sequence=True)
    lut.RescaleSlope, lut.RescaleIntercept = "1.0", "0.25"  # non-integer modality output
    out, voi = display_image(lut, stored(lut))
    assert voi is VoiSource.LUT_SEQUENCE and out.dtype == np.uint8 and out.max() == 255


# --- outputs and geometry ---------------------------------------------------------------


def test_prepared_image_shapes_and_transforms() -> None:
    ds = phantom(13, sop_class="DX")
    p = prepare_image(ds)
    assert p.original_size == SIZE
    assert p.sop_instance_uid == ds.SOPInstanceUID
    assert p.series_instance_uid == ds.SeriesInstanceUID
    assert p.display.shape == SIZE and p.display.dtype == np.uint8
    assert p.classifier_input.shape == (*CLASSIFIER_SIZE, 3)
    assert min(p.detector_input.shape[:2]) == 800 and max(p.detector_input.shape[:2]) <= 1333
    assert p.detector_input.dtype == np.uint8 and p.detector_input.flags["C_CONTIGUOUS"]
    assert p.detector_transform.resized_size == p.detector_input.shape[:2]
    assert p.classifier_transform.resized_size == CLASSIFIER_SIZE
    for ch in range(1, 3):
        np.testing.assert_array_equal(p.classifier_input[..., 0], p.classifier_input[..., ch])
    small = prepare_image(ds, detector_scale=(384, 640))
    assert min(small.detector_input.shape[:2]) == 384 or max(small.detector_input.shape[:2]) == 640
    assert max(small.detector_input.shape[:2]) <= 640
    assert small.detector_transform.resized_size == small.detector_input.shape[:2]


@pytest.mark.parametrize("original", [(128, 96), (2585, 1921), (1800, 3000), (300, 2000)])
def test_box_coordinates_round_trip(original: tuple[int, int]) -> None:
    from spinexr.pipeline.geometry import detector_size

    rows, cols = original
    rng = np.random.default_rng(rows * cols)
    x = np.sort(rng.uniform(0, cols, (50, 2)), axis=1)
    y = np.sort(rng.uniform(0, rows, (50, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    boxes[0] = [0, 0, cols, rows]
    for size in (CLASSIFIER_SIZE, detector_size(rows, cols)):
        tf = ResizeTransform(original, size)
        resized = tf.to_resized(boxes)
        assert resized[0].tolist() == pytest.approx([0, 0, size[1], size[0]])
        back = tf.to_original(resized)
        assert np.abs(back - boxes).max() < 1e-6


@pytest.mark.parametrize(("original", "size"), [((512, 384), (224, 224)), ((128, 96), (1067, 800))])
def test_resize_image_agrees_with_transform(
    original: tuple[int, int], size: tuple[int, int]
) -> None:
    img = np.zeros(original, np.uint8)
    box = np.array([30.0, 40.0, 70.0, 100.0])  # xmin, ymin, xmax, ymax on pixel edges
    img[40:100, 30:70] = 255
    out = resize_image(img, size)
    assert out.shape == size
    ys, xs = np.nonzero(out >= 128)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    expected = ResizeTransform(original, size).to_resized(box)[0]
    assert np.abs(found - expected).max() <= 1.0


# --- pixel spacing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixel", "imager", "basis", "value"),
    [
        ([0.2, 0.2], None, SpacingBasis.PIXEL_SPACING, (0.2, 0.2)),
        ([0.2, 0.25], [0.22, 0.22], SpacingBasis.PIXEL_SPACING, (0.2, 0.25)),
        (None, [0.15, 0.15], SpacingBasis.IMAGER_PIXEL_SPACING, (0.15, 0.15)),
        ([0, 0], [0.15, 0.15], SpacingBasis.IMAGER_PIXEL_SPACING, (0.15, 0.15)),
        ([0, 0], [0, 0], SpacingBasis.NONE, None),
        (None, None, SpacingBasis.NONE, None),
    ],
)
def test_pixel_spacing_basis(
    pixel: list[float] | None,
    imager: list[float] | None,
    basis: SpacingBasis,
    value: tuple[float, float] | None,
) -> None:
    ds = Dataset()
    if pixel is not None:
        ds.PixelSpacing = pixel
    if imager is not None:
        ds.ImagerPixelSpacing = imager
    spacing = read_pixel_spacing(ds)
    assert spacing.basis is basis
    got = None if spacing.row_mm is None else (spacing.row_mm, spacing.column_mm)
    assert got == value


def test_prepared_image_reports_spacing_basis() -> None:
    ds = phantom(14, sop_class="DX")
    if "PixelSpacing" in ds:
        del ds.PixelSpacing
    assert prepare_image(ds).pixel_spacing.basis is SpacingBasis.IMAGER_PIXEL_SPACING


# --- refusals --------------------------------------------------------------------------------


def tiny_dataset(rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def refusal(ds: Dataset, **kwargs: int) -> UnsupportedImageError:
    with pytest.raises(UnsupportedImageError) as info:
        prepare_image(ds, **kwargs)
    return info.value


def test_refuses_multi_frame() -> None:
    ds = phantom(15)
    ds.NumberOfFrames = 2
    err = refusal(ds)
    assert err.refusal is ImageRefusal.MULTI_FRAME and err.reason == "multi_frame"
    assert "NumberOfFrames = 2" in err.message
    assert err.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize(("samples", "photometric"), [(3, "RGB"), (1, "PALETTE COLOR")])
def test_refuses_colour(samples: int, photometric: str) -> None:
    ds = tiny_dataset(80, 80)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    err = refusal(ds)
    assert err.refusal is ImageRefusal.NOT_MONOCHROME and photometric in err.message


def test_refuses_real_rgb_file() -> None:
    path = get_testdata_file("US1_UNCR.dcm")
    assert path is not None
    assert refusal(pydicom.dcmread(path)).refusal is ImageRefusal.NOT_MONOCHROME


def test_refuses_missing_pixel_data() -> None:
    ds = phantom(16)
    del ds.PixelData
    err = refusal(ds)
    assert err.refusal is ImageRefusal.NO_PIXEL_DATA and "Pixel Data" in err.message


def test_refuses_too_small() -> None:
    err = refusal(tiny_dataset(48, 200))
    assert err.refusal is ImageRefusal.TOO_SMALL and "48×200" in err.message
    assert refusal(phantom(17), min_size=100).refusal is ImageRefusal.TOO_SMALL
    assert prepare_image(tiny_dataset(64, 64)).display.shape == (64, 64)


def test_undecodable_jpeg2000_gives_reason() -> None:
    ds = phantom(18, compressed=True)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + garbage])
    err = refusal(ds)
    assert err.refusal is ImageRefusal.UNDECODABLE
    assert "JPEG 2000" in err.message and "decode" in err.message
    assert isinstance(err.__cause__, Exception)


def test_truncated_native_pixel_data_is_undecodable() -> None:
    ds = phantom(19)
    ds.PixelData = ds.PixelData[:1000]
    assert refusal(ds).refusal is ImageRefusal.UNDECODABLE


def test_invalid_window_is_a_header_error() -> None:
    ds = phantom(20)
    ds.WindowCenter, ds.WindowWidth = 100, 0
    assert refusal(ds).refusal is ImageRefusal.INVALID_HEADER


# --- transfer syntaxes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> Dataset:
    """A 12-bit MONOCHROME2 phantom in Explicit VR Little Endian."""
    ds = phantom(21)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    return ds


def encoded(reference: Dataset, syntax: UID) -> Dataset:
    ds = copy.deepcopy(reference)
    if syntax.is_compressed:
        ds.compress(syntax, stored(reference), generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    out = reread(ds)
    assert out.file_meta.TransferSyntaxUID == syntax
    return out


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
    ids=lambda u: u.name,
)
def test_lossless_syntaxes_decode_exactly(reference: Dataset, syntax: UID) -> None:
    ds = encoded(reference, syntax)
    expected = prepare_image(reference)
    got = prepare_image(ds)
    np.testing.assert_array_equal(got.display, expected.display)
    np.testing.assert_array_equal(got.detector_input, expected.detector_input)


def to_8bit(reference: Dataset) -> Dataset:
    ds = copy.deepcopy(reference)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    center, width = first_window(reference)
    ds.WindowCenter, ds.WindowWidth = round(center / 16), round(width / 16)
    set_native(ds, (stored(reference) >> 4).astype(np.uint8))
    return ds


def test_jpeg_baseline_8bit_from_pillow(reference: Dataset) -> None:
    native = to_8bit(reference)
    buf = io.BytesIO()
    Image.fromarray(stored(native)).save(buf, format="JPEG", quality=95, subsampling=0)
    assert buf.getvalue()[:2] == b"\xff\xd8"
    ds = copy.deepcopy(native)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds = reread(ds)
    diff = np.abs(display(ds).astype(int) - display(native).astype(int))
    assert diff.mean() < 2.0 and diff.max() <= 40


@pytest.mark.parametrize(
    ("option", "syntax", "lossless"),
    [
        ("+e1", JPEGLosslessSV1, True),
        ("+el", JPEGLossless, True),
        ("+ee", JPEGExtended12Bit, False),
    ],
    ids=["JPEGLosslessSV1", "JPEGLosslessP14", "JPEGExtended12Bit"],
)
def test_jpeg_12bit_syntaxes_from_dcmtk(
    reference: Dataset, tmp_path: Path, option: str, syntax: UID, lossless: bool
) -> None:
    # No Python encoder writes 12-bit JPEG (extended or lossless): dcmtk's dcmcjpeg does.
    tool = require_tool("dcmcjpeg")
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    write(reference, src)
    # +sr: no pixel-range rescaling for lossy; +un: keep the UIDs.
    subprocess.run([tool, option, "+sr", "+un", str(src), str(dst)], check=True)
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID == syntax and ds.BitsStored == 12
    got, expected = display(ds).astype(int), display(reference).astype(int)
    if lossless:
        np.testing.assert_array_equal(got, expected)
    else:
        diff = np.abs(got - expected)
        assert diff.mean() < 2.0 and diff.max() <= 40


def sample(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available locally (pydicom-data)")
    return pydicom.dcmread(path)


def test_real_jpeg_extended_and_lossless_samples_agree() -> None:
    # pydicom's JPGExtended.dcm (12-bit, process 4) is a lossy copy of pydicom-data's
    # JPEG-LL.dcm (lossless, process 14 SV1): decoded by different codecs, they must agree.
    lossy, lossless = sample("JPGExtended.dcm"), sample("JPEG-LL.dcm")
    assert lossy.file_meta.TransferSyntaxUID == JPEGExtended12Bit
    assert lossless.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    a, b = prepare_image(lossy, min_size=64), prepare_image(lossless, min_size=64)
    assert a.original_size == b.original_size == (1024, 256)
    diff = np.abs(a.display.astype(int) - b.display.astype(int))
    assert diff.mean() < 3.0


def test_real_monochrome1_jpeg2000_sample_matches_uncompressed() -> None:
    compressed, native = sample("RG3_J2KR.dcm"), sample("RG3_UNCR.dcm")
    assert compressed.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(
        prepare_image(compressed).classifier_input, prepare_image(native).classifier_input
    )

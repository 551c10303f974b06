"""DICOM → model inputs: the one deterministic preprocessing path (``method.md`` section 3).

Steps, in order:

1. Refuse what the method does not cover (multi-frame, colour, no pixel data, too small).
2. Decode the pixel data with pydicom's decoders (native, deflated, RLE, JPEG baseline /
   extended / lossless, JPEG-LS, JPEG 2000; the plugin as `spinexr.pipeline.decoding`
   chooses). A failure is an error with a reason; there is no histogram-equalisation
   fallback.
3. Modality LUT (Modality LUT Sequence or Rescale Slope/Intercept), then VOI: the VOI LUT
   Sequence's first item when present, else the first Window Center/Width pair, else the
   full range of the data (`spinexr.pipeline.display`, shared with previews and captures).
4. MONOCHROME1: invert **after** the VOI step.
5. Min-max to ``0..255`` ``uint8`` (a constant image becomes all zeros).
6. Resize with `resize_image` (``INTER_AREA`` when shrinking both axes, else bilinear) to
   224×224 for the classifier and to `geometry.detector_size` for the detector; replicate
   the grey channel to 3.

Model inputs are ``uint8`` HxWx3 arrays; the classifier adds ImageNet normalisation itself
(`spinexr.pipeline.classifier`), MMDetection's data preprocessor does the detector's.
Training must build its inputs with the same functions (`decode_pixels`, `display_image`,
`resize_image`, `gray_to_rgb`) so that training and serving see the same pixels.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from spinexr.pipeline.decoding import decode_first_frame
from spinexr.pipeline.display import Lut, Voi, voi_output
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.geometry import ResizeTransform, detector_size
from spinexr.pipeline.spacing import PixelSpacing, read_pixel_spacing

logger = logging.getLogger(__name__)

CLASSIFIER_SIZE: Final = (224, 224)
"""(rows, columns) of the classifier input (aspect ratio not preserved)."""

DETECTOR_SHORTER: Final = 800
"""Shorter side of the detector input at inference."""

DETECTOR_LONGER_MAX: Final = 1333
"""Upper bound on the longer side of the detector input."""

DETECTOR_SCALE_KEYS: Final = ("detector_shorter", "detector_longer_max")
"""`PREPROCESSING` keys a bundle may set for its detector (the scale it was trained at)."""

DETECTOR_SCALE_RANGE: Final = (128, 4096)
"""Accepted range of a bundle's detector input sides."""

MIN_SIZE: Final = 64
"""Default smallest accepted number of rows and of columns."""

PREPROCESSING: Final[Mapping[str, Any]] = {
    "decode": "pydicom_no_fallback",
    "modality_lut": "sequence_else_rescale",
    "voi": "sequence_else_first_window_else_full_range",
    "monochrome1": "invert_after_voi",
    "intensity": "min_max_uint8",
    "channels": 3,
    "resize": "cv2_area_if_shrinking_else_linear",
    "classifier_size": list(CLASSIFIER_SIZE),
    "detector_shorter": DETECTOR_SHORTER,
    "detector_longer_max": DETECTOR_LONGER_MAX,
    "normalisation": "imagenet",
}
"""What a bundle's manifest must state as its ``preprocessing`` (checked on load)."""

_MONOCHROME: Final = ("MONOCHROME1", "MONOCHROME2")


class VoiSource(enum.StrEnum):
    """Which VOI transformation was applied."""

    LUT_SEQUENCE = "voi_lut_sequence"
    WINDOW = "window"
    FULL_RANGE = "full_range"

    @classmethod
    def of(cls, voi: Voi) -> VoiSource:
        """Name a VOI chosen by `spinexr.pipeline.display.read_voi`."""
        if isinstance(voi, Lut):
            return cls.LUT_SEQUENCE
        return cls.FULL_RANGE if voi is None else cls.WINDOW


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image, decoded and resized for both models.

    Attributes
    ----------
    sop_instance_uid : str
        The source image.
    series_instance_uid : str or None
        Its series, when the header has one.
    original_size : tuple of int
        (rows, columns) of the source image.
    display : numpy.ndarray
        ``uint8`` (rows, columns) image after VOI, inversion and min-max (bone bright).
    classifier_input : numpy.ndarray
        ``uint8`` 224×224×3, not normalised.
    classifier_transform : ResizeTransform
        Original ↔ classifier-input coordinates.
    detector_input : numpy.ndarray
        ``uint8`` HxWx3, shorter side 800, longer side ≤ 1333 (or the bundle's scale).
    detector_transform : ResizeTransform
        Original ↔ detector-input coordinates.
    pixel_spacing : PixelSpacing
        Spacing and its basis.
    photometric : str
        ``MONOCHROME1`` or ``MONOCHROME2`` (for GSPS builders).
    voi : VoiSource
        Which VOI step was applied.
    """

    sop_instance_uid: str
    series_instance_uid: str | None
    original_size: tuple[int, int]
    display: npt.NDArray[np.uint8]
    classifier_input: npt.NDArray[np.uint8]
    classifier_transform: ResizeTransform
    detector_input: npt.NDArray[np.uint8]
    detector_transform: ResizeTransform
    pixel_spacing: PixelSpacing
    photometric: str
    voi: VoiSource


def prepare_image(
    ds: Dataset,
    *,
    min_size: int = MIN_SIZE,
    detector_scale: tuple[int, int] = (DETECTOR_SHORTER, DETECTOR_LONGER_MAX),
) -> PreparedImage:
    """Run the whole preprocessing path on one dataset.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A single-frame greyscale image with its file meta (for the transfer syntax).
    min_size : int
        Smallest accepted number of rows and of columns.
    detector_scale : tuple of int
        (shorter side, upper bound of the longer side) of the detector input: the paper's
        800 and 1333 unless the bundle's detector was trained at another scale
        (`spinexr.pipeline.bundle.Bundle.detector_scale`).

    Returns
    -------
    PreparedImage
        Model inputs, transforms and header facts.

    Raises
    ------
    UnsupportedImageError
        With reason ``multi_frame``, ``not_monochrome``, ``no_pixel_data``, ``too_small``,
        ``undecodable`` or ``invalid_header``.
    """
    try:
        return _prepare(ds, min_size, detector_scale)
    except HEADER_VALUE_ERRORS as exc:
        raise UnsupportedImageError(
            ImageRefusal.INVALID_HEADER,
            f"a header value cannot be read: {_one_line(exc)}",
            sop_instance_uid=_sop_uid_or_none(ds),
        ) from exc


HEADER_VALUE_ERRORS: Final = (NotImplementedError, BytesLengthException)
"""What pydicom raises when it converts a malformed value on first use (an unknown VR, a
length that does not fit the VR): ingest reads only the values it needs, so the others are
first converted here."""


def _sop_uid_or_none(ds: Dataset) -> str | None:
    try:
        return str(ds.get("SOPInstanceUID", "")) or None
    except HEADER_VALUE_ERRORS:
        return None


def _prepare(ds: Dataset, min_size: int, detector_scale: tuple[int, int]) -> PreparedImage:
    check_supported(ds, min_size=min_size)
    stored = decode_pixels(ds)
    display, voi = display_image(ds, stored)
    rows, cols = display.shape
    cls_size = CLASSIFIER_SIZE
    det_size = detector_size(rows, cols, *detector_scale)
    series = ds.get("SeriesInstanceUID")
    return PreparedImage(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(series) if series else None,
        original_size=(rows, cols),
        display=display,
        classifier_input=gray_to_rgb(resize_image(display, cls_size)),
        classifier_transform=ResizeTransform((rows, cols), cls_size),
        detector_input=gray_to_rgb(resize_image(display, det_size)),
        detector_transform=ResizeTransform((rows, cols), det_size),
        pixel_spacing=read_pixel_spacing(ds),
        photometric=str(ds.PhotometricInterpretation),
        voi=voi,
    )


def check_supported(ds: Dataset, *, min_size: int = MIN_SIZE) -> None:
    """Refuse, with a typed error, an image the method does not cover.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.
    min_size : int
        Smallest accepted number of rows and of columns.

    Raises
    ------
    UnsupportedImageError
        For a missing SOP Instance UID or Rows/Columns (``invalid_header``), no (integer)
        Pixel Data, more than one frame, SamplesPerPixel ≠ 1 or a photometric
        interpretation other than MONOCHROME1/2, or fewer than `min_size` rows or columns.
    """
    uid = str(ds.get("SOPInstanceUID") or "") or None

    def refuse(reason: ImageRefusal, message: str) -> UnsupportedImageError:
        return UnsupportedImageError(reason, message, sop_instance_uid=uid)

    if uid is None:
        raise refuse(ImageRefusal.INVALID_HEADER, "the image has no SOP Instance UID")
    if "PixelData" not in ds or ds["PixelData"].is_empty:
        others = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        extra = f" (it has {others[0]}, which is not supported)" if others else ""
        raise refuse(ImageRefusal.NO_PIXEL_DATA, f"the dataset has no Pixel Data{extra}")
    frames = _int_or_none(ds, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise refuse(
            ImageRefusal.MULTI_FRAME,
            f"multi-frame images are not supported (NumberOfFrames = {frames})",
        )
    samples = _int_or_none(ds, "SamplesPerPixel")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples not in (None, 1) or photometric not in _MONOCHROME:
        raise refuse(
            ImageRefusal.NOT_MONOCHROME,
            "only greyscale images are supported (SamplesPerPixel = "
            f"{samples}, PhotometricInterpretation = {photometric or 'absent'})",
        )
    rows, cols = _int_or_none(ds, "Rows"), _int_or_none(ds, "Columns")
    if rows is None or cols is None:
        raise refuse(ImageRefusal.INVALID_HEADER, "Rows or Columns is missing")
    if rows < min_size or cols < min_size:
        raise refuse(
            ImageRefusal.TOO_SMALL,
            f"the image is {rows}×{cols} pixels; at least {min_size}×{min_size} is needed",
        )


def decode_pixels(ds: Dataset) -> npt.NDArray[Any]:
    """Decode the stored values of a single-frame greyscale image.

    The dataset is not modified (nothing is cached on it), so a large study can be decoded
    one image at a time with bounded memory.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image (checked by `check_supported`).

    Returns
    -------
    numpy.ndarray
        (rows, columns) stored values, integer dtype.

    Raises
    ------
    UnsupportedImageError
        ``undecodable``, with the decoder's message.
    """
    ts = transfer_syntax(ds)
    try:
        arr = decode_first_frame(ds, ts)
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError...
        raise UnsupportedImageError(
            ImageRefusal.UNDECODABLE,
            f"cannot decode the pixel data ({ts.name}): {_one_line(exc)}",
            sop_instance_uid=str(ds.SOPInstanceUID),
        ) from exc
    except BaseException as exc:
        # A decoder written in Rust (pylibjpeg-rle) panics on some broken streams: pyo3's
        # PanicException derives from BaseException, not Exception.
        if type(exc).__name__ != "PanicException":
            raise
        raise UnsupportedImageError(
            ImageRefusal.UNDECODABLE,
            f"cannot decode the pixel data ({ts.name}): the decoder panicked",
            sop_instance_uid=str(ds.SOPInstanceUID),
        ) from exc
    if arr.ndim != 2:
        raise UnsupportedImageError(
            ImageRefusal.NOT_MONOCHROME,
            f"decoded pixel data has shape {arr.shape}, expected (rows, columns)",
            sop_instance_uid=str(ds.SOPInstanceUID),
        )
    return arr


def transfer_syntax(ds: Dataset) -> UID:
    """Return the dataset's transfer syntax, inferring a native one when file meta lacks it.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The dataset.

    Returns
    -------
    pydicom.uid.UID
        From the file meta; else implicit / explicit VR little endian or explicit VR big
        endian from how the dataset was read; else explicit VR little endian.
    """
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def display_image(ds: Dataset, stored: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8], VoiSource]:
    """Apply Modality LUT, VOI, MONOCHROME1 inversion and min-max to stored values.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Supplies the Modality LUT, VOI LUT and Image Pixel modules.
    stored : numpy.ndarray
        Decoded stored values.

    Returns
    -------
    tuple of (numpy.ndarray, VoiSource)
        ``uint8`` image with bone bright, and which VOI was applied.

    Raises
    ------
    UnsupportedImageError
        ``invalid_header`` when a LUT or window cannot be applied (e.g. width < 1).
    """
    values, voi = voi_output(stored, ds)
    invert = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    return min_max_uint8(values, invert=invert), VoiSource.of(voi)


def min_max_uint8(values: npt.NDArray[np.float64], *, invert: bool) -> npt.NDArray[np.uint8]:
    """Scale to ``0..255`` by the array's own minimum and maximum, optionally inverted.

    Parameters
    ----------
    values : numpy.ndarray
        Values after VOI.
    invert : bool
        Map the minimum to 255 and the maximum to 0 (MONOCHROME1).

    Returns
    -------
    numpy.ndarray
        ``uint8``, rounded to nearest; all zeros for a constant image.
    """
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        logger.debug("constant image: min-max gives zeros")
        return np.zeros(values.shape, dtype=np.uint8)
    unit = values - lo  # one temporary, then the same operations in place
    unit /= hi - lo
    if invert:
        np.subtract(1.0, unit, out=unit)
    unit *= 255.0
    np.rint(unit, out=unit)
    return unit.astype(np.uint8)


def resize_image(image: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Resize an image to ``(rows, columns)``; the one resize used by training and serving.

    Uses OpenCV's ``INTER_AREA`` (pixel-area averaging, no aliasing) when neither axis grows
    and bilinear ``INTER_LINEAR`` otherwise. Pixel centres follow OpenCV's half-pixel
    convention, consistent with `ResizeTransform` (a box edge at x maps to x·scale).

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` HxW or HxWxC.
    size : tuple of int
        Target (rows, columns).

    Returns
    -------
    numpy.ndarray
        The resized ``uint8`` image (a copy even when the size is unchanged).
    """
    rows, cols = image.shape[:2]
    if (rows, cols) == tuple(size):
        return image.copy()
    shrinking = size[0] <= rows and size[1] <= cols
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(image, (int(size[1]), int(size[0])), interpolation=interpolation)
    return np.asarray(out, dtype=np.uint8)


def gray_to_rgb(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Replicate a HxW grey image to a contiguous HxWx3 array."""
    return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(
            ImageRefusal.INVALID_HEADER,
            f"{keyword} is not an integer: {_one_line(exc)}",
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__

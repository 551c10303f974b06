"""Build realistic CR / DX "For Presentation" DICOM datasets around phantom pixels.

The headers follow the CR Image and Digital X-Ray Image (For Presentation) IODs closely
enough to pass ``dciodvfy`` without errors. ``vindr_like`` headers imitate the hard
de-identification of VinDr-SpineXR instead (``method.md`` section 2).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from pydicom import __version__ as pydicom_version
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from spinexr.training.phantoms.anatomy import Region, View
from spinexr.training.phantoms.render import MAX_STORED

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
SopKind = Literal["CR", "DX"]

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
"""Root for phantom UIDs: pydicom's root, under which `generate_uid` derives UIDs from a
SHA-512 of the entropy sources (deterministic for a seed)."""

MANUFACTURER = "spinexr-node phantom"

SOP_CLASS_UIDS: dict[SopKind, UID] = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}

_ANATOMY_CODES: dict[Region, tuple[str, str]] = {
    "LSPINE": ("122496007", "Lumbar spine"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "SPINE": ("421060004", "Spine"),
}
_VIEW_CODES: dict[View, tuple[str, str]] = {
    "AP": ("399348003", "antero-posterior"),
    "LAT": ("399173006", "left lateral"),
}
_REGION_TEXT: dict[Region, str] = {
    "LSPINE": "LUMBAR SPINE",
    "TSPINE": "THORACIC SPINE",
    "SPINE": "THORACOLUMBAR SPINE",
}


@dataclass(frozen=True)
class PatientInfo:
    """Synthetic patient demographics.

    Parameters
    ----------
    name : str
        DICOM person name, e.g. ``"PHANTOM^0001"``.
    patient_id : str
        Patient ID.
    birth_date : str
        ``YYYYMMDD``.
    sex : str
        ``"M"``, ``"F"`` or ``"O"``.
    age_years : int
        Age at the study.
    """

    name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int


@dataclass(frozen=True)
class HeaderSpec:
    """Everything `build_dataset` needs besides the pixels.

    Parameters
    ----------
    sop_class : {"CR", "DX"}
        CR Image Storage or Digital X-Ray Image Storage – For Presentation.
    photometric : {"MONOCHROME1", "MONOCHROME2"}
        Photometric interpretation; MONOCHROME1 stores inverted values.
    compressed : bool
        JPEG 2000 Lossless when true, Explicit VR Little Endian otherwise.
    window : bool
        Write Window Center/Width.
    voi_lut_sequence : bool
        Write a VOI LUT Sequence.
    second_window : bool
        Write a second (narrower) window pair after the first.
    study_uid, series_uid, sop_instance_uid : str
        Identifiers (32-char hex strings when ``vindr_like``).
    patient : PatientInfo
        Demographics.
    study_date, study_time, content_time : str
        ``YYYYMMDD`` / ``HHMMSS`` (fixed, derived from the seed).
    study_id, accession_number : str
        Study identifiers.
    series_number, instance_number : int
        Numbers within the study / series.
    view : {"AP", "LAT"}
        Projection.
    region : {"LSPINE", "TSPINE", "SPINE"}
        Body part.
    pixel_spacing_mm : float
        Detector pixel pitch.
    both_spacings : bool
        Write both Pixel Spacing and Imager Pixel Spacing.
    model : str
        Manufacturer model name.
    device_serial : str
        Device serial number.
    kvp : float
        Peak kilovoltage.
    vindr_like : bool
        Strip the header like the VinDr-SpineXR release.
    """

    sop_class: SopKind
    photometric: Photometric
    compressed: bool
    window: bool
    voi_lut_sequence: bool
    second_window: bool
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    patient: PatientInfo
    study_date: str
    study_time: str
    content_time: str
    study_id: str
    accession_number: str
    series_number: int
    instance_number: int
    view: View
    region: Region
    pixel_spacing_mm: float
    both_spacings: bool
    model: str
    device_serial: str
    kvp: float
    vindr_like: bool = False


def phantom_uid(*entropy: object) -> str:
    """Return a valid DICOM UID derived deterministically from ``entropy``.

    Parameters
    ----------
    *entropy : object
        Values whose ``str`` feeds the hash.

    Returns
    -------
    str
        A UID under `UID_PREFIX`.
    """
    return str(generate_uid(UID_PREFIX, [str(e) for e in entropy]))


def hex_uid(*entropy: object) -> str:
    """Return a 32-character lowercase hex identifier (VinDr-style, not a DICOM UID).

    Parameters
    ----------
    *entropy : object
        Values whose ``str`` feeds the hash.

    Returns
    -------
    str
        32 hex digits.
    """
    text = "\x1f".join(str(e) for e in entropy)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_dataset(display: npt.NDArray[np.uint16], spec: HeaderSpec) -> Dataset:
    """Wrap a display-oriented 12-bit image in a DICOM dataset.

    Parameters
    ----------
    display : numpy.ndarray
        ``uint16`` ``(rows, cols)`` image, 0..4095, bone bright.
    spec : HeaderSpec
        Header choices.

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta, preamble and (possibly compressed) Pixel Data, ready for `write`.
    """
    rows, cols = display.shape
    mono1 = spec.photometric == "MONOCHROME1"
    stored = (MAX_STORED - display).astype(np.uint16) if mono1 else display
    center, width, bone_center, bone_width = _windows(display)
    lut_center = center
    if mono1:
        # Mirror of DICOM's LINEAR window under x -> 4095 - x: c -> 4096 - c (PS3.3
        # C.11.2.1.2.1); the sigmoid LUT is symmetric about its centre: c -> 4095 - c.
        center, bone_center = MAX_STORED + 1 - center, MAX_STORED + 1 - bone_center
        lut_center = MAX_STORED - lut_center

    ds = Dataset()
    vindr = spec.vindr_like
    if not vindr:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceCreationDate = spec.study_date
        ds.InstanceCreationTime = spec.content_time
        ds.SOPClassUID = SOP_CLASS_UIDS[spec.sop_class]
    _set_uid(ds, "SOPInstanceUID", spec.sop_instance_uid, vindr)
    if not vindr:
        ds.StudyDate = spec.study_date
        ds.SeriesDate = spec.study_date
        ds.AcquisitionDate = spec.study_date
        ds.ContentDate = spec.study_date
        ds.StudyTime = spec.study_time
        ds.SeriesTime = spec.study_time
        ds.AcquisitionTime = spec.content_time
        ds.ContentTime = spec.content_time
        ds.AccessionNumber = spec.accession_number
        ds.Modality = spec.sop_class
        if spec.sop_class == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = "Phantom Hospital"
        ds.ReferringPhysicianName = ""
        ds.StationName = "PHANTOM01"
        ds.StudyDescription = f"XR {_REGION_TEXT[spec.region]} 2 VIEWS"
        ds.SeriesDescription = f"{_REGION_TEXT[spec.region]} {_view_text(spec.view)}"
        ds.ManufacturerModelName = spec.model
        if spec.sop_class == "DX":
            code = Dataset()
            code.CodeValue, code.CodeMeaning = _ANATOMY_CODES[spec.region]
            code.CodingSchemeDesignator = "SCT"
            ds.AnatomicRegionSequence = DicomSequence([code])
        ds.PatientName = spec.patient.name
        ds.PatientID = spec.patient.patient_id
        ds.PatientBirthDate = spec.patient.birth_date
    ds.PatientSex = spec.patient.sex
    ds.PatientAge = f"{spec.patient.age_years:03d}Y"
    if not vindr:
        ds.BodyPartExamined = spec.region
        ds.KVP = f"{spec.kvp:.0f}"
        ds.DeviceSerialNumber = spec.device_serial
        ds.SoftwareVersions = "phantom-1"
        ds.ViewPosition = "AP" if spec.view == "AP" else "LL"
        if spec.sop_class == "DX":
            ds.PositionerType = "COLUMN"
            view_code = Dataset()
            view_code.CodeValue, view_code.CodeMeaning = _VIEW_CODES[spec.view]
            view_code.CodingSchemeDesignator = "SCT"
            view_code.ViewModifierCodeSequence = DicomSequence([])
            ds.ViewCodeSequence = DicomSequence([view_code])
        if spec.sop_class == "DX":
            ds.DetectorType = "SCINTILLATOR"
            ds.DetectorID = f"DET{spec.device_serial[-4:]}"
        if spec.sop_class == "DX" or spec.both_spacings:
            ds.ImagerPixelSpacing = [_ds(spec.pixel_spacing_mm), _ds(spec.pixel_spacing_mm)]
        if spec.sop_class == "DX" and spec.both_spacings:
            ds.EstimatedRadiographicMagnificationFactor = "1.1"
    _set_uid(ds, "StudyInstanceUID", spec.study_uid, vindr)
    _set_uid(ds, "SeriesInstanceUID", spec.series_uid, vindr)
    if not vindr:
        ds.StudyID = spec.study_id
        ds.SeriesNumber = spec.series_number
        ds.InstanceNumber = spec.instance_number
        ds.PatientOrientation = ["L", "F"] if spec.view == "AP" else ["P", "F"]
        if spec.sop_class == "DX":
            ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows = rows
    ds.Columns = cols
    spacing = spec.pixel_spacing_mm
    if spec.sop_class == "DX" and spec.both_spacings:
        spacing = spec.pixel_spacing_mm / 1.1
    if spec.sop_class == "CR" or spec.both_spacings or vindr:
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
        if spec.sop_class == "DX" and not vindr:
            ds.PixelSpacingCalibrationType = "GEOMETRY"
            ds.PixelSpacingCalibrationDescription = "Estimated magnification factor 1.1"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if not vindr:
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        if spec.sop_class == "DX":
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    if spec.window or vindr:
        if spec.second_window and not vindr:
            ds.WindowCenter = [_ds(center), _ds(bone_center)]
            ds.WindowWidth = [_ds(width), _ds(bone_width)]
            ds.WindowCenterWidthExplanation = ["STANDARD", "BONE"]
        else:
            ds.WindowCenter = _ds(center)
            ds.WindowWidth = _ds(width)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    if not vindr:
        ds.RescaleType = "US"
        if spec.voi_lut_sequence:
            ds.VOILUTSequence = DicomSequence([_voi_lut_item(lut_center, width)])
        if spec.sop_class == "DX":
            ds.AcquisitionContextSequence = DicomSequence([])
            ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"

    ds.file_meta = FileMetaDataset()
    ds.file_meta.FileMetaInformationGroupLength = 0  # updated when written
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    if not vindr:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    _set_uid(ds.file_meta, "MediaStorageSOPInstanceUID", spec.sop_instance_uid, vindr)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"[:16]
    ds.preamble = b"\x00" * 128
    if spec.compressed or vindr:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
    else:
        ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
        ds["PixelData"].VR = "OW"
    return ds


def write(ds: Dataset, path: Path | BinaryIO) -> None:
    """Write a dataset built by `build_dataset` as a DICOM Part 10 file.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Dataset with file meta and preamble.
    path : pathlib.Path or binary file object
        Destination.
    """
    # enforce_file_format=False keeps VinDr-like files without a Media Storage SOP Class
    # writable; the preamble and file meta set by build_dataset are still written. Copying
    # the file meta re-validates VinDr-style hex "UIDs"; that warning is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        dcmwrite(path, ds, enforce_file_format=False)


def _set_uid(ds: Dataset, keyword: str, value: str, hex_ok: bool) -> None:
    """Set a UI element; VinDr-style hex ids are set without VR validation."""
    if hex_ok:
        tag = {
            "SOPInstanceUID": 0x00080018,
            "StudyInstanceUID": 0x0020000D,
            "SeriesInstanceUID": 0x0020000E,
            "MediaStorageSOPInstanceUID": 0x00020003,
        }[keyword]
        ds[tag] = DataElement(tag, "UI", value, validation_mode=config.IGNORE)
    else:
        setattr(ds, keyword, value)


def _ds(value: float) -> str:
    """Format a decimal string (DS) compactly (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def _view_text(view: View) -> str:
    return "AP" if view == "AP" else "LATERAL"


def _windows(display: npt.NDArray[np.uint16]) -> tuple[float, float, float, float]:
    """Default and bone windows (centre, width) on display values."""
    sample = display[::4, ::4]
    lo, hi = np.percentile(sample, [3.0, 99.7])
    center = float(round((lo + hi) / 2))
    width = float(max(round(hi - lo), 64))
    b_lo, b_hi = np.percentile(sample, [40.0, 99.9])
    bone_center = float(round((b_lo + b_hi) / 2))
    bone_width = float(max(round(b_hi - b_lo), 32))
    return center, width, bone_center, bone_width


def _voi_lut_item(center: float, width: float) -> Dataset:
    """Build a 4096-entry sigmoid VOI LUT item around the window, 16 bits per entry.

    The input is the stored value (0..4095); the output spans 0..65535. CR allows 8 or 16
    bits per entry, DX 10..16, so 16 satisfies both.
    """
    x = np.arange(MAX_STORED + 1, dtype=np.float64)
    y = 0.5 + 0.5 * np.tanh(2.4 * (x - center) / width) / np.tanh(1.2)
    lut = np.rint(np.clip(y, 0.0, 1.0) * 65535.0).astype("<u2")
    item = Dataset()
    item.add_new(0x00283002, "US", [MAX_STORED + 1, 0, 16])  # LUT Descriptor
    item.LUTExplanation = "PHANTOM SIGMOID"
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    return item

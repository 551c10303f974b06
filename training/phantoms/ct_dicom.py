r"""CT phantoms as DICOM: CT Image Storage series and a study with distractor series.

Builders are pure (phantom and header in, pydicom datasets out); `write_series` and
`write_ct_study` do the I/O. The thin axial series (ImageType ``ORIGINAL\PRIMARY\AXIAL``)
is the one a CT pipeline should pick; `write_ct_study` adds the distractors a series
selection must skip: a localizer (``ORIGINAL\PRIMARY\LOCALIZER``, one coronal projection
image) and a thick-slice axial reformat (``DERIVED\SECONDARY\REFORMATTED``). Refusal cases
come from the phantom (`make_ct_phantom` with ``tilt_deg``: Gantry/Detector Tilt and a
tilted Image Orientation (Patient), positions along the table; `make_head_phantom`: Body
Part Examined HEAD) or from ``missing`` slices here (a gap in the positions).

Pixel data are stored either unsigned 12-bit with Rescale Intercept −1024 or signed 16-bit
with intercept 0 (drawn per study, `CtStudyHeader.signed`); slope 1, Rescale Type HU.
Attributes follow the CT Image IOD (PS3.3 A.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom import __version__ as pydicom_version
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from spinexr.training.phantoms.ct import CtPhantom
from spinexr.training.phantoms.dicom import (
    MANUFACTURER,
    PatientInfo,
    phantom_uid,
    write,
)
from spinexr.training.phantoms.image import random_patient, random_study_datetime

AXIAL: Final = ("ORIGINAL", "PRIMARY", "AXIAL")
LOCALIZER: Final = ("ORIGINAL", "PRIMARY", "LOCALIZER")
REFORMATTED: Final = ("DERIVED", "SECONDARY", "REFORMATTED")
"""Image Type of the thin axial series and of the two distractors."""

_MODELS = ("PhantomCT 64", "SynthScan 128", "VoxelForge 16")
_DESCRIPTIONS = {"CHEST": "CT CHEST", "ABDOMEN": "CT ABDOMEN", "HEAD": "CT HEAD"}
_WINDOWS = {
    "CHEST": (["40", "-600"], ["400", "1500"], ["MEDIASTINUM", "LUNG"]),
    "ABDOMEN": (["40", "500"], ["400", "2000"], ["SOFT TISSUE", "BONE"]),
    "HEAD": (["40", "600"], ["80", "2800"], ["BRAIN", "BONE"]),
}


@dataclass(frozen=True)
class CtStudyHeader:
    """Study-level header values shared by every series of a phantom study.

    Attributes
    ----------
    patient : PatientInfo
        Demographics.
    study_uid, frame_of_reference_uid : str
        Identifiers.
    study_date, study_time : str
        ``YYYYMMDD`` / ``HHMMSS``.
    study_id, accession_number : str
        Study identifiers.
    model, device_serial : str
        Scanner.
    kvp : float
        Tube voltage.
    tube_current : int
        mA.
    signed : bool
        Signed 16-bit storage with intercept 0 (else unsigned 12-bit, intercept −1024).
    """

    patient: PatientInfo
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    study_id: str
    accession_number: str
    model: str
    device_serial: str
    kvp: float
    tube_current: int
    signed: bool


@dataclass(frozen=True)
class WrittenSeries:
    """One series `write_ct_study` wrote.

    Attributes
    ----------
    role : str
        ``"axial"`` (the series to analyse), ``"localizer"`` or ``"reformat"``.
    series_uid : str
        Series Instance UID.
    series_number : int
        Series Number.
    image_type : tuple of str
        Image Type of its images.
    paths : tuple of pathlib.Path
        Its files, in instance order.
    """

    role: str
    series_uid: str
    series_number: int
    image_type: tuple[str, ...]
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class CtStudyFiles:
    """What `write_ct_study` wrote.

    Attributes
    ----------
    root : pathlib.Path
        Study folder (one sub-folder per series).
    study_uid : str
        Study Instance UID.
    series : tuple of WrittenSeries
        The series, in series-number order.
    """

    root: Path
    study_uid: str
    series: tuple[WrittenSeries, ...]

    def role(self, role: str) -> WrittenSeries:
        """Return the series of a role.

        Parameters
        ----------
        role : str
            ``"axial"``, ``"localizer"`` or ``"reformat"``.

        Returns
        -------
        WrittenSeries
            The series.

        Raises
        ------
        KeyError
            When the study has no such series.
        """
        for s in self.series:
            if s.role == role:
                return s
        raise KeyError(role)


def study_header(
    phantom: CtPhantom, *, patient: PatientInfo | None = None, signed: bool | None = None
) -> CtStudyHeader:
    """Draw the study-level header of a phantom (deterministic for its seed).

    Parameters
    ----------
    phantom : CtPhantom
        The phantom (its seed label feeds the draw and the UIDs).
    patient : PatientInfo, optional
        Demographics; drawn when omitted.
    signed : bool, optional
        Pixel storage; drawn (half each) when omitted.

    Returns
    -------
    CtStudyHeader
        The header.
    """
    digest = hashlib.sha256(f"{phantom.seed}/ct-header".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    date, time = random_study_datetime(rng)
    if patient is None:
        patient = random_patient(rng, int(rng.integers(1, 10000)), int(date[:4]))
    draw_signed = bool(rng.random() < 0.5)
    return CtStudyHeader(
        patient=patient,
        study_uid=phantom_uid(phantom.seed, "ct", "study"),
        frame_of_reference_uid=phantom_uid(phantom.seed, "ct", "frame-of-reference"),
        study_date=date,
        study_time=time,
        study_id=f"{int(rng.integers(1, 99999)):05d}",
        accession_number=f"PHC{int(rng.integers(0, 10**7)):07d}",
        model=str(rng.choice(_MODELS)),
        device_serial=f"CT{int(rng.integers(0, 10**6)):06d}",
        kvp=float(rng.choice([100.0, 120.0, 140.0])),
        tube_current=int(rng.integers(80, 400)),
        signed=draw_signed if signed is None else signed,
    )


def series_datasets(
    phantom: CtPhantom,
    header: CtStudyHeader,
    *,
    series_number: int = 2,
    description: str | None = None,
    missing: Sequence[int] = (),
) -> list[Dataset]:
    """Build the thin axial series of a phantom, one CT Image Storage dataset per slice.

    Parameters
    ----------
    phantom : CtPhantom
        Volume and geometry (a tilted grid gives a tilted orientation and Gantry/Detector
        Tilt).
    header : CtStudyHeader
        Study-level values.
    series_number : int
        Series Number.
    description : str, optional
        Series Description (default: body part, kernel and thickness).
    missing : sequence of int
        Slice indices to leave out (a gap in the positions, for refusal tests); the others
        keep their Instance Numbers ``k + 1``.

    Returns
    -------
    list of pydicom.dataset.Dataset
        In slice order (superior first), file meta and preamble set.
    """
    grid = phantom.grid
    uid = phantom_uid(phantom.seed, "ct", "series", series_number)
    text = description or (
        f"{_DESCRIPTIONS[phantom.body_part]} {grid.slice_thickness:g}mm {phantom.kernel}"
    )
    skip = set(missing)
    out = []
    positions = grid.positions()
    for k in range(grid.slices):
        if k in skip:
            continue
        ds = _base(phantom, header, uid, series_number, text, AXIAL, k + 1)
        _plane(ds, positions[k], grid.orientation, grid.pixel_spacing, grid.slice_thickness)
        ds.SliceLocation = _ds(float(positions[k][2]))
        ds.SpacingBetweenSlices = _ds(grid.slice_spacing)
        ds.GantryDetectorTilt = _ds(grid.tilt_deg)
        _pixels(ds, phantom.hu[k], header.signed)
        out.append(ds)
    return out


def reformat_datasets(
    phantom: CtPhantom,
    header: CtStudyHeader,
    *,
    series_number: int = 3,
    thickness_mm: float = 5.0,
) -> list[Dataset]:
    r"""Build a thick-slice axial reformat (a distractor): means of consecutive slices.

    Parameters
    ----------
    phantom : CtPhantom
        The thin volume.
    header : CtStudyHeader
        Study-level values.
    series_number : int
        Series Number.
    thickness_mm : float
        Approximate thickness; whole groups of ``round(thickness / spacing)`` (at least 2)
        thin slices are averaged.

    Returns
    -------
    list of pydicom.dataset.Dataset
        ImageType ``DERIVED\SECONDARY\REFORMATTED``, superior first.
    """
    grid = phantom.grid
    n = max(2, round(thickness_mm / grid.slice_spacing))
    groups = grid.slices // n
    uid = phantom_uid(phantom.seed, "ct", "series", series_number)
    positions = grid.positions()
    thick = n * grid.slice_spacing
    text = f"{_DESCRIPTIONS[phantom.body_part]} {thick:.3g}mm MPR"
    out = []
    for g in range(groups):
        block = phantom.hu[g * n : (g + 1) * n].astype(np.float32)
        hu = np.rint(block.mean(axis=0)).astype(np.int16)
        ds = _base(phantom, header, uid, series_number, text, REFORMATTED, g + 1)
        position = positions[g * n : (g + 1) * n].mean(axis=0)
        _plane(ds, position, grid.orientation, grid.pixel_spacing, thick)
        ds.SliceLocation = _ds(float(position[2]))
        ds.SpacingBetweenSlices = _ds(thick)
        ds.DerivationDescription = f"Average of {n} contiguous axial slices"
        _pixels(ds, hu, header.signed)
        out.append(ds)
    return out


def localizer_dataset(
    phantom: CtPhantom, header: CtStudyHeader, *, series_number: int = 1
) -> Dataset:
    r"""Build a frontal localizer (a distractor): the volume's mean along y, coronal.

    Parameters
    ----------
    phantom : CtPhantom
        The volume.
    header : CtStudyHeader
        Study-level values.
    series_number : int
        Series Number.

    Returns
    -------
    pydicom.dataset.Dataset
        One image, ImageType ``ORIGINAL\PRIMARY\LOCALIZER``, rows along −z.
    """
    grid = phantom.grid
    uid = phantom_uid(phantom.seed, "ct", "series", series_number)
    projection = np.rint(phantom.hu.astype(np.float32).mean(axis=1)).astype(np.int16)
    ds = _base(phantom, header, uid, series_number, "TOPOGRAM AP", LOCALIZER, 1)
    origin = grid.positions()[0].copy()
    origin[1] += 0.5 * (grid.rows - 1) * grid.pixel_spacing[0]
    _plane(
        ds,
        origin,
        [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
        (grid.slice_spacing, grid.pixel_spacing[1]),
        grid.pixel_spacing[0] * grid.rows,
    )
    _pixels(ds, projection, header.signed)
    del ds.RescaleType  # a projection: not Hounsfield units
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write datasets as ``IM00001.dcm``... (Instance Number) under ``folder``.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        From the builders here.
    folder : pathlib.Path
        Created when missing.

    Returns
    -------
    list of pathlib.Path
        The files, in the order given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"IM{int(ds.InstanceNumber):05d}.dcm"
        write(ds, path)
        paths.append(path)
    return paths


def write_ct_study(
    root: Path,
    phantom: CtPhantom,
    *,
    header: CtStudyHeader | None = None,
    distractors: bool = True,
    missing: Sequence[int] = (),
) -> CtStudyFiles:
    """Write a phantom study: localizer (1), thin axial (2), thick reformat (3).

    Parameters
    ----------
    root : pathlib.Path
        Study folder; series go to ``<number>_<role>/``.
    phantom : CtPhantom
        The volume.
    header : CtStudyHeader, optional
        Study-level values; `study_header` of the phantom when omitted.
    distractors : bool
        Add the localizer and the reformat (else the axial series alone).
    missing : sequence of int
        Slices left out of the axial series (see `series_datasets`).

    Returns
    -------
    CtStudyFiles
        What was written.
    """
    header = header or study_header(phantom)
    built: list[tuple[str, int, tuple[str, ...], list[Dataset]]] = []
    if distractors:
        built.append(("localizer", 1, LOCALIZER, [localizer_dataset(phantom, header)]))
    axial = series_datasets(phantom, header, series_number=2, missing=missing)
    built.append(("axial", 2, AXIAL, axial))
    if distractors:
        built.append(("reformat", 3, REFORMATTED, reformat_datasets(phantom, header)))
    series = []
    for role, number, image_type, datasets in built:
        paths = write_series(datasets, root / f"{number}_{role}")
        series.append(
            WrittenSeries(
                role=role,
                series_uid=str(datasets[0].SeriesInstanceUID),
                series_number=number,
                image_type=image_type,
                paths=tuple(paths),
            )
        )
    return CtStudyFiles(root=root, study_uid=header.study_uid, series=tuple(series))


# --- dataset parts ---------------------------------------------------------------------------


def _base(
    phantom: CtPhantom,
    header: CtStudyHeader,
    series_uid: str,
    series_number: int,
    description: str,
    image_type: Sequence[str],
    instance: int,
) -> Dataset:
    """Patient, study, series, equipment, frame of reference and CT acquisition attributes."""
    sop_uid = phantom_uid(phantom.seed, "ct", "sop", series_number, instance)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = header.study_time
    ds.AccessionNumber = header.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOMCT01"
    ds.StudyDescription = _DESCRIPTIONS[phantom.body_part]
    ds.SeriesDescription = description
    ds.ManufacturerModelName = header.model
    ds.PatientName = header.patient.name
    ds.PatientID = header.patient.patient_id
    ds.PatientBirthDate = header.patient.birth_date
    ds.PatientSex = header.patient.sex
    ds.PatientAge = f"{header.patient.age_years:03d}Y"
    ds.BodyPartExamined = phantom.body_part
    ds.SliceThickness = _ds(phantom.grid.slice_thickness)
    ds.KVP = _ds(header.kvp)
    ds.DataCollectionDiameter = "500"
    ds.DeviceSerialNumber = header.device_serial
    ds.SoftwareVersions = "phantom-ct-1"
    ds.ReconstructionDiameter = _ds(phantom.grid.columns * phantom.grid.pixel_spacing[1])
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = header.tube_current
    ds.Exposure = max(1, header.tube_current // 2)
    ds.FilterType = "BODY FILTER" if phantom.body_part != "HEAD" else "HEAD FILTER"
    ds.GeneratorPower = int(header.kvp * header.tube_current / 1000)
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = phantom.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    centres, widths, names = _WINDOWS[phantom.body_part]
    ds.WindowCenter, ds.WindowWidth = centres, widths
    ds.WindowCenterWidthExplanation = names

    ds.file_meta = FileMetaDataset()
    ds.file_meta.FileMetaInformationGroupLength = 0  # updated when written
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"[:16]
    ds.preamble = b"\x00" * 128
    return ds


def _plane(
    ds: Dataset,
    position: npt.ArrayLike,
    orientation: Sequence[float],
    spacing: tuple[float, float],
    thickness: float,
) -> None:
    """Image Plane module."""
    ds.ImagePositionPatient = [_ds(float(v)) for v in np.asarray(position)]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in orientation]
    ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
    ds.SliceThickness = _ds(thickness)


def _pixels(ds: Dataset, hu: npt.NDArray[np.int16], signed: bool) -> None:
    """Image Pixel module and the rescale, from HU."""
    rows, cols = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    if signed:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept = "0"
        stored = np.ascontiguousarray(hu, dtype="<i2")
    else:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleIntercept = "-1024"
        shifted = np.clip(hu.astype(np.int32) + 1024, 0, 4095)
        stored = np.ascontiguousarray(shifted, dtype="<u2")
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"


def _ds(value: float) -> str:
    """Format a decimal string (DS) of at most 16 characters."""
    for digits in (10, 8, 6):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"

"""Tiny CT slices for ingest tests and benchmarks, built with pydicom (no phantom volume).

Importable as ``ct_ingest_support`` (``tests/`` is on pytest's path; the benchmarks put it
on ``sys.path``). Each slice is a conforming CT Image Storage instance (Part 10, explicit VR
little endian) of a small axial stack: 1 mm apart, 16-bit signed pixels with a ramp, UIDs
under pydicom's root (never the node's, so loop prevention leaves them alone).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")
LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")


def ct_slice(
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    body_part: str | None = "CHEST",
    size: int = 32,
    sop_class: str = CTImageStorage,
    image_type: Sequence[str] = AXIAL,
    frame_of_reference_uid: str | None = None,
    patient_name: str = "CT^PHANTOM",
) -> Dataset:
    """Return slice ``index`` (0-based) of an axial CT series, ready to write or send.

    Parameters
    ----------
    index : int
        Slice number: Instance Number ``index + 1``, z = ``-index`` mm.
    study_uid, series_uid : str
        Study and Series Instance UIDs.
    body_part : str or None
        Body Part Examined (None: absent).
    size : int
        Rows and columns.
    sop_class : str
        SOP Class UID (CT Image Storage by default).
    image_type : sequence of str
        Image Type.
    frame_of_reference_uid : str, optional
        Derived from the series when omitted.
    patient_name : str
        Patient's Name.

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta and preamble.
    """
    sop_uid = generate_uid(entropy_srcs=[series_uid, "sop", str(index)])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "CT0001"
    ds.Modality = "CT"
    ds.Manufacturer = "Tiny CT phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST ABDOMEN"
    ds.SeriesDescription = "AXIAL 1mm"
    ds.PatientName = patient_name
    ds.PatientID = "CT-PHANTOM-1"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SliceThickness = "1"
    ds.KVP = "120"
    ds.ConvolutionKernel = "B70f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid(
        entropy_srcs=[series_uid, "frame"]
    )
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = ["-100", "-100", str(-index)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.SliceLocation = str(-index)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ramp = (np.arange(size * size, dtype=np.int32).reshape(size, size) + index) % 2000 - 1000
    ds.PixelData = np.ascontiguousarray(ramp, dtype="<i2").tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.preamble = b"\x00" * 128
    return ds


def ct_series(
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    body_part: str | None = "CHEST",
    size: int = 32,
    sop_class: str = CTImageStorage,
) -> list[Dataset]:
    """Return ``count`` slices of one new series (see `ct_slice`)."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    return [
        ct_slice(
            i,
            study_uid=study_uid,
            series_uid=series_uid,
            body_part=body_part,
            size=size,
            sop_class=sop_class,
        )
        for i in range(count)
    ]


def part10(ds: Dataset) -> bytes:
    """Return a dataset encoded as a Part-10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_slices(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write datasets as ``CT00001.dcm``... (Instance Number) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"CT{int(ds.InstanceNumber):05d}.dcm"
        path.write_bytes(part10(ds))
        paths.append(path)
    return paths

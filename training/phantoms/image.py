"""One synthetic spine radiograph as a DICOM dataset plus its lesion boxes.

`make_phantom_image` is the synthetic DICOM factory other tests use. Random streams for
size, anatomy, lesions, rendering noise and header are independent children of one seed, so
the same seed with and without lesions gives the same anatomy and noise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.classes import LesionClass
from spinexr.training.phantoms.anatomy import REGIONS, Region, Spine, View, build_spine
from spinexr.training.phantoms.dicom import (
    HeaderSpec,
    PatientInfo,
    Photometric,
    SopKind,
    build_dataset,
    hex_uid,
    phantom_uid,
)
from spinexr.training.phantoms.lesions import Box, apply_lesions
from spinexr.training.phantoms.render import render_spine

Size = Literal["full", "small"] | tuple[int, int]
"""Image size: ``"full"`` (≈2500×1900, varies per image), ``"small"`` (512×384) or
``(rows, cols)``."""

SMALL_SIZE = (512, 384)
"""Rows and columns of ``size="small"``."""

SeedLike = int | np.random.Generator | np.random.SeedSequence

_MODELS = ("PhantomCR 100", "PhantomDR 300", "SynthRay 5")
_STREAMS = {"size": 0, "anatomy": 1, "lesions": 2, "render": 3, "header": 4}


@dataclass(frozen=True)
class RenderedPhantom:
    """Pixels and geometry of one phantom before it is wrapped in DICOM.

    Parameters
    ----------
    display : numpy.ndarray
        ``uint16`` image, 0..4095, bone bright.
    boxes : list of Box
        Lesion boxes.
    spine : Spine
        Final geometry (lesions applied).
    """

    display: npt.NDArray[np.uint16]
    boxes: list[Box]
    spine: Spine


def seed_sequence(rng_or_seed: SeedLike) -> np.random.SeedSequence:
    """Normalise a seed, generator or seed sequence to a `numpy.random.SeedSequence`.

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        An int or sequence is used as is; a generator is drawn from once.

    Returns
    -------
    numpy.random.SeedSequence
        The sequence.
    """
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return rng_or_seed
    if isinstance(rng_or_seed, np.random.Generator):
        return np.random.SeedSequence(int(rng_or_seed.integers(0, 2**63)))
    return np.random.SeedSequence(int(rng_or_seed))


def child_rng(ss: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """Return a generator for child ``key`` of ``ss`` without mutating ``ss``."""
    child = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, *key))
    return np.random.default_rng(child)


def seed_label(ss: np.random.SeedSequence) -> str:
    """Return a stable text form of a seed sequence (entropy for UIDs)."""
    return f"{ss.entropy}/{'.'.join(str(k) for k in ss.spawn_key)}"


def resolve_size(size: Size, rng: np.random.Generator) -> tuple[int, int]:
    """Return ``(rows, cols)`` for a size specification.

    Parameters
    ----------
    size : {"full", "small"} or tuple of int
        Specification.
    rng : numpy.random.Generator
        Used for the per-image variation of ``"full"``.

    Returns
    -------
    tuple of int
        Rows and columns.

    Raises
    ------
    ValueError
        For an unknown name or a size below 128×96.
    """
    if isinstance(size, tuple):
        rows, cols = int(size[0]), int(size[1])
        if rows < 128 or cols < 96:
            raise ValueError(f"phantom size {size} is too small (minimum 128×96)")
        return rows, cols
    if size == "small":
        return SMALL_SIZE
    if size == "full":
        return int(rng.integers(2300, 2751)), int(rng.integers(1650, 2151))
    raise ValueError(f"unknown phantom size {size!r}: use 'full', 'small' or (rows, cols)")


def random_patient(rng: np.random.Generator, index: int, study_year: int) -> PatientInfo:
    """Synthetic demographics for patient number ``index``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of variation.
    index : int
        Patient number (goes into the name and ID).
    study_year : int
        Year of the study (for the age).

    Returns
    -------
    PatientInfo
        Demographics.
    """
    age = int(rng.integers(22, 90))
    birth = dt.date(study_year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    sex = str(rng.choice(["M", "F"], p=[0.48, 0.52]))
    return PatientInfo(
        name=f"PHANTOM^{index:04d}",
        patient_id=f"PH{index:05d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age_years=age,
    )


def random_study_datetime(rng: np.random.Generator) -> tuple[str, str]:
    """Draw a study date and time (``YYYYMMDD``, ``HHMMSS``); fixed for a seed."""
    day = dt.date(2016, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return day.strftime("%Y%m%d"), _hhmmss(seconds)


def render_phantom(
    rng_or_seed: SeedLike,
    *,
    view: View = "AP",
    size: Size = "small",
    lesions: Sequence[LesionClass] = (),
    region: Region | None = None,
) -> RenderedPhantom:
    """Render the pixels and boxes of one phantom (no DICOM).

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; the same seed gives the same anatomy and noise whatever the lesions.
    view : {"AP", "LAT"}
        Projection.
    size : {"full", "small"} or tuple of int
        Image size.
    lesions : sequence of LesionClass
        Lesions to draw.
    region : {"LSPINE", "TSPINE", "SPINE"}, optional
        Body part; drawn at random when omitted.

    Returns
    -------
    RenderedPhantom
        Pixels, boxes and geometry.
    """
    ss = seed_sequence(rng_or_seed)
    rows, cols = resolve_size(size, child_rng(ss, _STREAMS["size"]))
    anatomy_rng = child_rng(ss, _STREAMS["anatomy"])
    if region is None:
        region = REGIONS[int(anatomy_rng.choice(3, p=[0.6, 0.25, 0.15]))]
    spine = build_spine(anatomy_rng, view, region, rows, cols)
    boxes = apply_lesions(spine, lesions, child_rng(ss, _STREAMS["lesions"]))
    display = render_spine(spine, child_rng(ss, _STREAMS["render"]))
    return RenderedPhantom(display=display, boxes=boxes, spine=spine)


def make_phantom_image(
    rng_or_seed: SeedLike,
    *,
    view: View = "AP",
    photometric: Photometric = "MONOCHROME2",
    sop_class: SopKind = "CR",
    compressed: bool = False,
    size: Size = "small",
    lesions: Sequence[LesionClass] = (),
    voi_lut_sequence: bool = False,
    window: bool = True,
    region: Region | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient: PatientInfo | None = None,
    study_datetime: tuple[str, str] | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    vindr_like: bool = False,
) -> tuple[Dataset, list[Box]]:
    """Make one synthetic spine radiograph as a DICOM dataset.

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; everything (pixels, UIDs, header) is deterministic for an int or sequence.
    view : {"AP", "LAT"}
        Projection.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        Photometric interpretation; MONOCHROME1 stores inverted values.
    sop_class : {"CR", "DX"}
        CR Image Storage or Digital X-Ray Image Storage – For Presentation.
    compressed : bool
        JPEG 2000 Lossless instead of Explicit VR Little Endian.
    size : {"full", "small"} or tuple of int
        Image size (``"small"`` = 512×384).
    lesions : sequence of LesionClass
        Lesions to draw (empty: a normal image).
    voi_lut_sequence : bool
        Add a VOI LUT Sequence.
    window : bool
        Add Window Center/Width (keep at least one of the two VOI forms for DX).
    region : {"LSPINE", "TSPINE", "SPINE"}, optional
        Body part; random when omitted.
    study_uid, series_uid, sop_instance_uid : str, optional
        Identifiers; derived from the seed when omitted (hex strings when ``vindr_like``).
    patient : PatientInfo, optional
        Demographics; derived from the seed when omitted.
    study_datetime : tuple of str, optional
        ``(YYYYMMDD, HHMMSS)``; derived from the seed when omitted.
    series_number, instance_number : int
        Numbers within the study and series.
    vindr_like : bool
        Strip the header like VinDr-SpineXR (hex ids, no SOP Class, Modality, Body Part
        Examined or View Position; always MONOCHROME2, JPEG 2000 Lossless, window tags).

    Returns
    -------
    tuple of (pydicom.dataset.Dataset, list of Box)
        The dataset (file meta and preamble set; write it with
        `spinexr.training.phantoms.dicom.write`) and the lesion boxes in pixel coordinates.
    """
    ss = seed_sequence(rng_or_seed)
    if vindr_like:
        photometric, compressed, window = "MONOCHROME2", True, True
    phantom = render_phantom(ss, view=view, size=size, lesions=lesions, region=region)
    header_rng = child_rng(ss, _STREAMS["header"])
    label = seed_label(ss)
    if study_datetime is None:
        study_datetime = random_study_datetime(header_rng)
    if patient is None:
        patient = random_patient(
            header_rng, int(header_rng.integers(1, 10000)), int(study_datetime[0][:4])
        )
    make_id = hex_uid if vindr_like else phantom_uid
    spec = HeaderSpec(
        sop_class=sop_class,
        photometric=photometric,
        compressed=compressed,
        window=window,
        voi_lut_sequence=voi_lut_sequence,
        second_window=bool(header_rng.random() < 0.25),
        study_uid=study_uid or make_id(label, "study"),
        series_uid=series_uid or make_id(label, "series"),
        sop_instance_uid=sop_instance_uid or make_id(label, "instance"),
        patient=patient,
        study_date=study_datetime[0],
        study_time=study_datetime[1],
        content_time=_later(study_datetime[1], int(header_rng.integers(60, 900))),
        study_id=f"{int(header_rng.integers(1, 99999)):05d}",
        accession_number=f"PHA{int(header_rng.integers(0, 10**7)):07d}",
        series_number=series_number,
        instance_number=instance_number,
        view=view,
        region=phantom.spine.region,
        pixel_spacing_mm=_pixel_spacing(phantom.spine.rows),
        both_spacings=bool(header_rng.random() < 0.5),
        model=str(header_rng.choice(_MODELS)),
        device_serial=f"SN{int(header_rng.integers(0, 10**6)):06d}",
        kvp=float(header_rng.integers(70, 96)),
        vindr_like=vindr_like,
    )
    return build_dataset(phantom.display, spec), phantom.boxes


def _pixel_spacing(rows: int) -> float:
    """Detector pitch so that the field of view is about 43 cm tall."""
    return round(430.0 / rows, 4)


def _hhmmss(seconds: int) -> str:
    """Format seconds since midnight as ``HHMMSS``."""
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _later(hhmmss: str, seconds: int) -> str:
    """Add seconds to a ``HHMMSS`` time, clamped to the same day."""
    start = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6])
    return _hhmmss(min(start + seconds, 86399))

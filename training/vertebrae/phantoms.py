"""Lateral keypoint phantoms: DICOM images with six ground-truth keypoints per vertebra.

Each phantom is a lateral view of a `spinexr.training.phantoms` spine with compression
fractures of known Genant index (`spinexr.training.phantoms.fractures`), normal mild wedging
of some thoracic vertebrae, and one of four pixel-spacing variants:

- ``pixel``: CR with Pixel Spacing;
- ``imager``: DX with Imager Pixel Spacing and Estimated Radiographic Magnification Factor
  (no Pixel Spacing): the spacing in the patient plane is imager spacing / factor;
- ``both``: DX with all three (Pixel Spacing = imager spacing / factor, calibration type
  GEOMETRY);
- ``none``: CR without any spacing (`KeypointRecord.spacing_mm` is None).

The field of view is 30–45 cm tall, so mm per pixel varies at a fixed image size; the
magnification factor is 1.05–1.25. The record's display is what serving computes from the
dataset (`spinexr.pipeline.preprocess.display_image` on the decoded pixels), its keypoints
are in original pixels with (0, 0) the top-left corner of the top-left pixel, and it lists
every vertebra whose six keypoints lie inside the image (level from the phantom), plus S1
when in view.

Random streams (size, anatomy, fractures, render, header, plan) are independent children of
one seed, so the same seed gives the same anatomy and noise whatever the fractures.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TextIO

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.preprocess import check_supported, decode_pixels, display_image
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import GenantGrade
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.phantoms.anatomy import REGIONS, Region, Spine, build_spine
from spinexr.training.phantoms.dicom import HeaderSpec, build_dataset, phantom_uid, write
from spinexr.training.phantoms.fractures import (
    FractureSpec,
    apply_fractures,
    plan_fractures,
    thoracic_wedging,
)
from spinexr.training.phantoms.image import (
    SMALL_SIZE,
    SeedLike,
    child_rng,
    random_patient,
    random_study_datetime,
    resolve_size,
    seed_label,
    seed_sequence,
)
from spinexr.training.phantoms.keypoints import body_keypoints, sacrum_keypoints
from spinexr.training.phantoms.render import render_spine
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.annotations import (
    CSV_COLUMNS,
    CSV_NAMES,
    IMAGE_SUFFIX,
    annotation_rows,
)
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

SpacingVariant = Literal["pixel", "imager", "both", "none"]
"""Which spacing attributes the header carries (see the module docstring)."""

SPACING_VARIANTS: Final[tuple[SpacingVariant, ...]] = ("pixel", "imager", "both", "none")
SPACING_WEIGHTS: Final = (0.35, 0.35, 0.2, 0.1)
"""Share of each spacing variant when drawn at random."""

REGION_WEIGHTS: Final = (0.4, 0.3, 0.3)
"""Share of LSPINE, TSPINE and SPINE when the region is drawn at random."""

FIELD_OF_VIEW_MM: Final = (300.0, 450.0)
"""Range of the image height in the patient plane."""

MAGNIFICATION: Final = (1.05, 1.25)
"""Range of the estimated radiographic magnification factor."""

FRACTURE_PROBABILITY: Final = 0.4
"""Share of random phantoms with at least one fracture (G ≤ 0.80)."""

FRACTURE_COUNTS: Final = ((1, 0.6), (2, 0.3), (3, 0.1))
"""Number of fractures of a fractured phantom and its probability."""

NEAR_NORMAL_PROBABILITY: Final = 0.15
"""Share of random phantoms with one near-normal deformity (0.805 ≤ G ≤ 0.88, any type)."""

THORACIC_WEDGING: Final = 0.03
"""Chance that each visible, unfractured thoracic vertebra of a random phantom is wedged
to 0.805 ≤ G ≤ 0.88."""

PHANTOM_RATER: Final = "phantom"
"""``rad_id`` of phantom annotation rows."""

_PIXEL_ORIGIN = 0.5
"""Phantom geometry puts pixel centres at integers; records put them at ``i + 0.5``."""
_MONOCHROME1 = 0.2
_STREAMS = {"size": 0, "anatomy": 1, "fractures": 2, "render": 3, "header": 4, "plan": 5}
_MODELS = ("PhantomCR 100", "PhantomDR 300", "SynthRay 5")

FractureRequest = Literal["random"] | Sequence[FractureSpec]
"""``"random"`` (the mix above) or explicit fractures (an empty sequence for none)."""


@dataclass(frozen=True)
class KeypointDatasetSummary:
    """What `write_keypoint_dataset` wrote.

    Attributes
    ----------
    root : pathlib.Path
        Dataset root.
    images : dict of str to int
        Images per split.
    grades : dict of GenantGrade to int
        Annotated vertebrae per grade (all splits).
    spacing : dict of str to int
        Images per spacing variant.
    files : tuple of pathlib.Path
        DICOM and CSV files written.
    seconds : float
        Wall time.
    """

    root: Path
    images: dict[str, int]
    grades: dict[GenantGrade, int]
    spacing: dict[str, int]
    files: tuple[Path, ...] = field(repr=False)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """Per-image choices drawn before rendering."""

    region: Region
    variant: SpacingVariant
    fov_mm: float
    magnification: float
    monochrome1: bool
    sop_class: Literal["CR", "DX"]


def keypoint_phantom(
    seed: SeedLike,
    *,
    size: tuple[int, int] = SMALL_SIZE,
    region: Region | None = None,
    fractures: FractureRequest = "random",
    spacing_variant: SpacingVariant | None = None,
    thoracic_wedging_probability: float | None = None,
    split: str = "train",
) -> tuple[Dataset, KeypointRecord]:
    """Make one lateral keypoint phantom.

    Parameters
    ----------
    seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; an int or sequence makes everything deterministic.
    size : tuple of int
        ``(rows, columns)``, at least 128×96.
    region : {"LSPINE", "TSPINE", "SPINE"}, optional
        Body part; drawn with `REGION_WEIGHTS` when omitted.
    fractures : "random" or sequence of FractureSpec
        ``"random"``: with probability `FRACTURE_PROBABILITY` one to three fractures of
        grades mild / moderate / severe (equally likely), G uniform within the grade, types
        wedge / biconcave / crush; with probability `NEAR_NORMAL_PROBABILITY` a near-normal
        deformity; plus thoracic wedging. A sequence: exactly these (indices into the
        spine's vertebrae, which must be fully visible).
    spacing_variant : {"pixel", "imager", "both", "none"}, optional
        Spacing attributes; drawn with `SPACING_WEIGHTS` when omitted.
    thoracic_wedging_probability : float, optional
        Chance that each visible unfractured thoracic vertebra is wedged to G 0.805–0.88;
        default `THORACIC_WEDGING` for random fractures, 0 for explicit ones.
    split : str
        Written into the record.

    Returns
    -------
    tuple of (pydicom.dataset.Dataset, KeypointRecord)
        The dataset (file meta set; write it with `spinexr.training.phantoms.dicom.write`)
        and its ground truth.

    Raises
    ------
    spinexr.training.phantoms.fractures.FractureError
        For an explicit fracture that cannot be made.
    """
    ss = seed_sequence(seed)
    rows, cols = resolve_size(size, child_rng(ss, _STREAMS["size"]))
    plan = _draw_plan(child_rng(ss, _STREAMS["plan"]), region, spacing_variant)
    spine = build_spine(child_rng(ss, _STREAMS["anatomy"]), "LAT", plan.region, rows, cols)
    _deform(spine, child_rng(ss, _STREAMS["fractures"]), fractures, thoracic_wedging_probability)
    pixels = render_spine(spine, child_rng(ss, _STREAMS["render"]))
    ds, spacing_mm = _dataset(pixels, spine, plan, ss)
    check_supported(ds)
    display, _ = display_image(ds, decode_pixels(ds))
    record = KeypointRecord(
        study=str(ds.StudyInstanceUID),
        series=str(ds.SeriesInstanceUID),
        image=str(ds.SOPInstanceUID),
        display=display,
        spacing_mm=spacing_mm,
        objects=annotated_objects(spine),
        split=split,
    )
    return ds, record


def annotated_objects(spine: Spine) -> list[AnnotatedObject]:
    """Ground-truth objects of a lateral spine: the vertebrae and S1 inside the image.

    An object is listed when all six of its keypoints lie at least one pixel inside the
    image (a body cut by the border is not).

    Parameters
    ----------
    spine : Spine
        Final lateral geometry (fractures applied).

    Returns
    -------
    list of AnnotatedObject
        Top to bottom, keypoints in image coordinates (pixel centres at ``i + 0.5``).
    """
    out: list[AnnotatedObject] = []
    candidates: list[tuple[ObjectKind, str, npt.NDArray[np.float64] | None]] = [
        (ObjectKind.VERTEBRA, v.name, body_keypoints(v.body)) for v in spine.vertebrae
    ]
    candidates.append((ObjectKind.SACRUM, "S1", sacrum_keypoints(spine)))
    for kind, level, points in candidates:
        if points is None:
            continue
        image_points = points + _PIXEL_ORIGIN
        if _inside(image_points, spine.rows, spine.cols):
            out.append(AnnotatedObject(kind=kind, level=level, keypoints=image_points))
    return out


def generate_keypoint_records(
    n: int,
    seed: int,
    *,
    size: tuple[int, int] = SMALL_SIZE,
    test_fraction: float = 0.2,
) -> list[KeypointRecord]:
    """Make ``n`` phantom records in memory (one image per study).

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed of the whole set (image ``i`` uses child ``i`` of it).
    size : tuple of int
        ``(rows, columns)`` of every image.
    test_fraction : float
        Share of images in the ``test`` split (chosen at random by the seed).

    Returns
    -------
    list of KeypointRecord
        In image order.
    """
    return [
        keypoint_phantom(child, size=size, split=split)[1]
        for child, split in _children(n, seed, test_fraction)
    ]


def write_keypoint_dataset(
    root: Path,
    n: int,
    seed: int,
    *,
    size: tuple[int, int] = SMALL_SIZE,
    test_fraction: float = 0.2,
    progress: bool = True,
    stream: TextIO | None = None,
) -> KeypointDatasetSummary:
    """Write ``n`` phantoms as DICOM files plus the keypoint CSVs, VinDr-style.

    Layout: ``<root>/{train,test}_images/<SOP Instance UID>.dicom`` and
    ``<root>/annotations/vertebrae_{train,test}.csv`` (`spinexr.training.vertebrae.
    annotations`); other files in ``root`` (e.g. a lesion dataset) are left alone. The same
    ``(n, seed, size, test_fraction)`` gives the same records as `generate_keypoint_records`.

    Parameters
    ----------
    root : pathlib.Path
        Dataset root (created).
    n : int
        Number of images.
    seed : int
        Seed of the whole set.
    size : tuple of int
        ``(rows, columns)``.
    test_fraction : float
        Share of images in the test split.
    progress : bool
        Print progress lines (rate, ETA) every few seconds.
    stream : file-like, optional
        Where progress goes (default stderr).

    Returns
    -------
    KeypointDatasetSummary
        Counts and files.
    """
    start = time.monotonic()
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    files: list[Path] = []
    grades: Counter[GenantGrade] = Counter()
    spacing: Counter[str] = Counter()
    images: Counter[str] = Counter()
    reporter = RateProgress(n, "keypoint phantoms", prefix="phantoms", stream=stream)
    for done, (child, split) in enumerate(_children(n, seed, test_fraction), start=1):
        ds, record = keypoint_phantom(child, size=size, split=split)
        folder = root / f"{split}_images"
        folder.mkdir(exist_ok=True)
        path = folder / f"{record.image}{IMAGE_SUFFIX}"
        write(ds, path)
        files.append(path)
        images[split] += 1
        rows[split].extend(annotation_rows(record, PHANTOM_RATER))
        spacing[spacing_variant_of(ds)] += 1
        for obj in record.vertebrae:
            grades[genant.grade(genant.genant_index(genant.heights(obj.keypoints)))] += 1
        if progress:
            reporter.update(done)
    for split, split_rows in rows.items():
        path = root / "annotations" / CSV_NAMES[split]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(split_rows)
        files.append(path)
    return KeypointDatasetSummary(
        root=root,
        images={s: images.get(s, 0) for s in rows},
        grades={g: grades.get(g, 0) for g in GenantGrade},
        spacing={v: spacing.get(v, 0) for v in SPACING_VARIANTS},
        files=tuple(files),
        seconds=time.monotonic() - start,
    )


def spacing_variant_of(ds: Dataset) -> SpacingVariant:
    """Name the spacing variant of a phantom dataset from its attributes.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A dataset from `keypoint_phantom`.

    Returns
    -------
    {"pixel", "imager", "both", "none"}
        The variant.
    """
    pixel, imager = "PixelSpacing" in ds, "ImagerPixelSpacing" in ds
    if pixel and imager:
        return "both"
    if pixel:
        return "pixel"
    return "imager" if imager else "none"


# --- internals ------------------------------------------------------------------------------


def _children(n: int, seed: int, test_fraction: float) -> list[tuple[np.random.SeedSequence, str]]:
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within [0, 1), got {test_fraction}")
    root = np.random.SeedSequence(int(seed))
    order = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2**32,)))
    test = set(order.permutation(n)[: round(n * test_fraction)].tolist())
    return [
        (np.random.SeedSequence(root.entropy, spawn_key=(i,)), "test" if i in test else "train")
        for i in range(n)
    ]


def _draw_plan(
    rng: np.random.Generator, region: Region | None, variant: SpacingVariant | None
) -> _Plan:
    drawn_region = REGIONS[int(rng.choice(len(REGIONS), p=REGION_WEIGHTS))]
    drawn_variant = SPACING_VARIANTS[int(rng.choice(len(SPACING_VARIANTS), p=SPACING_WEIGHTS))]
    fov = float(rng.uniform(*FIELD_OF_VIEW_MM))
    magnification = float(rng.uniform(*MAGNIFICATION))
    monochrome1 = bool(rng.random() < _MONOCHROME1)
    chosen = variant or drawn_variant
    return _Plan(
        region=region or drawn_region,
        variant=chosen,
        fov_mm=fov,
        magnification=magnification,
        monochrome1=monochrome1,
        sop_class="DX" if chosen in ("imager", "both") else "CR",
    )


def _deform(
    spine: Spine,
    rng: np.random.Generator,
    fractures: FractureRequest,
    wedging: float | None,
) -> None:
    if not isinstance(fractures, str):
        specs = list(fractures)
        apply_fractures(spine, specs)
        if wedging:
            thoracic_wedging(spine, rng, wedging, exclude=[s.index for s in specs])
        return
    if fractures != "random":
        raise ValueError(f"fractures must be 'random' or a sequence of FractureSpec: {fractures!r}")
    count = 0
    if rng.random() < FRACTURE_PROBABILITY:
        counts, weights = zip(*FRACTURE_COUNTS, strict=True)
        count = int(rng.choice(counts, p=weights))
    fractured = [GenantGrade.MILD, GenantGrade.MODERATE, GenantGrade.SEVERE]
    grades = [fractured[int(rng.integers(3))] for _ in range(count)]
    if rng.random() < NEAR_NORMAL_PROBABILITY:
        grades.append(GenantGrade.NORMAL)
    specs = plan_fractures(spine, rng, grades)
    apply_fractures(spine, specs)
    thoracic_wedging(
        spine,
        rng,
        THORACIC_WEDGING if wedging is None else wedging,
        exclude=[s.index for s in specs],
    )


def _dataset(
    pixels: npt.NDArray[np.uint16], spine: Spine, plan: _Plan, ss: np.random.SeedSequence
) -> tuple[Dataset, tuple[float, float] | None]:
    rng = child_rng(ss, _STREAMS["header"])
    label = seed_label(ss)
    study_date, study_time = random_study_datetime(rng)
    patient = random_patient(rng, int(rng.integers(1, 10000)), int(study_date[:4]))
    true_mm = _decimal(plan.fov_mm / spine.rows)
    spec = HeaderSpec(
        sop_class=plan.sop_class,
        photometric="MONOCHROME1" if plan.monochrome1 else "MONOCHROME2",
        compressed=False,
        window=True,
        voi_lut_sequence=False,
        second_window=bool(rng.random() < 0.25),
        study_uid=phantom_uid(label, "keypoints", "study"),
        series_uid=phantom_uid(label, "keypoints", "series"),
        sop_instance_uid=phantom_uid(label, "keypoints", "instance"),
        patient=patient,
        study_date=study_date,
        study_time=study_time,
        content_time=study_time,
        study_id=f"{int(rng.integers(1, 99999)):05d}",
        accession_number=f"PHK{int(rng.integers(0, 10**7)):07d}",
        series_number=2,
        instance_number=1,
        view="LAT",
        region=spine.region,
        pixel_spacing_mm=true_mm,
        both_spacings=False,
        model=str(rng.choice(_MODELS)),
        device_serial=f"SN{int(rng.integers(0, 10**6)):06d}",
        kvp=float(rng.integers(75, 101)),
    )
    ds = build_dataset(pixels, spec)
    return ds, _set_spacing(ds, plan, true_mm)


def _set_spacing(ds: Dataset, plan: _Plan, true_mm: float) -> tuple[float, float] | None:
    """Write the variant's spacing attributes; return the patient-plane spacing they give."""
    for keyword in (
        "PixelSpacing",
        "ImagerPixelSpacing",
        "EstimatedRadiographicMagnificationFactor",
        "PixelSpacingCalibrationType",
        "PixelSpacingCalibrationDescription",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    if plan.variant == "none":
        return None
    if plan.variant == "pixel":
        ds.PixelSpacing = [_ds(true_mm), _ds(true_mm)]
        return true_mm, true_mm
    factor = _decimal(plan.magnification)
    imager = _decimal(true_mm * factor)
    ds.ImagerPixelSpacing = [_ds(imager), _ds(imager)]
    ds.EstimatedRadiographicMagnificationFactor = _ds(factor)
    patient_mm = imager / factor
    if plan.variant == "both":
        patient_mm = _decimal(patient_mm)
        ds.PixelSpacing = [_ds(patient_mm), _ds(patient_mm)]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = f"Estimated magnification factor {_ds(factor)}"
    return patient_mm, patient_mm


def _decimal(value: float) -> float:
    """Return the value as a DS of six significant digits reads back."""
    return float(_ds(value))


def _ds(value: float) -> str:
    return f"{value:.6g}"


def _inside(points: npt.NDArray[np.float64], rows: int, cols: int) -> bool:
    x, y = points[:, 0], points[:, 1]
    return bool(np.all((x >= 1.0) & (x <= cols - 1.0) & (y >= 1.0) & (y <= rows - 1.0)))

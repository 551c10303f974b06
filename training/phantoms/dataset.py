"""Write a whole synthetic dataset in the VinDr-SpineXR folder layout.

```
<out>/annotations/train.csv
<out>/annotations/test.csv
<out>/train_images/<image_id>.dicom
<out>/test_images/<image_id>.dicom
```

Everything is planned first from the seed (splits, normal/abnormal images, lesion classes,
header variants), then each image is rendered from its own child seed, so the output does
not depend on timing or on the order of work.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from spinexr.pipeline.classes import NO_FINDING, LesionClass
from spinexr.training.data.vindr import CSV_COLUMNS
from spinexr.training.phantoms.anatomy import REGIONS, Region, View
from spinexr.training.phantoms.dicom import Photometric, SopKind, hex_uid, phantom_uid, write
from spinexr.training.phantoms.image import (
    Size,
    child_rng,
    make_phantom_image,
    random_patient,
    random_study_datetime,
    seed_label,
)

CSV_HEADER = CSV_COLUMNS
"""Columns of ``annotations/{train,test}.csv`` (VinDr-SpineXR 1.0.0), as the loader reads them."""

SPLITS = ("train", "test")

# Relative weights of an abnormal image's main lesion (osteophytes dominate, as in the data).
_PRIMARY_WEIGHTS = {
    LesionClass.OSTEOPHYTES: 0.42,
    LesionClass.SURGICAL_IMPLANT: 0.08,
    LesionClass.SPONDYLOLISTHESIS: 0.1,
    LesionClass.FORAMINAL_STENOSIS: 0.09,
    LesionClass.DISC_SPACE_NARROWING: 0.13,
    LesionClass.VERTEBRAL_COLLAPSE: 0.09,
    LesionClass.OTHER_LESIONS: 0.09,
}


@dataclass(frozen=True)
class PhantomSummary:
    """What `generate_dataset` wrote.

    Parameters
    ----------
    out_dir : pathlib.Path
        Dataset root.
    studies, images, normal_images : mapping of str to int
        Counts per split (``"train"``, ``"test"``).
    boxes : mapping of str to mapping of LesionClass to int
        Box counts per split and class (every class present, zeros included).
    files : tuple of pathlib.Path
        DICOM and CSV files written.
    seconds : float
        Wall time.
    """

    out_dir: Path
    studies: Mapping[str, int]
    images: Mapping[str, int]
    normal_images: Mapping[str, int]
    boxes: Mapping[str, Mapping[LesionClass, int]]
    files: tuple[Path, ...] = field(repr=False)
    seconds: float = 0.0

    @property
    def files_written(self) -> int:
        """Number of files written (DICOM and CSV)."""
        return len(self.files)

    @property
    def total_images(self) -> int:
        """Images in both splits."""
        return sum(self.images.values())

    @property
    def boxes_per_class(self) -> dict[LesionClass, int]:
        """Box counts per class over both splits."""
        return {c: sum(split[c] for split in self.boxes.values()) for c in LesionClass}


@dataclass(frozen=True)
class _ImagePlan:
    study: int
    view: View
    split: str
    lesions: tuple[LesionClass, ...]
    photometric: Photometric
    compressed: bool
    voi_lut_sequence: bool
    window: bool
    series_index: int
    instance_number: int


@dataclass(frozen=True)
class _StudyPlan:
    index: int
    split: str
    region: Region
    sop_class: SopKind
    rad_id: str
    separate_series: bool


def generate_dataset(
    out_dir: Path,
    studies: int,
    seed: int,
    *,
    size: Size = "full",
    vindr_like: bool = False,
    test_fraction: float = 0.2,
    progress: bool = False,
) -> PhantomSummary:
    """Write a synthetic VinDr-SpineXR-style dataset.

    Each study has an AP and a lateral view; about half of the images are normal; abnormal
    images carry boxes of the seven classes, osteophytes most often. Every class is given to
    at least one abnormal image (round-robin before the skewed draws), so all seven appear
    in any dataset; with few studies some images carry several classes. The output is
    identical for the same arguments (files byte for byte).

    Parameters
    ----------
    out_dir : pathlib.Path
        Dataset root; created if needed. Files of the same names are overwritten, other
        files are left alone (use a new or empty folder).
    studies : int
        Number of studies (two images each).
    seed : int
        Seed of everything.
    size : {"full", "small"} or tuple of int
        Image size: ``"full"`` ≈2500×1900 (varies per image), ``"small"`` 512×384, or
        ``(rows, cols)``.
    vindr_like : bool
        Write headers as the real release has them (hex ids, no SOP Class UID, Modality, Body
        Part Examined or View Position; MONOCHROME2; JPEG 2000 Lossless).
    test_fraction : float
        Fraction of studies in the test split (by study; at least one study per split when
        ``studies >= 2`` and ``0 < test_fraction < 1``).
    progress : bool
        Print progress lines (images written, rate, ETA) to stderr.

    Returns
    -------
    PhantomSummary
        Counts and files written.

    Raises
    ------
    ValueError
        If ``studies < 1`` or ``test_fraction`` is outside ``[0, 1]``.
    """
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    started = time.monotonic()
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out_dir / f"{split}_images").mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(int(seed))
    study_plans, image_plans = _plan(root, studies, test_fraction, vindr_like)
    rows: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    files: list[Path] = []
    normals = dict.fromkeys(SPLITS, 0)
    box_counts: dict[str, dict[LesionClass, int]] = {
        s: dict.fromkeys(LesionClass, 0) for s in SPLITS
    }
    report = _Progress(len(image_plans), enabled=progress)

    for plan in image_plans:
        study = study_plans[plan.study]
        study_ss = np.random.SeedSequence(root.entropy, spawn_key=(1, plan.study))
        header_rng = child_rng(study_ss, 0)
        date, time_of_day = random_study_datetime(header_rng)
        patient = random_patient(header_rng, plan.study + 1, int(date[:4]))
        label = seed_label(study_ss)
        make_id = hex_uid if vindr_like else phantom_uid
        study_uid = make_id(label, "study")
        series_uid = make_id(label, "series", plan.series_index)
        image_ss = np.random.SeedSequence(
            root.entropy, spawn_key=(2, plan.study, 0 if plan.view == "AP" else 1)
        )
        ds, boxes = make_phantom_image(
            image_ss,
            view=plan.view,
            photometric=plan.photometric,
            sop_class=study.sop_class,
            compressed=plan.compressed,
            size=size,
            lesions=plan.lesions,
            voi_lut_sequence=plan.voi_lut_sequence,
            window=plan.window,
            region=study.region,
            study_uid=study_uid,
            series_uid=series_uid,
            patient=patient,
            study_datetime=(date, time_of_day),
            series_number=plan.series_index + 1,
            instance_number=plan.instance_number,
            vindr_like=vindr_like,
        )
        image_id = str(ds.SOPInstanceUID)
        path = out_dir / f"{plan.split}_images" / f"{image_id}.dicom"
        write(ds, path)
        files.append(path)
        ids = [study_uid, series_uid, image_id, study.rad_id]
        if not boxes:
            normals[plan.split] += 1
            rows[plan.split].append([*ids, NO_FINDING, "", "", "", ""])
        for box in boxes:
            box_counts[plan.split][box.class_id] += 1
            coords = [f"{v:.2f}" for v in box.as_tuple()]
            rows[plan.split].append([*ids, box.class_id.dataset_string, *coords])
        report.step()

    for split in SPLITS:
        path = out_dir / "annotations" / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(rows[split])
        files.append(path)
    report.done()
    return PhantomSummary(
        out_dir=out_dir,
        studies={s: sum(1 for p in study_plans if p.split == s) for s in SPLITS},
        images={s: sum(1 for p in image_plans if p.split == s) for s in SPLITS},
        normal_images=normals,
        boxes=box_counts,
        files=tuple(files),
        seconds=time.monotonic() - started,
    )


def _plan(
    root: np.random.SeedSequence, studies: int, test_fraction: float, vindr_like: bool
) -> tuple[list[_StudyPlan], list[_ImagePlan]]:
    """Decide splits, regions, header variants and lesions for every image."""
    rng = child_rng(root, 0)
    n_test = round(studies * test_fraction)
    if studies >= 2 and 0.0 < test_fraction < 1.0:
        n_test = min(max(n_test, 1), studies - 1)
    test_set = set(rng.permutation(studies)[:n_test].tolist())
    n_abnormal = max(1, round(studies * 0.55))
    abnormal_studies = set(rng.permutation(studies)[:n_abnormal].tolist())

    study_plans: list[_StudyPlan] = []
    for s in range(studies):
        study_plans.append(
            _StudyPlan(
                index=s,
                split="test" if s in test_set else "train",
                region=REGIONS[int(rng.choice(3, p=[0.6, 0.25, 0.15]))],
                sop_class="CR" if rng.random() < 0.5 else "DX",
                rad_id=f"rad{int(rng.integers(1, 4))}",
                separate_series=bool(rng.random() < 0.6),
            )
        )
    if studies >= 2 and len({p.sop_class for p in study_plans}) == 1:
        flip = int(rng.integers(0, studies))
        other: SopKind = "DX" if study_plans[flip].sop_class == "CR" else "CR"
        study_plans[flip] = replace(study_plans[flip], sop_class=other)

    # Which images are abnormal: most views of an abnormal study, at least one.
    both: tuple[View, View] = ("AP", "LAT")
    abnormal: list[tuple[int, View]] = []
    for s in range(studies):
        if s not in abnormal_studies:
            continue
        chosen = [v for v in both if rng.random() < 0.88]
        abnormal.extend((s, v) for v in (chosen or [both[int(rng.integers(0, 2))]]))
    lesions = _assign_lesions(rng, len(abnormal))
    lesion_of = dict(zip(abnormal, lesions, strict=True))

    image_plans: list[_ImagePlan] = []
    for study in study_plans:
        for i, view in enumerate(both):
            voi = bool(rng.random() < 0.2)
            image_plans.append(
                _ImagePlan(
                    study=study.index,
                    view=view,
                    split=study.split,
                    lesions=lesion_of.get((study.index, view), ()),
                    photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
                    compressed=bool(rng.random() < 0.5),
                    voi_lut_sequence=voi,
                    window=(not voi) or bool(rng.random() < 0.5),
                    series_index=i if study.separate_series else 0,
                    instance_number=1 if study.separate_series else i + 1,
                )
            )
    if not vindr_like:
        image_plans = _ensure_variants(rng, image_plans)
    return study_plans, image_plans


def _assign_lesions(rng: np.random.Generator, n_images: int) -> list[tuple[LesionClass, ...]]:
    """Lesions per abnormal image: every class once (round-robin), then skewed draws."""
    if n_images == 0:
        return []
    classes = list(LesionClass)
    weights = np.array([_PRIMARY_WEIGHTS[c] for c in classes])
    weights /= weights.sum()
    guaranteed = [classes[i] for i in rng.permutation(len(classes))]
    per_image: list[list[LesionClass]] = [[] for _ in range(n_images)]
    for i, cls in enumerate(guaranteed):
        per_image[i % n_images].append(cls)
    for i in range(len(guaranteed), n_images):
        per_image[i].append(classes[int(rng.choice(len(classes), p=weights))])
    for lesions in per_image:
        if rng.random() < 0.75:
            extra = 1 + min(int(rng.poisson(1.3)), 3)
            lesions.extend([LesionClass.OSTEOPHYTES] * extra)
        if rng.random() < 0.12:
            lesions.append(classes[int(rng.choice(len(classes), p=weights))])
    order = rng.permutation(n_images)
    return [tuple(per_image[i]) for i in order]


def _ensure_variants(rng: np.random.Generator, plans: list[_ImagePlan]) -> list[_ImagePlan]:
    """Make sure both photometric values, both encodings and a VOI LUT Sequence occur."""
    if len(plans) < 2:
        return plans
    out = list(plans)
    # With two or more images, forcing a missing value onto one image cannot remove the
    # other value of a two-valued attribute.
    photometrics: tuple[Photometric, ...] = ("MONOCHROME1", "MONOCHROME2")
    for photometric in photometrics:
        if not any(p.photometric == photometric for p in out):
            i = int(rng.integers(0, len(out)))
            out[i] = replace(out[i], photometric=photometric)
    for compressed in (True, False):
        if not any(p.compressed == compressed for p in out):
            i = int(rng.integers(0, len(out)))
            out[i] = replace(out[i], compressed=compressed)
    if not any(p.voi_lut_sequence for p in out):
        i = int(rng.integers(0, len(out)))
        out[i] = replace(out[i], voi_lut_sequence=True)
    return out


class _Progress:
    """Periodic progress lines on stderr."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done_count = 0
        self.started = time.monotonic()
        self.last = self.started

    def step(self) -> None:
        self.done_count += 1
        now = time.monotonic()
        if self.enabled and (now - self.last >= 5.0 or self.done_count == self.total):
            self.last = now
            elapsed = max(now - self.started, 1e-9)
            rate = self.done_count / elapsed
            eta = (self.total - self.done_count) / rate if rate > 0 else float("inf")
            print(
                f"phantoms: {self.done_count}/{self.total} images, {rate:.2f} img/s, "
                f"ETA {eta:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def done(self) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            print(f"phantoms: done, {self.total} images in {elapsed:.1f} s", file=sys.stderr)

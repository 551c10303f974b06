"""Load a dataset in the VinDr-SpineXR 1.0.0 layout (the real release or phantoms).

```
<root>/annotations/train.csv      study_id,series_id,image_id,rad_id,lesion_type,xmin,...
<root>/annotations/test.csv       (optional)
<root>/train_images/<image_id>.dicom
<root>/test_images/<image_id>.dicom
```

Only the CSVs and the folder listings are read; no DICOM file is opened, so the loader
depends on no header (the real files have no SOP Class UID, Modality, ...) and loads the
real dataset's ~10,000 images in well under a second. ``method.md`` sections 1-2 define the
rules applied here.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from spinexr.pipeline.classes import NO_FINDING, RARE_TYPES, LesionClass
from spinexr.training.data.records import (
    BoxAnnotation,
    DatasetError,
    ImageRecord,
    SpineDataset,
)
from spinexr.training.data.splits import validation_studies

logger = logging.getLogger(__name__)

CSV_COLUMNS: Final = (
    "study_id",
    "series_id",
    "image_id",
    "rad_id",
    "lesion_type",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
)
"""Header of ``annotations/{train,test}.csv``, in order."""

IMAGE_SUFFIX: Final = ".dicom"
"""Extension of the image files (the stem is the image id)."""

_SHOW_IDS: Final = 5


@dataclass
class _Image:
    study_id: str
    series_id: str
    abnormal: bool = False
    boxes: list[BoxAnnotation] = field(default_factory=list)


@dataclass
class _Tally:
    rare: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    clipped: int = 0
    stray_coordinates: int = 0


def load_dataset(root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> SpineDataset:
    """Load the annotations and check that every annotated image file exists.

    Parameters
    ----------
    root : pathlib.Path
        Dataset root (``annotations/``, ``train_images/``, ``test_images/``).
    val_fraction : float
        Share of ``train.csv``'s studies moved to the ``val`` split (grouped by
        ``study_id``, stratified by study abnormality, see `validation_studies`).
    seed : int
        Seed of the validation split.

    Returns
    -------
    SpineDataset
        ``train``, ``val`` and ``test`` records (sorted by study, then image), with notices.

    Raises
    ------
    DatasetError
        Missing ``train.csv``, a wrong header, an unknown lesion type, an empty id, an image
        listed under two studies or in both CSVs, an unreadable coordinate (each naming the
        file and line), or annotated images whose DICOM file is missing.
    ValueError
        If `val_fraction` is outside ``[0, 1)``.
    """
    root = Path(root)
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ValueError(f"val_fraction must be within [0, 1), got {val_fraction}")
    annotations = root / "annotations"
    train_csv = annotations / "train.csv"
    if not train_csv.is_file():
        raise DatasetError(
            f"{train_csv} not found: expected the VinDr-SpineXR layout "
            "(annotations/train.csv, annotations/test.csv, train_images/, test_images/)"
        )
    notices: list[str] = []
    tally = _Tally()
    parsed = {"train": _read_csv(train_csv, tally)}
    test_csv = annotations / "test.csv"
    if test_csv.is_file():
        parsed["test"] = _read_csv(test_csv, tally)
    else:
        notices.append(f"{test_csv.name} not found: the test split is empty")

    both = sorted(parsed["train"].keys() & parsed.get("test", {}).keys())
    if both:
        raise DatasetError(
            f"{len(both)} image(s) are listed in both train.csv and test.csv "
            f"(first: {', '.join(both[:_SHOW_IDS])})"
        )
    shared = {i.study_id for i in parsed["train"].values()} & {
        i.study_id for i in parsed.get("test", {}).values()
    }
    if shared:
        notices.append(f"{len(shared)} study id(s) occur in both train.csv and test.csv")

    paths = {split: _image_paths(root, split, images, notices) for split, images in parsed.items()}

    if tally.rare:
        counts = ", ".join(f"{name!r}: {n}" for name, n in sorted(tally.rare.items()))
        notices.append(
            f"{sum(tally.rare.values())} box(es) of rare lesion types folded into "
            f"'{LesionClass.OTHER_LESIONS.dataset_string}' ({counts})"
        )
    dropped = sum(tally.dropped.values())
    if dropped:
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(tally.dropped.items()))
        notices.append(f"{dropped} degenerate box(es) dropped ({why})")
    if tally.clipped:
        notices.append(f"{tally.clipped} box(es) with negative coordinates clipped at 0")
    if tally.stray_coordinates:
        notices.append(
            f"{tally.stray_coordinates} '{NO_FINDING}' row(s) carry coordinates; ignored"
        )

    abnormal_by_study: dict[str, bool] = defaultdict(bool)
    for image in parsed["train"].values():
        abnormal_by_study[image.study_id] |= image.abnormal
    val = validation_studies(abnormal_by_study, val_fraction, seed)

    splits: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for source, images in parsed.items():
        for image_id, image in images.items():
            split = "val" if source == "train" and image.study_id in val else source
            splits[split].append(
                ImageRecord(
                    image_id=image_id,
                    study_id=image.study_id,
                    series_id=image.series_id,
                    path=paths[source][image_id],
                    split=split,
                    abnormal=image.abnormal,
                    boxes=tuple(image.boxes),
                )
            )
    for records in splits.values():
        records.sort(key=lambda r: (r.study_id, r.image_id))

    for line in notices:
        logger.info("dataset %s: %s", root.name, line)
    return SpineDataset(root=root, splits=splits, notices=notices, dropped_boxes=dropped)


def _read_csv(path: Path, tally: _Tally) -> dict[str, _Image]:
    """Parse one annotation CSV into images keyed by image id."""
    images: dict[str, _Image] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_COLUMNS:
            raise DatasetError(
                f"{path}: header is {','.join(header or []) or '(empty file)'}; "
                f"expected {','.join(CSV_COLUMNS)}"
            )
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(CSV_COLUMNS):
                raise DatasetError(f"{where}: {len(row)} columns, expected {len(CSV_COLUMNS)}")
            cells = dict(zip(CSV_COLUMNS, (c.strip() for c in row), strict=True))
            image_id = _identifier(cells, "image_id", where)
            study_id = _identifier(cells, "study_id", where)
            series_id = _identifier(cells, "series_id", where)
            image = images.setdefault(image_id, _Image(study_id, series_id))
            if image.study_id != study_id:
                raise DatasetError(
                    f"{where}: image {image_id} is listed under study {study_id} "
                    f"and under study {image.study_id}"
                )
            lesion_type = cells["lesion_type"]
            if lesion_type == NO_FINDING:
                if any(cells[k] for k in ("xmin", "ymin", "xmax", "ymax")):
                    tally.stray_coordinates += 1
                continue
            label = _label(lesion_type, where, tally)
            image.abnormal = True
            box = _box(cells, label, where, tally)
            if box is not None:
                image.boxes.append(box)
    return images


def _identifier(cells: dict[str, str], column: str, where: str) -> str:
    value = cells[column]
    if not value:
        raise DatasetError(f"{where}: empty {column}")
    if column == "image_id" and (
        "/" in value or "\\" in value or value in (".", "..") or "\x00" in value
    ):
        raise DatasetError(f"{where}: image_id {value!r} cannot be a file name")
    return value


def _label(lesion_type: str, where: str, tally: _Tally) -> int:
    try:
        cls = LesionClass.from_dataset_string(lesion_type)
    except KeyError:
        known = [c.dataset_string for c in LesionClass]
        raise DatasetError(
            f"{where}: unknown lesion type {lesion_type!r}; expected {NO_FINDING!r}, one of "
            f"{known} or a rare type folded into 'Other lesions' ({sorted(RARE_TYPES)})"
        ) from None
    if lesion_type not in (c.dataset_string for c in LesionClass):
        tally.rare[lesion_type] += 1
    return int(cls)


def _box(cells: dict[str, str], label: int, where: str, tally: _Tally) -> BoxAnnotation | None:
    """Parse a box; `None` (counted) when it is degenerate."""
    coords: list[float] = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        text = cells[key]
        if not text:
            tally.dropped["missing coordinate"] += 1
            return None
        try:
            coords.append(float(text))
        except ValueError:
            raise DatasetError(f"{where}: {key} {text!r} is not a number") from None
    xmin, ymin, xmax, ymax = coords
    if not all(math.isfinite(v) for v in coords):
        tally.dropped["not finite"] += 1
        return None
    if xmax <= xmin or ymax <= ymin:
        tally.dropped["max <= min"] += 1
        return None
    if xmax <= 0.0 or ymax <= 0.0:
        tally.dropped["outside the image"] += 1
        return None
    if xmin < 0.0 or ymin < 0.0:
        tally.clipped += 1
        xmin, ymin = max(xmin, 0.0), max(ymin, 0.0)
    return BoxAnnotation(label, xmin, ymin, xmax, ymax, cells["rad_id"])


def _image_paths(
    root: Path, split: str, images: dict[str, _Image], notices: list[str]
) -> dict[str, Path]:
    """Map every annotated image to its file; error on missing files, count extra ones."""
    folder = root / f"{split}_images"
    on_disk: set[str] = set()
    if folder.is_dir():
        with os.scandir(folder) as entries:
            on_disk = {
                e.name[: -len(IMAGE_SUFFIX)]
                for e in entries
                if e.name.endswith(IMAGE_SUFFIX) and e.is_file()
            }
    missing = sorted(images.keys() - on_disk)
    if missing:
        where = folder if folder.is_dir() else f"{folder} (folder missing)"
        raise DatasetError(
            f"{len(missing)} of {len(images)} images in {split}.csv have no file "
            f"<image_id>{IMAGE_SUFFIX} in {where}; first: {', '.join(missing[:_SHOW_IDS])}"
        )
    extra = len(on_disk - images.keys())
    if extra:
        notices.append(f"{extra} file(s) in {folder.name}/ are not in {split}.csv and are ignored")
    return {image_id: folder / f"{image_id}{IMAGE_SUFFIX}" for image_id in images}

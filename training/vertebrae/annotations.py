"""The vertebral keypoint annotation CSV for real data: format, validator, loader.

Beside VinDr-SpineXR's lesion CSVs, in the same folder layout::

    <root>/annotations/vertebrae_train.csv
    <root>/annotations/vertebrae_test.csv     (optional)
    <root>/train_images/<image_id>.dicom
    <root>/test_images/<image_id>.dicom

One row per vertebra per rater, columns `CSV_COLUMNS`::

    study_id,series_id,image_id,rad_id,level,x_at,y_at,x_ab,y_ab,x_mt,y_mt,x_mb,y_mb,x_pt,y_pt,x_pb,y_pb

``level`` is one of `LEVELS` (C1–C7, T1–T13, L1–L6, S1) or empty when the rater did not name
the vertebra; ``S1`` is the first sacral segment (its plateau corners and the points one
segment height below). The twelve coordinates are the six keypoints (anterior top, anterior
bottom, middle top, middle bottom, posterior top, posterior bottom) in original image pixels,
``x`` the column and ``y`` the row, with (0, 0) the top-left corner of the top-left pixel.
A row with an empty level and all twelve coordinates empty says that the rater found no
vertebra on the image.

`load_annotations` validates every row and raises `AnnotationError` naming the file and line
of the first bad one; `records_from_folder` reads the DICOM files through the serving
preprocessing into `KeypointRecord` objects, using one rater per image (the first ``rad_id``
in sorted order) as the training target.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.errors import InvalidDicomError

from spinexr.pipeline.errors import UnsupportedImageError
from spinexr.pipeline.preprocess import MIN_SIZE, check_supported, decode_pixels, display_image
from spinexr.pipeline.spacing import measurement_spacing
from spinexr.pipeline.vertebrae.genant import HEIGHT_NAMES
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.data.records import DatasetError
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

logger = logging.getLogger(__name__)

ID_COLUMNS: Final = ("study_id", "series_id", "image_id", "rad_id")
"""Identifier columns, as in VinDr-SpineXR's CSVs."""

POINT_COLUMNS: Final = (
    ("x_at", "y_at"),
    ("x_ab", "y_ab"),
    ("x_mt", "y_mt"),
    ("x_mb", "y_mb"),
    ("x_pt", "y_pt"),
    ("x_pb", "y_pb"),
)
"""``(x, y)`` columns of the six keypoints, in `genant.KEYPOINT_NAMES` order."""

CSV_COLUMNS: Final = (
    *ID_COLUMNS,
    "level",
    *(c for pair in POINT_COLUMNS for c in pair),
)
"""Header of ``annotations/vertebrae_{train,test}.csv``, in order."""

LEVELS: Final = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 14)),
    *(f"L{i}" for i in range(1, 7)),
    "S1",
)
"""Accepted level names, top to bottom (T13 and L6 are transitional variants)."""

SACRUM_LEVEL: Final = "S1"
"""The level of the first sacral segment (object kind `ObjectKind.SACRUM`)."""

CSV_NAMES: Final = {"train": "vertebrae_train.csv", "test": "vertebrae_test.csv"}
"""File name of each split's CSV under ``<root>/annotations``."""

IMAGE_SUFFIX: Final = ".dicom"
"""Extension of the image files (the stem is the image id), as VinDr-SpineXR's."""

_EDGE_TOLERANCE: Final = 1.0
"""Pixels a keypoint may lie outside the image (clicks on the border)."""


class AnnotationError(DatasetError):
    """A keypoint CSV row or file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class AnnotationRow:
    """One validated CSV row: one vertebra (or S1) of one image by one rater.

    Attributes
    ----------
    line : int
        Line of the row in its file (1 is the header).
    rad_id : str
        Rater.
    level : str or None
        Level name, None when unnamed.
    keypoints : numpy.ndarray
        ``(6, 2)`` float ``(x, y)``.
    """

    line: int
    rad_id: str
    level: str | None
    keypoints: npt.NDArray[np.float64]

    @property
    def kind(self) -> ObjectKind:
        """Sacrum for level S1, else vertebra."""
        return ObjectKind.SACRUM if self.level == SACRUM_LEVEL else ObjectKind.VERTEBRA

    def to_object(self) -> AnnotatedObject:
        """Return the row as an `AnnotatedObject`."""
        return AnnotatedObject(kind=self.kind, level=self.level, keypoints=self.keypoints)


@dataclass(frozen=True)
class ImageAnnotation:
    """Every rater's keypoints of one image.

    Attributes
    ----------
    path : pathlib.Path
        The CSV it came from.
    study_id, series_id, image_id : str
        Identifiers.
    rows : tuple of AnnotationRow
        Its rows in file order (a rater who found no vertebra has no row here but is listed
        in ``rad_ids``).
    rad_ids : tuple of str
        Raters of this image, sorted.
    """

    path: Path
    study_id: str
    series_id: str
    image_id: str
    rows: tuple[AnnotationRow, ...]
    rad_ids: tuple[str, ...]

    @property
    def training_rater(self) -> str:
        """The rater whose keypoints are the training target: the first ``rad_id`` sorted."""
        return self.rad_ids[0]

    def objects(self, rad_id: str | None = None) -> list[AnnotatedObject]:
        """One rater's annotated objects.

        Parameters
        ----------
        rad_id : str, optional
            Rater; the `training_rater` when omitted.

        Returns
        -------
        list of AnnotatedObject
            In file order.
        """
        who = self.training_rater if rad_id is None else rad_id
        return [r.to_object() for r in self.rows if r.rad_id == who]


def load_annotations(path: Path) -> dict[str, ImageAnnotation]:
    """Read and validate one keypoint CSV.

    Parameters
    ----------
    path : pathlib.Path
        ``vertebrae_train.csv`` or ``vertebrae_test.csv`` (any name is accepted).

    Returns
    -------
    dict of str to ImageAnnotation
        Keyed by image id, in order of first appearance.

    Raises
    ------
    AnnotationError
        Naming the file and line: a header without every column of `CSV_COLUMNS` (extra
        columns are allowed), a row with a missing value, an empty id, an image id that
        cannot be a file name, an image listed under two studies or series, an unknown
        level, a coordinate that is not a finite number, a duplicate level for the same
        image and rater, or a top point not above its bottom point.
    """
    path = Path(path)
    images: dict[str, _Builder] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        columns = _header(path, header)
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}, line {reader.line_num}"
            cells = _cells(columns, row, where)
            image_id = _identifier(cells, "image_id", where)
            builder = images.setdefault(
                image_id,
                _Builder(
                    _identifier(cells, "study_id", where),
                    _identifier(cells, "series_id", where),
                ),
            )
            builder.add(cells, reader.line_num, where)
    return {
        image_id: ImageAnnotation(
            path=path,
            study_id=b.study_id,
            series_id=b.series_id,
            image_id=image_id,
            rows=tuple(b.rows),
            rad_ids=tuple(sorted(b.rad_ids)),
        )
        for image_id, b in images.items()
    }


def records_from_folder(
    root: Path,
    *,
    splits: Sequence[str] = ("train", "test"),
    min_size: int = MIN_SIZE,
) -> list[KeypointRecord]:
    """Read a keypoint dataset folder into `KeypointRecord` objects.

    Each image is decoded and displayed by the serving preprocessing (`check_supported`,
    `decode_pixels`, `display_image`), so training sees the pixels serving sees; the spacing
    is serving's `spinexr.pipeline.spacing.measurement_spacing` (Pixel Spacing, else Imager
    Pixel Spacing divided by the Estimated Radiographic Magnification Factor where present;
    None without either). Where several raters annotated an image, the first
    ``rad_id`` in sorted order is the training target (logged once per split).

    Parameters
    ----------
    root : pathlib.Path
        Dataset root (``annotations/``, ``train_images/``, ``test_images/``).
    splits : sequence of str
        Splits to read; a split whose CSV is absent is skipped, except ``train``.
    min_size : int
        Smallest accepted number of rows and columns (as serving).

    Returns
    -------
    list of KeypointRecord
        Sorted by split (as given), then study, then image.

    Raises
    ------
    AnnotationError
        For a bad CSV row (see `load_annotations`), a missing ``vertebrae_train.csv`` or
        DICOM file, an image listed in two splits, an image that serving would refuse, or a
        keypoint outside its image (naming the file and line).
    """
    root = Path(root)
    seen: dict[str, str] = {}
    records: list[KeypointRecord] = []
    for split in splits:
        csv_path = root / "annotations" / CSV_NAMES.get(split, f"vertebrae_{split}.csv")
        if not csv_path.is_file():
            if split == "train":
                raise AnnotationError(
                    f"{csv_path} not found: expected annotations/vertebrae_train.csv "
                    "(and optionally vertebrae_test.csv) beside train_images/ and test_images/"
                )
            logger.info("%s not found: the %s split is empty", csv_path.name, split)
            continue
        annotations = load_annotations(csv_path)
        several = 0
        for image_id, ann in annotations.items():
            if image_id in seen:
                raise AnnotationError(
                    f"{csv_path}: image {image_id} is also listed in the {seen[image_id]} split"
                )
            seen[image_id] = split
            several += len(ann.rad_ids) > 1
            records.append(_record(root / f"{split}_images", ann, split, min_size))
        if several:
            logger.info(
                "%s: %d image(s) have several raters; the first rad_id in sorted order is "
                "the training target",
                csv_path.name,
                several,
            )
    order = {s: i for i, s in enumerate(splits)}
    records.sort(key=lambda r: (order[r.split], r.study, r.image))
    return records


def annotation_rows(record: KeypointRecord, rad_id: str) -> list[list[str]]:
    """CSV rows (without header) for one record's objects, top to bottom.

    Parameters
    ----------
    record : KeypointRecord
        Image and objects.
    rad_id : str
        Rater written in every row.

    Returns
    -------
    list of list of str
        One row per object; one row with empty level and coordinates when there is none.
    """
    ids = [record.study, record.series, record.image, rad_id]
    objects = sorted(record.objects, key=lambda o: float(o.keypoints[:, 1].mean()))
    if not objects:
        return [[*ids, "", *([""] * 12)]]
    return [
        [*ids, o.level or "", *(f"{v:.3f}" for v in np.asarray(o.keypoints).reshape(-1))]
        for o in objects
    ]


def write_annotation_csv(stream: TextIO, records: Iterable[KeypointRecord], rad_id: str) -> int:
    """Write the header and every record's rows.

    Parameters
    ----------
    stream : file-like
        Text stream opened with ``newline=""``.
    records : iterable of KeypointRecord
        Images and objects.
    rad_id : str
        Rater written in every row.

    Returns
    -------
    int
        Number of rows written after the header.
    """
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for record in records:
        rows = annotation_rows(record, rad_id)
        writer.writerows(rows)
        n += len(rows)
    return n


# --- parsing --------------------------------------------------------------------------------


class _Builder:
    """Rows of one image while its CSV is read."""

    def __init__(self, study_id: str, series_id: str) -> None:
        self.study_id = study_id
        self.series_id = series_id
        self.rows: list[AnnotationRow] = []
        self.rad_ids: set[str] = set()
        self.levels: dict[tuple[str, str], int] = {}

    def add(self, cells: Mapping[str, str], line: int, where: str) -> None:
        for column, known in (("study_id", self.study_id), ("series_id", self.series_id)):
            if cells[column] != known:
                raise AnnotationError(
                    f"{where}: image {cells['image_id']} is listed under {column} "
                    f"{cells[column]} and under {known}"
                )
        rad_id = _identifier(cells, "rad_id", where)
        self.rad_ids.add(rad_id)
        level = _level(cells["level"], where)
        coordinates = [cells[c] for pair in POINT_COLUMNS for c in pair]
        if level is None and not any(coordinates):
            return  # "no vertebra on this image" from this rater
        if level is not None:
            first = self.levels.setdefault((rad_id, level), line)
            if first != line:
                raise AnnotationError(
                    f"{where}: level {level} of image {cells['image_id']} is given twice by "
                    f"rater {rad_id!r} (first on line {first})"
                )
        self.rows.append(AnnotationRow(line, rad_id, level, _keypoints(cells, where)))


def _header(path: Path, header: list[str] | None) -> list[str]:
    if header is None:
        raise AnnotationError(f"{path}, line 1: empty file; expected the header {CSV_COLUMNS}")
    columns = [h.strip() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
        raise AnnotationError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; expected "
            f"{','.join(CSV_COLUMNS)}"
        )
    return columns


def _cells(columns: list[str], row: list[str], where: str) -> dict[str, str]:
    if len(row) > len(columns):
        raise AnnotationError(f"{where}: {len(row)} values for {len(columns)} columns")
    absent = [c for c in columns[len(row) :] if c in CSV_COLUMNS]
    if absent:
        raise AnnotationError(
            f"{where}: {len(row)} values for {len(columns)} columns (no {', '.join(absent)})"
        )
    padded = [*row, *([""] * (len(columns) - len(row)))]
    return {c: v.strip() for c, v in zip(columns, padded, strict=True)}


def _identifier(cells: Mapping[str, str], column: str, where: str) -> str:
    value = cells[column]
    if not value:
        raise AnnotationError(f"{where}: empty {column}")
    if column == "image_id" and (
        "/" in value or "\\" in value or value in (".", "..") or "\x00" in value
    ):
        raise AnnotationError(f"{where}: image_id {value!r} cannot be a file name")
    return value


def _level(text: str, where: str) -> str | None:
    if not text:
        return None
    level = text.upper()
    if level not in LEVELS:
        raise AnnotationError(
            f"{where}: unknown level {text!r}; expected one of C1-C7, T1-T13, L1-L6, S1 or empty"
        )
    return level


def _keypoints(cells: Mapping[str, str], where: str) -> npt.NDArray[np.float64]:
    values: list[float] = []
    for column in (c for pair in POINT_COLUMNS for c in pair):
        text = cells[column]
        if not text:
            raise AnnotationError(f"{where}: {column} is empty")
        try:
            value = float(text)
        except ValueError:
            raise AnnotationError(f"{where}: {column} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise AnnotationError(f"{where}: {column} {text!r} is not a finite number")
        values.append(value)
    points = np.asarray(values, dtype=np.float64).reshape(6, 2)
    for i, name in enumerate(HEIGHT_NAMES):
        top, bottom = points[2 * i], points[2 * i + 1]
        if not top[1] < bottom[1]:
            raise AnnotationError(
                f"{where}: degenerate {name} height: the top point (y = {top[1]:g}) is not "
                f"above the bottom point (y = {bottom[1]:g})"
            )
    return points


# --- images ---------------------------------------------------------------------------------


def _record(folder: Path, ann: ImageAnnotation, split: str, min_size: int) -> KeypointRecord:
    path = folder / f"{ann.image_id}{IMAGE_SUFFIX}"
    if not path.is_file():
        raise AnnotationError(
            f"{ann.path}: image {ann.image_id} has no file {path.name} in {folder}"
        )
    try:
        ds = pydicom.dcmread(path)
        check_supported(ds, min_size=min_size)
        display, _ = display_image(ds, decode_pixels(ds))
    except UnsupportedImageError as exc:
        raise AnnotationError(f"{path}: serving would refuse this image: {exc}") from exc
    except (OSError, InvalidDicomError) as exc:
        raise AnnotationError(f"{path}: cannot read the DICOM file: {exc}") from exc
    rows, cols = display.shape
    for row in ann.rows:
        pts = row.keypoints
        outside = (
            (pts[:, 0] < -_EDGE_TOLERANCE)
            | (pts[:, 0] > cols + _EDGE_TOLERANCE)
            | (pts[:, 1] < -_EDGE_TOLERANCE)
            | (pts[:, 1] > rows + _EDGE_TOLERANCE)
        )
        if outside.any():
            raise AnnotationError(
                f"{ann.path}, line {row.line}: a keypoint lies outside the "
                f"{cols}×{rows} image {ann.image_id}"
            )
    return KeypointRecord(
        study=ann.study_id,
        series=ann.series_id,
        image=ann.image_id,
        display=display,
        spacing_mm=measurement_spacing(ds).pair,
        objects=ann.objects(),
        split=split,
    )

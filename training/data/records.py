"""Typed records of a loaded VinDr-SpineXR-layout dataset: boxes, images, splits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from spinexr.pipeline.classes import LesionClass

SPLIT_NAMES: Final = ("train", "val", "test")
"""Splits of a `SpineDataset`: ``val`` is carved out of ``train.csv`` by study."""


class DatasetError(Exception):
    """A dataset folder or CSV that cannot be loaded; the message names the file and line."""


@dataclass(frozen=True)
class BoxAnnotation:
    """One lesion box of one radiologist, in original DICOM pixel coordinates.

    Attributes
    ----------
    label : int
        Class id (a `spinexr.pipeline.classes.LesionClass` value, 0..6).
    xmin, ymin, xmax, ymax : float
        Corners; (0, 0) is the top-left corner of the top-left pixel.
    rad_id : str
        Radiologist who drew the box (``rad_id`` column).
    """

    label: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    rad_id: str

    @property
    def lesion_class(self) -> LesionClass:
        """The label as a `LesionClass`."""
        return LesionClass(self.label)

    def as_tuple(self) -> tuple[float, float, float, float]:
        """Return ``(xmin, ymin, xmax, ymax)``."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset with its image-level label and boxes.

    Attributes
    ----------
    image_id : str
        File stem (the SOP Instance UID in the real release; a 32-hex string there).
    study_id, series_id : str
        Identifiers from the CSV.
    path : pathlib.Path
        The DICOM file.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    abnormal : bool
        At least one CSV row of the image is not ``No finding`` (even when its box was
        dropped as degenerate).
    boxes : tuple of BoxAnnotation
        Every kept box, in CSV row order (several radiologists' boxes are all kept).
    """

    image_id: str
    study_id: str
    series_id: str
    path: Path
    split: str
    abnormal: bool
    boxes: tuple[BoxAnnotation, ...]

    @property
    def label(self) -> int:
        """Image-level label: 1 = abnormal, 0 = normal."""
        return int(self.abnormal)


@dataclass
class SpineDataset:
    """A loaded dataset: records per split plus what the loader had to say about it.

    Attributes
    ----------
    root : pathlib.Path
        Dataset root.
    splits : dict of str to list of ImageRecord
        ``"train"``, ``"val"``, ``"test"`` → records sorted by (study_id, image_id).
    notices : list of str
        One line per thing the loader changed or ignored (rare types folded, boxes dropped,
        files not in the CSV, ...), in the order they were found.
    dropped_boxes : int
        Degenerate boxes dropped.
    """

    root: Path
    splits: dict[str, list[ImageRecord]]
    notices: list[str] = field(default_factory=list)
    dropped_boxes: int = 0

    def split(self, name: str) -> list[ImageRecord]:
        """Return the records of one split.

        Parameters
        ----------
        name : {"train", "val", "test"}
            Split name.

        Returns
        -------
        list of ImageRecord
            The records (``"test"`` is empty when the dataset has no ``test.csv``).

        Raises
        ------
        KeyError
            For another name.
        """
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        return self.splits[name]

    def box_counts(self, name: str) -> dict[LesionClass, int]:
        """Count boxes per class in one split (every class present, zeros included).

        Parameters
        ----------
        name : {"train", "val", "test"}
            Split name.

        Returns
        -------
        dict of LesionClass to int
            Box counts.
        """
        counts = Counter(b.label for r in self.split(name) for b in r.boxes)
        return {c: counts.get(int(c), 0) for c in LesionClass}

    def summary(self) -> str:
        """One line per split: studies, images, abnormal images, boxes."""
        lines = []
        for name in SPLIT_NAMES:
            records = self.splits.get(name, [])
            studies = len({r.study_id for r in records})
            abnormal = sum(r.abnormal for r in records)
            boxes = sum(len(r.boxes) for r in records)
            lines.append(
                f"{name}: {studies} studies, {len(records)} images "
                f"({abnormal} abnormal), {boxes} boxes"
            )
        return "\n".join(lines)

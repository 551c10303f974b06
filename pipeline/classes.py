"""The seven lesion classes of VinDr-SpineXR, defined once.

The order is the class id everywhere: model heads, bundle manifest, SR, GSPS layers and
evaluation (``method.md`` section 1).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NO_FINDING = "No finding"
"""Dataset string that marks a normal image (its box columns are empty)."""


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept (value, scheme designator, meaning) as used in DICOM SR."""

    value: str
    scheme: str
    meaning: str


class LesionClass(enum.IntEnum):
    """Detection classes in the dataset's order; the value is the class id."""

    OSTEOPHYTES = 0
    SURGICAL_IMPLANT = 1
    SPONDYLOLISTHESIS = 2
    FORAMINAL_STENOSIS = 3
    DISC_SPACE_NARROWING = 4
    VERTEBRAL_COLLAPSE = 5
    OTHER_LESIONS = 6

    @property
    def dataset_string(self) -> str:
        """Spelling in the VinDr-SpineXR CSV (typo ``Spondylolysthesis`` included)."""
        return _DATASET_STRINGS[self]

    @property
    def display_name(self) -> str:
        """Name shown to radiologists."""
        return _DISPLAY_NAMES[self]

    @property
    def paper_label(self) -> str:
        """Label used in the VinDr-SpineXR paper (LT2 ... LT13)."""
        return _PAPER_LABELS[self]

    @classmethod
    def from_dataset_string(cls, text: str) -> LesionClass:
        """Map a CSV ``lesion_type`` to its class.

        The six rare types the paper annotates separately are folded into
        ``OTHER_LESIONS``, as the released CSV already does.

        Parameters
        ----------
        text : str
            The ``lesion_type`` cell.

        Returns
        -------
        LesionClass
            The class.

        Raises
        ------
        KeyError
            If the string is neither a class nor a known rare type (``No finding`` included:
            callers handle it before asking).
        """
        key = text.strip()
        if key in _BY_DATASET_STRING:
            return _BY_DATASET_STRING[key]
        if key.lower() in RARE_TYPES:
            return cls.OTHER_LESIONS
        raise KeyError(f"unknown lesion type {text!r}")


_DATASET_STRINGS = {
    LesionClass.OSTEOPHYTES: "Osteophytes",
    LesionClass.SURGICAL_IMPLANT: "Surgical implant",
    LesionClass.SPONDYLOLISTHESIS: "Spondylolysthesis",
    LesionClass.FORAMINAL_STENOSIS: "Foraminal stenosis",
    LesionClass.DISC_SPACE_NARROWING: "Disc space narrowing",
    LesionClass.VERTEBRAL_COLLAPSE: "Vertebral collapse",
    LesionClass.OTHER_LESIONS: "Other lesions",
}
_DISPLAY_NAMES = {
    **_DATASET_STRINGS,
    LesionClass.SPONDYLOLISTHESIS: "Spondylolisthesis",
}
_PAPER_LABELS = {
    LesionClass.OSTEOPHYTES: "LT6",
    LesionClass.SURGICAL_IMPLANT: "LT10",
    LesionClass.SPONDYLOLISTHESIS: "LT8",
    LesionClass.FORAMINAL_STENOSIS: "LT4",
    LesionClass.DISC_SPACE_NARROWING: "LT2",
    LesionClass.VERTEBRAL_COLLAPSE: "LT11",
    LesionClass.OTHER_LESIONS: "LT13",
}
_BY_DATASET_STRING = {v: k for k, v in _DATASET_STRINGS.items()}

RARE_TYPES = frozenset(
    {
        "ankylosis",
        "enthesophytes",
        "fracture",
        "sclerotic lesion",
        "subchondral sclerosis",
        "foreign body",
    }
)
"""Paper types folded into ``Other lesions`` (lower case)."""

CLASS_NAMES: tuple[str, ...] = tuple(c.display_name for c in LesionClass)
"""Display names in class-id order (what a bundle manifest lists)."""

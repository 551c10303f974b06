"""What an image's header says about whether it is a spine radiograph (tags, not pixels).

The node analyses spine radiographs. `tag_verdict` reads what the header says about the
anatomy, most specific attribute first, and answers `TagAnatomy.SPINE`, `TagAnatomy.OTHER`
or `TagAnatomy.UNKNOWN`:

1. **Body Part Examined** (0018,0015). A defined term of PS3.16 CID 4031 / Annex L for the
   spine (`SPINE_BODY_PARTS`: ``SPINE``, ``CSPINE``, ``TSPINE``, ``LSPINE``, ``SSPINE``,
   ``COCCYX``, ``SACRUM``, ...) says spine; a defined term for another part
   (`OTHER_BODY_PARTS`: ``CHEST``, ``HAND``, ``KNEE``, ...) says not spine. Free text
   (``L-SPINE``, ``LUMBAR SPINE``, ``HAND LEFT``) is read word by word like a description.
   ``WHOLEBODY``, ``NECK``, ``SKELETON`` and anything unknown say nothing.
2. **Series Description** (0008,103E), then **Protocol Name** (0018,1030): words of the
   spine vocabulary (English, German, French, Spanish, Italian, Portuguese, Dutch, Polish
   stems: ``spine``, ``lumbar``, ``LWS``, ``Wirbelsäule``, ``rachis``, ``columna``, ...) say
   spine; words naming another part (``chest``, ``thorax``, ``hand``, ``knee``, ...) say not
   spine. A text naming both (``Thorax + BWS``) says spine: a spine image may be in it.
3. **Study Description** (0008,1030) speaks for the whole study, not for one image: it can
   say a study is not of the spine (``XR CHEST``), but a spine study can hold a chest image,
   so a spine study description leaves the image `UNKNOWN` (the image check decides).

The first attribute that says something decides. `UNKNOWN` means "analyse, subject to the
image check" (`spinexr.pipeline.anatomy`). The matched vocabulary word, not the header's own
text, is what a verdict reports, so a reason never carries free text from the header.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset


class TagAnatomy(enum.StrEnum):
    """What the header says about the anatomy of an image."""

    SPINE = "spine"
    OTHER = "other"
    UNKNOWN = "unknown"


class TagSource(enum.StrEnum):
    """The attribute a verdict comes from (DICOM attribute names)."""

    BODY_PART = "Body Part Examined"
    SERIES_DESCRIPTION = "Series Description"
    PROTOCOL_NAME = "Protocol Name"
    STUDY_DESCRIPTION = "Study Description"


SPINE_BODY_PARTS: Final = frozenset(
    {
        "SPINE",
        "CSPINE",
        "TSPINE",
        "LSPINE",
        "SSPINE",
        "CTSPINE",
        "TLSPINE",
        "LSSPINE",
        "WHOLESPINE",
        "COCCYX",
        "SACRUM",
    }
)
"""Body Part Examined defined terms (PS3.16 CID 4031 / Annex L) of the spine, compacted
(upper case, no spaces, hyphens or underscores)."""

OTHER_BODY_PARTS: Final = frozenset(
    {
        "ABDOMEN",
        "ABDOMENPELVIS",
        "ACJOINT",
        "ANKLE",
        "ARM",
        "BREAST",
        "CALCANEUS",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CLAVICLE",
        "ELBOW",
        "EXTREMITY",
        "FEMUR",
        "FINGER",
        "FOOT",
        "FOREARM",
        "HAND",
        "HEAD",
        "HEADNECK",
        "HEART",
        "HIP",
        "HUMERUS",
        "JAW",
        "KNEE",
        "LEG",
        "LOWEREXTREMITY",
        "LUNG",
        "MANDIBLE",
        "MAXILLA",
        "ORBIT",
        "PATELLA",
        "PELVIS",
        "RIB",
        "SCAPULA",
        "SHOULDER",
        "SKULL",
        "STERNUM",
        "THORAX",
        "THUMB",
        "TIBIA",
        "TMJ",
        "TOE",
        "UPPEREXTREMITY",
        "WRIST",
        "ZYGOMA",
    }
)
"""Body Part Examined defined terms (compacted) of parts other than the spine."""

SPINE_WORDS: Final = frozenset(
    {
        # English
        "SPINE",
        "SPINAL",
        "LUMBAR",
        "LUMBOSACRAL",
        "THORACOLUMBAR",
        "CERVICOTHORACIC",
        "CERVICAL",
        "THORACIC",
        "SACRUM",
        "SACRAL",
        "COCCYX",
        "COCCYGEAL",
        # German (Wirbelsäule and its parts)
        "WS",
        "HWS",
        "BWS",
        "LWS",
        "KREUZBEIN",
        "STEISSBEIN",
        # French, Spanish, Italian, Portuguese
        "LOMBAIRE",
        "LOMBARE",
        "CERVICALE",
        "SACRO",
        "COLUMNA",
        "COLONNE",
        "COLONNA",
        "COLUNA",
        # Dutch, Polish
        "WERVELKOLOM",
        "KREGOSLUP",
    }
)
"""Words of a description that name the spine (after `normalise_text`)."""

SPINE_STEMS: Final = ("VERTEBR", "SPONDYL", "SCOLIO", "SKOLIO", "ESCOLIO", "RACHI", "RAQUI")
"""Word beginnings that name the spine (vertebra, spondylolisthesis, scoliosis, rachis)."""

SPINE_INFIXES: Final = ("SPINE", "WIRBEL")
"""Parts of a word that name the spine (``LSPINE``, ``Lendenwirbelsäule``)."""

OTHER_WORDS: Final = frozenset(
    {
        # English
        "CHEST",
        "THORAX",
        "LUNG",
        "LUNGS",
        "HEART",
        "CARDIAC",
        "RIB",
        "RIBS",
        "STERNUM",
        "CLAVICLE",
        "SCAPULA",
        "SHOULDER",
        "HUMERUS",
        "ARM",
        "FOREARM",
        "ELBOW",
        "WRIST",
        "HAND",
        "HANDS",
        "FINGER",
        "FINGERS",
        "THUMB",
        "PELVIS",
        "HIP",
        "HIPS",
        "FEMUR",
        "KNEE",
        "KNEES",
        "PATELLA",
        "TIBIA",
        "FIBULA",
        "LEG",
        "LEGS",
        "ANKLE",
        "FOOT",
        "FEET",
        "TOE",
        "TOES",
        "HEEL",
        "CALCANEUS",
        "SKULL",
        "HEAD",
        "SINUS",
        "SINUSES",
        "FACIAL",
        "MANDIBLE",
        "JAW",
        "ORBIT",
        "ORBITS",
        "NASAL",
        "ABDOMEN",
        "ABDOMINAL",
        "KUB",
        "BREAST",
        "MAMMOGRAPHY",
        "EXTREMITY",
        "EXTREMITIES",
        # German
        "LUNGE",
        "RIPPEN",
        "SCHULTER",
        "OBERARM",
        "UNTERARM",
        "ELLENBOGEN",
        "HANDGELENK",
        "DAUMEN",
        "BECKEN",
        "HUEFTE",
        "OBERSCHENKEL",
        "KNIE",
        "UNTERSCHENKEL",
        "SPRUNGGELENK",
        "FUSS",
        "ZEHE",
        "SCHAEDEL",
        "BAUCH",
        # French, Spanish, Italian, Portuguese
        "TORAX",
        "TORACE",
        "POUMON",
        "POUMONS",
        "PULMON",
        "PULMONAR",
        "EPAULE",
        "COUDE",
        "POIGNET",
        "MANO",
        "BASSIN",
        "HANCHE",
        "CADERA",
        "GENOU",
        "RODILLA",
        "GINOCCHIO",
        "JOELHO",
        "CHEVILLE",
        "TOBILLO",
        "CRANE",
        "CRANEO",
        "CRANIO",
    }
)
"""Words of a description that name a part other than the spine."""

_NOT_LETTERS = re.compile(r"[^A-Z0-9]+")
_FOLD: Final[Mapping[str, str]] = {"Ä": "AE", "Ö": "OE", "Ü": "UE", "ß": "SS", "Ł": "L"}


def normalise_text(text: str) -> str:
    """Upper-case ASCII form of a header text: umlauts as ``AE``, accents dropped.

    Parameters
    ----------
    text : str
        A Body Part Examined or description value.

    Returns
    -------
    str
        Upper case, German umlauts spelled out (``Wirbelsäule`` → ``WIRBELSAEULE``), other
        accents removed (``tórax`` → ``TORAX``); everything else but letters and digits
        becomes a single space.
    """
    upper = text.upper()
    folded = "".join(_FOLD.get(ch, ch) for ch in upper)
    decomposed = unicodedata.normalize("NFKD", folded)
    unaccented = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NOT_LETTERS.sub(" ", unaccented).strip()


@dataclass(frozen=True)
class TagVerdict:
    """What the header says about an image's anatomy, and where it says it.

    Attributes
    ----------
    anatomy : TagAnatomy
        Spine, other, or unknown.
    source : TagSource or None
        The attribute that decided (None for `TagAnatomy.UNKNOWN`).
    term : str or None
        The vocabulary word or defined term that matched (never the header's free text).
    """

    anatomy: TagAnatomy
    source: TagSource | None = None
    term: str | None = None

    @property
    def reason(self) -> str:
        """``"Body Part Examined CHEST"``, or ``"no anatomy in the header"``."""
        if self.source is None or self.term is None:
            return "no anatomy in the header"
        return f"{self.source.value} {self.term}"


UNKNOWN: Final = TagVerdict(TagAnatomy.UNKNOWN)


def text_anatomy(text: str) -> tuple[TagAnatomy, str | None]:
    """Classify one free-text value by its words.

    Parameters
    ----------
    text : str
        A description, protocol name or free-text body part.

    Returns
    -------
    tuple of (TagAnatomy, str or None)
        `TagAnatomy.SPINE` when any word names the spine (even beside another part),
        else `TagAnatomy.OTHER` when a word names another part, else `TagAnatomy.UNKNOWN`;
        with the matched vocabulary entry.
    """
    words = normalise_text(text).split()
    for word in words:
        if word in SPINE_WORDS:
            return TagAnatomy.SPINE, word
        stem = next((s for s in SPINE_STEMS if word.startswith(s)), None)
        stem = stem or next((s for s in SPINE_INFIXES if s in word), None)
        if stem is not None:
            return TagAnatomy.SPINE, stem
    for word in words:
        if word in OTHER_WORDS or word in OTHER_BODY_PARTS:
            return TagAnatomy.OTHER, word
    return TagAnatomy.UNKNOWN, None


def body_part_anatomy(body_part: str) -> tuple[TagAnatomy, str | None]:
    """Classify a Body Part Examined value: defined terms first, then its words.

    Parameters
    ----------
    body_part : str
        The attribute's value (any case; empty when absent).

    Returns
    -------
    tuple of (TagAnatomy, str or None)
        The anatomy and the matched term.
    """
    compact = normalise_text(body_part).replace(" ", "")
    if not compact:
        return TagAnatomy.UNKNOWN, None
    if compact in SPINE_BODY_PARTS:
        return TagAnatomy.SPINE, compact
    if compact in OTHER_BODY_PARTS:
        return TagAnatomy.OTHER, compact
    return text_anatomy(body_part)


def tag_verdict(
    body_part_examined: str = "",
    series_description: str = "",
    protocol_name: str = "",
    study_description: str = "",
) -> TagVerdict:
    """Decide from the header whether an image is a spine radiograph.

    Parameters
    ----------
    body_part_examined, series_description, protocol_name, study_description : str
        The attributes' values (empty when absent).

    Returns
    -------
    TagVerdict
        The first attribute that names an anatomy decides, in the order Body Part Examined,
        Series Description, Protocol Name; Study Description can only say `OTHER`.
    """
    anatomy, term = body_part_anatomy(body_part_examined)
    if anatomy is not TagAnatomy.UNKNOWN:
        return TagVerdict(anatomy, TagSource.BODY_PART, term)
    for source, text in (
        (TagSource.SERIES_DESCRIPTION, series_description),
        (TagSource.PROTOCOL_NAME, protocol_name),
    ):
        anatomy, term = text_anatomy(text)
        if anatomy is not TagAnatomy.UNKNOWN:
            return TagVerdict(anatomy, source, term)
    anatomy, term = text_anatomy(study_description)
    if anatomy is TagAnatomy.OTHER:
        return TagVerdict(anatomy, TagSource.STUDY_DESCRIPTION, term)
    return UNKNOWN


def dataset_tag_verdict(ds: Dataset) -> TagVerdict:
    """Apply `tag_verdict` to a dataset's attributes.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An image (header suffices).

    Returns
    -------
    TagVerdict
        What its header says.
    """

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value)

    return tag_verdict(
        text("BodyPartExamined"),
        text("SeriesDescription"),
        text("ProtocolName"),
        text("StudyDescription"),
    )

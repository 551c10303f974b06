r"""Choose the series of a CT study to analyse, by stated rules, and record why.

`select_series` groups instance headers (read with ``stop_before_pixels``) by Series
Instance UID. A series is **eligible** when none of these checks fails (each failure is a
`CtRefusal` reason, in this order; all failures are listed):

1. ``not_ct``: every instance is CT Image Storage, Enhanced CT Image Storage or Legacy
   Converted Enhanced CT Image Storage (`CT_SOP_CLASSES`; a dose report, a secondary
   capture or a presentation state is not).
2. ``localizer``: no Image Type value is ``LOCALIZER``.
3. ``not_original``: Image Type value 1 is ``ORIGINAL``, value 2 is not ``SECONDARY``, and
   no value is a reformat or projection term (`DERIVED_TERMS`: ``REFORMATTED``, ``MPR``,
   ``MIP``...).
4. ``body_part``: Body Part Examined, compacted (upper case, no spaces, hyphens or
   underscores), is one of ``allowed_body_parts`` (default `ALLOWED_BODY_PARTS`); for
   enhanced CT without it, the Frame Anatomy's SNOMED CT region
   (`ANATOMIC_REGION_BODY_PARTS`) stands in. An absent value fails unless
   ``allow_absent_body_part``.
5. ``invalid_header`` or a geometry problem of `geometry.analyse_stack` (inconsistent
   orientation / pixel spacing / matrix, duplicate positions, ``tilted``, irregular spacing,
   ``missing_slices``), all from positions and orientations.
6. ``not_axial``: the slice normal is within `AXIAL_TOLERANCE_DEG` of the patient's z axis
   (for a tilted series the reason is ``tilted``, with its angle, unless the normal is
   further off than the tilt explains).
7. ``too_few_slices``: at least ``min_slices`` (default `MIN_SLICES`) slices.
8. ``short_coverage``: at least ``min_coverage_mm`` (default `MIN_COVERAGE_MM`) from the
   first to the last slice centre plus one spacing.

Among eligible series the ranking rules (`RankingRule`, in order) keep, one after the other,
the candidates that are best on that rule, until one is left:

1. ``slice_spacing``: smallest median step between slices along the normal (ties within
   `SPACING_TIE_MM`);
2. ``slice_thickness``: smallest median Slice Thickness (ties within `SPACING_TIE_MM`; a
   series without one counts as thickest);
3. ``kernel``: best `KernelClass` of Convolution Kernel (`classify_kernel`): sharp (bone,
   lung, edge) first, then standard, then unknown, then soft;
4. ``coverage``: largest coverage (ties within `COVERAGE_TIE_MM`);
5. ``series_number``: lowest Series Number (absent last);
6. ``series_instance_uid``: lowest UID as text (always decides).

Every other series is reported with its reasons: the failed checks, or ``outranked`` with the
rule that dropped it and both values. Reasons carry UIDs, counts, mm, degrees and DICOM
defined terms only, never free text from a header.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from spinexr.pipeline.bodypart import OTHER_BODY_PARTS, SPINE_BODY_PARTS
from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.geometry import (
    Plane,
    StackGeometry,
    analyse_stack,
    functional_group,
    planes_of,
)

CT_SOP_CLASSES: Final = frozenset(
    {str(CTImageStorage), str(EnhancedCTImageStorage), str(LegacyConvertedEnhancedCTImageStorage)}
)
"""SOP Classes accepted as CT images."""

ALLOWED_BODY_PARTS: Final = frozenset(
    {
        "CHEST",
        "THORAX",
        "ABDOMEN",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "ABDOMENPELVIS",
        "ABDPELVIS",
        "SPINE",
        "TSPINE",
        "LSPINE",
        "TLSPINE",
        "WHOLESPINE",
        "WHOLEBODY",
    }
)
"""Default Body Part Examined values (compacted) of the CT rules: trunk and spine."""

ANATOMIC_REGION_BODY_PARTS: Final = {
    "816094009": "CHEST",
    "818981001": "ABDOMEN",
    "416550000": "CHESTABDOMEN",
    "416775004": "CHESTABDPELVIS",
    "818982008": "ABDOMENPELVIS",
    "421060004": "SPINE",
    "122494005": "CSPINE",
    "122495006": "TSPINE",
    "122496007": "LSPINE",
    "38266002": "WHOLEBODY",
    "69536005": "HEAD",
    "816092008": "PELVIS",
}
"""SNOMED CT codes of Anatomic Region Sequence (enhanced CT's Frame Anatomy, CID 4031) and
the Body Part Examined term each stands for, used when Body Part Examined is absent."""

DERIVED_TERMS: Final = frozenset(
    {
        "REFORMATTED",
        "MPR",
        "CPR",
        "CURVED",
        "MIP",
        "MINIP",
        "AVERAGE",
        "PROJECTION IMAGE",
        "VOLUME",
        "VOLUME RENDER",
        "RESAMPLED",
        "SCREEN SAVE",
    }
)
"""Image Type values that mark a reformat, projection or screen capture."""

AXIAL_TOLERANCE_DEG: Final = 5.0
"""Largest angle between an axial series' slice normal and the patient's z axis."""

MIN_SLICES: Final = 20
"""Default smallest number of slices."""

MIN_COVERAGE_MM: Final = 100.0
"""Default smallest coverage along the normal (about three vertebrae with their discs)."""

SPACING_TIE_MM: Final = 0.1
"""Slice spacings (and thicknesses) closer than this count as equal when ranking."""

COVERAGE_TIE_MM: Final = 10.0
"""Coverages closer than this count as equal when ranking."""

OUTRANKED: Final = "outranked"
"""Reason code of an eligible series that a ranking rule dropped."""

_IMAGE_TYPE_TERMS: Final = frozenset(
    {"ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY", "AXIAL", "LOCALIZER", "NONE", "MIXED"}
    | DERIVED_TERMS
)
_KNOWN_BODY_PARTS: Final = ALLOWED_BODY_PARTS | SPINE_BODY_PARTS | OTHER_BODY_PARTS
_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")


class KernelClass(enum.StrEnum):
    """Sharpness class of a reconstruction kernel (`classify_kernel`)."""

    SHARP = "sharp"
    STANDARD = "standard"
    UNKNOWN = "unknown"
    SOFT = "soft"

    @property
    def preference(self) -> int:
        """Rank when choosing a series (0 is best)."""
        return _KERNEL_PREFERENCE[self]


_KERNEL_PREFERENCE: Final = {
    KernelClass.SHARP: 0,
    KernelClass.STANDARD: 1,
    KernelClass.UNKNOWN: 2,
    KernelClass.SOFT: 3,
}

KERNEL_WORDS: Final = {
    KernelClass.SHARP: frozenset(
        {"BONE", "BONEPLUS", "SHARP", "EDGE", "DETAIL", "LUNG", "HIGHRES", "ULTRASHARP"}
    ),
    KernelClass.STANDARD: frozenset({"STANDARD", "STD", "STND", "MEDIUM", "NORMAL"}),
    KernelClass.SOFT: frozenset({"SOFT", "SMOOTH", "SOFTTISSUE"}),
}
"""Words (split on anything not a letter or digit, upper case) that name a kernel class."""

_CANON = re.compile(r"^FC(\d{2})")
_PHILIPS = re.compile(r"^[YU]?([A-EL])$")
_SIEMENS = re.compile(r"^[A-Z]{1,2}(\d{2})[A-Z]?$")


def classify_kernel(kernel: Sequence[str] | str | None) -> KernelClass:
    r"""Classify a Convolution Kernel by keyword rules for common vendor names.

    Rules, tried on each value in turn (upper case); the first that applies decides:

    1. A word of `KERNEL_WORDS` (GE ``BONE``, ``BONEPLUS``, ``LUNG``, ``EDGE``, ``DETAIL`` →
       sharp; ``STANDARD`` → standard; ``SOFT`` → soft; any vendor's free words alike).
    2. Canon / Toshiba ``FCnn``: 30–39 (bone), 50–59 (lung), 80–89 (high-resolution bone)
       → sharp; 00–29 (body and head) → standard; others unknown.
    3. Philips single letters, optionally prefixed ``Y`` or ``U``: ``A`` → soft, ``B`` and
       ``C`` → standard, ``D``, ``E``, ``L`` → sharp.
    4. Siemens ``B70f``, ``Br64``, ``I40f``, ``Qr40``...: one or two letters, two digits
       n, an optional letter: n ≥ 60 → sharp, 35 ≤ n < 60 → standard, n < 35 → soft.

    These are approximations of the vendors' families (a sharp lung kernel counts as sharp:
    it resolves the end plates, with more noise).

    Parameters
    ----------
    kernel : str, sequence of str or None
        Convolution Kernel (0018,1210), possibly multi-valued (Siemens adds an iterative
        strength, e.g. ``Br40d\3``).

    Returns
    -------
    KernelClass
        `KernelClass.UNKNOWN` when no rule applies or the value is absent.
    """
    if kernel is None:
        return KernelClass.UNKNOWN
    values = [kernel] if isinstance(kernel, str) else list(kernel)
    for value in values:
        text = str(value).strip().upper()
        if not text:
            continue
        words = {w for w in _NOT_ALNUM.split(text) if w}
        for cls, vocabulary in KERNEL_WORDS.items():
            if words & vocabulary:
                return cls
        compact = _NOT_ALNUM.sub("", text)
        if m := _CANON.match(compact):
            n = int(m.group(1))
            if 30 <= n <= 39 or 50 <= n <= 59 or 80 <= n <= 89:
                return KernelClass.SHARP
            return KernelClass.STANDARD if n <= 29 else KernelClass.UNKNOWN
        if m := _PHILIPS.match(compact):
            letter = m.group(1)
            if letter == "A":
                return KernelClass.SOFT
            return KernelClass.STANDARD if letter in "BC" else KernelClass.SHARP
        if m := _SIEMENS.match(compact):
            n = int(m.group(1))
            if n >= 60:
                return KernelClass.SHARP
            return KernelClass.STANDARD if n >= 35 else KernelClass.SOFT
    return KernelClass.UNKNOWN


class RankingRule(enum.StrEnum):
    """Rules that rank eligible series, in the order they apply (module docstring)."""

    SLICE_SPACING = "slice_spacing"
    SLICE_THICKNESS = "slice_thickness"
    KERNEL = "kernel"
    COVERAGE = "coverage"
    SERIES_NUMBER = "series_number"
    SERIES_INSTANCE_UID = "series_instance_uid"


ELIGIBILITY: Final = "eligibility"
"""Name of the first deciding step (the checks of the module docstring)."""


@dataclass(frozen=True)
class SeriesReason:
    """Why a series was not chosen.

    Attributes
    ----------
    code : str
        A `CtRefusal` value, or `OUTRANKED`.
    detail : str
        One line: counts, mm, degrees, UIDs and DICOM defined terms only.
    """

    code: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """Return ``{"code": ..., "detail": ...}``."""
        return {"code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class SeriesFacts:
    """What selection measured on one series, and its verdict.

    Attributes
    ----------
    series_instance_uid : str
        Series Instance UID ("" when the headers lack one).
    series_number : int or None
        Series Number.
    instances : int
        Number of instances (files).
    slices : int
        Number of planes (frames of enhanced images count one each; 0 when unknown).
    slice_spacing_mm : float or None
        Median step between slices along the normal.
    slice_thickness_mm : float or None
        Median Slice Thickness.
    coverage_mm : float or None
        First to last slice centre plus one spacing.
    axial_angle_deg : float or None
        Angle between the slice normal and the patient's z axis.
    tilt_deg : float or None
        Angle between the stacking direction and the slice normal.
    kernel : KernelClass
        Class of Convolution Kernel.
    eligible : bool
        Whether every eligibility check passed.
    reasons : tuple of SeriesReason
        Why it was not chosen (empty for the chosen series).
    """

    series_instance_uid: str
    series_number: int | None
    instances: int
    slices: int
    slice_spacing_mm: float | None
    slice_thickness_mm: float | None
    coverage_mm: float | None
    axial_angle_deg: float | None
    tilt_deg: float | None
    kernel: KernelClass
    eligible: bool
    reasons: tuple[SeriesReason, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (floats rounded to 0.001)."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "instances": self.instances,
            "slices": self.slices,
            "slice_spacing_mm": _round(self.slice_spacing_mm),
            "slice_thickness_mm": _round(self.slice_thickness_mm),
            "coverage_mm": _round(self.coverage_mm),
            "axial_angle_deg": _round(self.axial_angle_deg),
            "tilt_deg": _round(self.tilt_deg),
            "kernel": str(self.kernel),
            "eligible": self.eligible,
            "reasons": [r.to_dict() for r in self.reasons],
        }


@dataclass(frozen=True)
class SeriesChoice:
    """The series chosen from a study, the rules that decided, and why the others were not.

    Attributes
    ----------
    series_instance_uid : str or None
        The chosen series; None when no series is eligible.
    decided_by : tuple of str
        `ELIGIBILITY` followed by each `RankingRule` value that dropped at least one
        eligible series, in order (empty when nothing is eligible).
    series : tuple of SeriesFacts
        Every series of the study, by Series Number then UID.
    rules : tuple of str
        All ranking rules in the order they apply.
    """

    series_instance_uid: str | None
    decided_by: tuple[str, ...]
    series: tuple[SeriesFacts, ...]
    rules: tuple[str, ...] = field(default=tuple(str(r) for r in RankingRule))

    @property
    def chosen(self) -> SeriesFacts | None:
        """Facts of the chosen series, None when nothing is eligible."""
        for s in self.series:
            if s.series_instance_uid == self.series_instance_uid:
                return s
        return None

    @property
    def ignored(self) -> dict[str, tuple[SeriesReason, ...]]:
        """Reasons of every series not chosen, by Series Instance UID."""
        return {
            s.series_instance_uid: s.reasons
            for s in self.series
            if s.series_instance_uid != self.series_instance_uid
        }

    def require(self) -> str:
        """Return the chosen series' UID, or refuse the study.

        Returns
        -------
        str
            Series Instance UID.

        Raises
        ------
        UnsupportedSeriesError
            ``no_eligible_series``, naming each series' first reason.
        """
        if self.series_instance_uid is not None:
            return self.series_instance_uid
        summary = "; ".join(
            f"{s.series_instance_uid or '(no UID)'}: {s.reasons[0].code}"
            for s in self.series
            if s.reasons
        )
        raise UnsupportedSeriesError(
            CtRefusal.NO_ELIGIBLE_SERIES,
            f"none of the {len(self.series)} series is eligible ({summary or 'no series'})",
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict for the job's record."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "decided_by": list(self.decided_by),
            "rules": list(self.rules),
            "series": [s.to_dict() for s in self.series],
        }


def select_series(
    headers: Sequence[Dataset],
    *,
    allowed_body_parts: Collection[str] = ALLOWED_BODY_PARTS,
    allow_absent_body_part: bool = False,
    min_slices: int = MIN_SLICES,
    min_coverage_mm: float = MIN_COVERAGE_MM,
) -> SeriesChoice:
    """Choose the series of a study to analyse (rules in the module docstring).

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        One header per instance of the study, in any order (``stop_before_pixels`` is
        enough).
    allowed_body_parts : collection of str
        Accepted Body Part Examined values (compacted: upper case, no spaces, hyphens or
        underscores).
    allow_absent_body_part : bool
        Accept a series without Body Part Examined.
    min_slices : int
        Smallest number of slices.
    min_coverage_mm : float
        Smallest coverage along the normal.

    Returns
    -------
    SeriesChoice
        The chosen UID (None when nothing is eligible), the deciding rules, and per-series
        facts and reasons. `SeriesChoice.require` turns "nothing eligible" into an error.
    """
    groups: dict[str, list[Dataset]] = {}
    for ds in headers:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append(ds)
    allowed = frozenset(_compact(p) for p in allowed_body_parts)
    facts = [
        _assess(
            uid,
            datasets,
            allowed=allowed,
            allow_absent_body_part=allow_absent_body_part,
            min_slices=min_slices,
            min_coverage_mm=min_coverage_mm,
        )
        for uid, datasets in groups.items()
    ]
    facts.sort(key=lambda f: (_missing_last(f.series_number), f.series_instance_uid))
    eligible = [f for f in facts if f.eligible]
    if not eligible:
        return SeriesChoice(series_instance_uid=None, decided_by=(), series=tuple(facts))
    winner, decided, dropped = _rank(eligible)
    out = []
    for f in facts:
        if f.series_instance_uid in dropped:
            rule, detail = dropped[f.series_instance_uid]
            f = _with_reasons(f, (SeriesReason(OUTRANKED, f"{rule}: {detail}"),))
        out.append(f)
    return SeriesChoice(
        series_instance_uid=winner.series_instance_uid,
        decided_by=(ELIGIBILITY, *decided),
        series=tuple(out),
    )


# --- eligibility -----------------------------------------------------------------------------


def _assess(
    uid: str,
    datasets: list[Dataset],
    *,
    allowed: frozenset[str],
    allow_absent_body_part: bool,
    min_slices: int,
    min_coverage_mm: float,
) -> SeriesFacts:
    """Measure one series and run the eligibility checks."""
    reasons: list[SeriesReason] = []

    def fail(code: CtRefusal, detail: str) -> None:
        reasons.append(SeriesReason(str(code), detail))

    if not uid:
        fail(CtRefusal.INVALID_HEADER, "instances without a Series Instance UID")
    number = _series_number(datasets)
    kernel = classify_kernel(_kernel_values(datasets[0]))
    not_ct = sum(str(ds.get("SOPClassUID", "")) not in CT_SOP_CLASSES for ds in datasets)
    base: dict[str, Any] = {
        "series_instance_uid": uid,
        "series_number": number,
        "instances": len(datasets),
        "kernel": kernel,
    }
    if not_ct:
        fail(
            CtRefusal.NOT_CT,
            f"{not_ct} of {len(datasets)} instance(s) are not CT or Enhanced CT Image Storage",
        )
        return _facts(base, None, None, reasons)
    _check_image_type(datasets, fail)
    _check_body_part(datasets, allowed, allow_absent_body_part, fail)
    try:
        planes = [p for ds in datasets for p in planes_of(ds)]
    except UnsupportedSeriesError as exc:
        fail(exc.refusal, exc.message)
        return _facts(base, None, None, reasons)
    geometry = analyse_stack(planes)
    if geometry.problem is not None:
        fail(*geometry.problem)
    tilted = geometry.problem is not None and geometry.problem[0] is CtRefusal.TILTED
    allowed_angle = AXIAL_TOLERANCE_DEG + (geometry.tilt_deg if tilted else 0.0)
    if geometry.axial_angle_deg > allowed_angle:
        fail(
            CtRefusal.NOT_AXIAL,
            f"slice normal is {geometry.axial_angle_deg:.1f}° from the z axis "
            f"(at most {AXIAL_TOLERANCE_DEG:g}°)",
        )
    if geometry.slices < min_slices:
        fail(CtRefusal.TOO_FEW_SLICES, f"{geometry.slices} slice(s), at least {min_slices}")
    if geometry.coverage_mm < min_coverage_mm:
        fail(
            CtRefusal.SHORT_COVERAGE,
            f"covers {geometry.coverage_mm:.1f} mm, at least {min_coverage_mm:g} mm",
        )
    return _facts(base, geometry, planes, reasons)


def _facts(
    base: dict[str, Any],
    geometry: StackGeometry | None,
    planes: list[Plane] | None,
    reasons: list[SeriesReason],
) -> SeriesFacts:
    thicknesses = [p.slice_thickness for p in planes or () if p.slice_thickness is not None]
    return SeriesFacts(
        **base,
        slices=geometry.slices if geometry else 0,
        slice_spacing_mm=geometry.spacing_mm if geometry else None,
        slice_thickness_mm=float(np.median(thicknesses)) if thicknesses else None,
        coverage_mm=geometry.coverage_mm if geometry else None,
        axial_angle_deg=geometry.axial_angle_deg if geometry else None,
        tilt_deg=geometry.tilt_deg if geometry else None,
        eligible=not reasons,
        reasons=tuple(reasons),
    )


def _check_image_type(datasets: list[Dataset], fail: Callable[[CtRefusal, str], None]) -> None:
    localizers = 0
    derived: dict[str, int] = {}
    for ds in datasets:
        values = [str(v).strip().upper() for v in _as_list(ds.get("ImageType"))]
        if "LOCALIZER" in values:
            localizers += 1
        bad = []
        if not values or values[0] != "ORIGINAL":
            bad.append(values[0] if values else "(absent)")
        if len(values) > 1 and values[1] == "SECONDARY":
            bad.append("SECONDARY")
        bad += [v for v in values[2:] if v in DERIVED_TERMS]
        for term in bad:
            derived[term] = derived.get(term, 0) + 1
    n = len(datasets)
    if localizers:
        fail(CtRefusal.LOCALIZER, f"{localizers} of {n} instance(s) have Image Type LOCALIZER")
    if derived:
        terms = ", ".join(
            f"{_known(t, _IMAGE_TYPE_TERMS | {'(absent)'})} ×{c}"
            for t, c in sorted(derived.items())
        )
        fail(CtRefusal.NOT_ORIGINAL, f"Image Type is not ORIGINAL\\PRIMARY: {terms}")


def _check_body_part(
    datasets: list[Dataset],
    allowed: frozenset[str],
    allow_absent: bool,
    fail: Callable[[CtRefusal, str], None],
) -> None:
    parts = {_body_part(ds) for ds in datasets}
    bad = sorted(p for p in parts if p not in allowed and not (p == "" and allow_absent))
    if bad:
        named = ", ".join(_known(p, _KNOWN_BODY_PARTS) if p else "(absent)" for p in bad)
        fail(CtRefusal.BODY_PART, f"Body Part Examined {named} is not an allowed part")


# --- ranking ---------------------------------------------------------------------------------


def _rank(
    eligible: list[SeriesFacts],
) -> tuple[SeriesFacts, list[str], dict[str, tuple[str, str]]]:
    """Apply the ranking rules; return the winner, deciding rules and who was dropped why."""
    inf = float("inf")
    # Each rule: a "smaller is better" value, the tie tolerance, and how to print a value.
    rules: list[tuple[RankingRule, Callable[[SeriesFacts], Any], float, Callable[[Any], str]]] = [
        (RankingRule.SLICE_SPACING, lambda f: _or(f.slice_spacing_mm, inf), SPACING_TIE_MM, _mm),
        (
            RankingRule.SLICE_THICKNESS,
            lambda f: _or(f.slice_thickness_mm, inf),
            SPACING_TIE_MM,
            _mm,
        ),
        (RankingRule.KERNEL, lambda f: f.kernel.preference, 0.0, _kernel_name),
        (RankingRule.COVERAGE, lambda f: -_or(f.coverage_mm, 0.0), COVERAGE_TIE_MM, _neg_mm),
        (RankingRule.SERIES_NUMBER, lambda f: _missing_last(f.series_number), 0.0, _number),
        (RankingRule.SERIES_INSTANCE_UID, lambda f: f.series_instance_uid, 0.0, str),
    ]
    candidates = list(eligible)
    decided: list[str] = []
    dropped: dict[str, tuple[str, str]] = {}
    for rule, key, tie, show in rules:
        if len(candidates) == 1:
            break
        best = min(key(f) for f in candidates)
        keep = [f for f in candidates if _within(key(f), best, tie)]
        if len(keep) < len(candidates):
            decided.append(str(rule))
            for f in candidates:
                if f not in keep:
                    dropped[f.series_instance_uid] = (
                        str(rule),
                        f"{show(key(f))}, best {show(best)}",
                    )
        candidates = keep
    return candidates[0], decided, dropped


def _within(value: Any, best: Any, tie: float) -> bool:
    if isinstance(value, str):
        return bool(value == best)
    return bool(value <= best + tie)


def _with_reasons(f: SeriesFacts, reasons: tuple[SeriesReason, ...]) -> SeriesFacts:
    return replace(f, reasons=reasons)


# --- small helpers ---------------------------------------------------------------------------


def _compact(text: str) -> str:
    return _NOT_ALNUM.sub("", text.upper())


def _known(term: str, vocabulary: Collection[str]) -> str:
    """Return the term when it is a known defined term, else a placeholder (no free text)."""
    return term if term in vocabulary else "(other value)"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _kernel_values(ds: Dataset) -> list[str]:
    """Read Convolution Kernel: top level, else enhanced CT's macros."""
    values = _as_list(ds.get("ConvolutionKernel"))
    if values or "PerFrameFunctionalGroupsSequence" not in ds:
        return [str(v) for v in values]
    for macro in ("CTReconstructionSequence", "UnassignedSharedConvertedAttributesSequence"):
        try:
            values = _as_list(functional_group(ds, 0, macro).get("ConvolutionKernel"))
        except KeyError:
            continue
        if values:
            break
    return [str(v) for v in values]


def _body_part(ds: Dataset) -> str:
    """Read the compacted Body Part Examined, else enhanced CT's Frame Anatomy region."""
    text = _compact(str(ds.get("BodyPartExamined", "") or ""))
    if text or "PerFrameFunctionalGroupsSequence" not in ds:
        return text
    try:
        region = functional_group(ds, 0, "FrameAnatomySequence").AnatomicRegionSequence[0]
    except (KeyError, AttributeError, IndexError):
        return ""
    if str(region.get("CodingSchemeDesignator", "")) not in ("SCT", "SRT"):
        return "?"
    return ANATOMIC_REGION_BODY_PARTS.get(str(region.get("CodeValue", "")), "?")


def _series_number(datasets: list[Dataset]) -> int | None:
    try:
        value = datasets[0].get("SeriesNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _missing_last(number: int | None) -> float:
    return float("inf") if number is None else float(number)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mm(value: float) -> str:
    return "absent" if value == float("inf") else f"{value:.3f} mm"


def _neg_mm(value: float) -> str:
    return f"{-value:.1f} mm"


def _kernel_name(value: int) -> str:
    return next(str(k) for k, v in _KERNEL_PREFERENCE.items() if v == value)


def _number(value: float) -> str:
    return "absent" if value == float("inf") else f"{int(value)}"

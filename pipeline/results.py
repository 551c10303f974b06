"""Typed, JSON-serialisable results of analysing a study.

`StudyResult` is what the worker stores and what the DICOM builders (SR, GSPS, ...) read.
Models are immutable pydantic models validated on construction and on `StudyResult.from_json`
(unknown fields are refused). Enums serialise as stable strings: lesion classes by their
`LesionClass` member name (``"OSTEOPHYTES"``, ...), outcomes and fusion modes by value.
`study_result_schema` returns the JSON Schema of the serialised form.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.ct.findings import CtAnalysis
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import VertebralAnalysis

RESULT_SCHEMA_VERSION: Literal[1] = 1
"""Version of the serialised form; bump on incompatible changes."""


class Outcome(enum.StrEnum):
    """What the analysis of a study concluded."""

    ABNORMAL = "ABNORMAL"
    NO_FINDING = "NO_FINDING"
    FAILED = "FAILED"


class SpineCheck(enum.StrEnum):
    """How the pipeline made sure an image is a spine radiograph before analysing it.

    ``tags_and_image``: the header (`spinexr.pipeline.bodypart`), then, for images whose
    header says nothing, the bundle's anatomy model (`spinexr.pipeline.anatomy`).
    ``tags_only``: the header only; the bundle has no anatomy model.
    ``off``: no check (the site analyses every body part: ``study.body_parts = "any"``).
    """

    TAGS_AND_IMAGE = "tags_and_image"
    TAGS_ONLY = "tags_only"
    OFF = "off"


class FusionMode(enum.StrEnum):
    """How the classifier and the detector are combined (``method.md`` section 6).

    ``paper``: the image probability is the classifier's; boxes follow the fusion rule.
    ``paper+average``: the image probability is the mean of the classifier's and the
    highest box score (0 with no box); boxes follow the same rule on that probability.
    """

    PAPER = "paper"
    PAPER_AVERAGE = "paper+average"


def _parse_class(value: Any) -> LesionClass:
    if isinstance(value, LesionClass):
        return value
    if isinstance(value, str) and value in LesionClass.__members__:
        return LesionClass[value]
    raise ValueError(f"unknown lesion class {value!r}; expected one of {_CLASS_KEYS}")


_CLASS_KEYS = [c.name for c in LesionClass]

LesionLabel = Annotated[
    LesionClass,
    BeforeValidator(_parse_class),
    PlainSerializer(lambda c: c.name, return_type=str),
    WithJsonSchema({"type": "string", "enum": _CLASS_KEYS}),
]
"""A `LesionClass` that serialises as its member name."""

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seconds = dict[str, Annotated[float, Field(ge=0.0)]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Box(_Model):
    """One lesion box in original DICOM pixel coordinates.

    Attributes
    ----------
    label : LesionClass
        The class (serialised as its name).
    score : float
        Detector confidence in [0, 1].
    xmin, ymin, xmax, ymax : float
        Corners in original pixels (origin at the top-left corner of the top-left pixel).
    displayed : bool
        Whether the box reaches the display threshold; builders that draw boxes use
        `ImageResult.displayed_boxes`, the SR may list all kept boxes.
    """

    label: LesionLabel
    score: Probability
    xmin: float = Field(allow_inf_nan=False)
    ymin: float = Field(allow_inf_nan=False)
    xmax: float = Field(allow_inf_nan=False)
    ymax: float = Field(allow_inf_nan=False)
    displayed: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.xmax < self.xmin or self.ymax < self.ymin:
            raise ValueError(
                f"box corners out of order: ({self.xmin}, {self.ymin}, {self.xmax}, {self.ymax})"
            )
        return self


class ImageError(_Model):
    """Why an image could not be analysed.

    Attributes
    ----------
    reason : str
        Machine-readable code (`spinexr.pipeline.errors.ImageRefusal` values).
    message : str
        Human-readable explanation.
    """

    reason: str
    message: str


class ImageResult(_Model):
    """The analysis of one image (or why there is none).

    Attributes
    ----------
    sop_instance_uid, series_instance_uid : str
        The source image and its series.
    rows, columns : int or None
        Size of the source image (None when it could not be read).
    photometric : str or None
        Photometric interpretation of the source.
    pixel_spacing_basis : SpacingBasis
        Which attribute ``pixel_spacing_mm`` came from.
    pixel_spacing_mm : tuple of float or None
        (row, column) spacing.
    classifier_probability : float or None
        Ensemble probability, ``sigmoid(mean of member logits)``.
    member_logits : dict of str to float
        Architecture → logit.
    probability : float or None
        Image probability used for the decision (equals ``classifier_probability`` in
        ``paper`` fusion mode).
    decision : bool or None
        ``probability ≥ threshold``.
    boxes : list of Box
        Boxes kept by the fusion rule, highest score first; each says whether it is
        displayed.
    timings : dict of str to float
        Seconds per stage for this image.
    error : ImageError or None
        Set exactly when the image could not be analysed (all outputs are then empty).
    anatomy_scores : dict of str to float
        Probabilities of the anatomy model (``spine_ap``, ``spine_lateral``, ``other``)
        when the image check ran on this image; empty otherwise.
    vertebrae : VertebralAnalysis or None
        The vertebral fracture analysis (or why the image had none); None for results
        written by a bundle without a keypoint model.
    """

    sop_instance_uid: str
    series_instance_uid: str | None = None
    rows: int | None = Field(default=None, ge=1)
    columns: int | None = Field(default=None, ge=1)
    photometric: str | None = None
    pixel_spacing_basis: SpacingBasis = SpacingBasis.NONE
    pixel_spacing_mm: tuple[float, float] | None = None
    classifier_probability: Probability | None = None
    member_logits: dict[str, float] = Field(default_factory=dict)
    probability: Probability | None = None
    decision: bool | None = None
    boxes: list[Box] = Field(default_factory=list)
    timings: Seconds = Field(default_factory=dict)
    error: ImageError | None = None
    anatomy_scores: dict[str, Probability] = Field(default_factory=dict)
    vertebrae: VertebralAnalysis | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        analysed = self.probability is not None
        if (self.error is None) != analysed or (self.decision is None) == analysed:
            raise ValueError("an image has either an error or a probability and a decision")
        if self.error is not None and self.boxes:
            raise ValueError("a failed image has no boxes")
        return self

    @property
    def failed(self) -> bool:
        """Whether the image could not be analysed."""
        return self.error is not None

    @property
    def displayed_boxes(self) -> list[Box]:
        """The kept boxes at or above the display threshold."""
        return [b for b in self.boxes if b.displayed]


class Provenance(_Model):
    """Which model and software produced a result.

    Attributes
    ----------
    bundle_name, bundle_version : str
        From the bundle manifest.
    device_uid : str
        DICOM UID derived from the bundle's file hashes.
    weights_digest : str
        SHA-256 (hex) over the bundle's file hashes.
    demo : bool
        The bundle was trained on synthetic phantoms: outputs must say so.
    software_version : str
        Version of spinexr-node.
    torch_device : str
        Where the models ran (``cpu``, ``cuda:0``, ...).
    spine_check : SpineCheck or None
        How images were checked to be spine radiographs (None in results written before
        the check existed).
    """

    bundle_name: str
    bundle_version: str
    device_uid: str
    weights_digest: str
    demo: bool
    software_version: str
    torch_device: str
    spine_check: SpineCheck | None = None


class StudyResult(_Model):
    """The analysis of a study.

    Attributes
    ----------
    schema_version : int
        `RESULT_SCHEMA_VERSION`.
    study_instance_uid : str
        The study.
    outcome : Outcome
        ``ABNORMAL`` when the study decision is positive, any box is displayed or a vertebra
        (radiograph or CT) is graded mild or worse, ``NO_FINDING`` otherwise, ``FAILED``
        when neither a radiograph nor a CT series could be analysed.
    failure_reason : str or None
        Why the study failed (set exactly when the outcome is ``FAILED``).
    probability : float or None
        Max of the analysed radiographs' probabilities (None when none was analysed: a
        failed study, or a CT study without radiographs).
    decision : bool or None
        ``probability ≥ threshold``.
    threshold : float
        The operating threshold c*.
    display_threshold : float
        Boxes scoring below it are kept but not displayed.
    fusion_mode : FusionMode
        How classifier and detector were combined.
    flagged_classes : list of LesionClass
        Classes with at least one displayed box, in class-id order.
    images : list of ImageResult
        One per input radiograph, in input order.
    ct : CtAnalysis or None
        The vertebral fracture analysis of the study's CT (None when it has no CT image).
    provenance : Provenance
        Model and software.
    timings : dict of str to float
        Seconds per stage for the whole study (``preprocess``, ``anatomy`` when the image
        check ran, ``classifier.<arch>``, ``detector``, ``fusion``, ``total``).
    analysed_at : datetime.datetime
        When the analysis finished (UTC).
    """

    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    study_instance_uid: str
    outcome: Outcome
    failure_reason: str | None = None
    probability: Probability | None = None
    decision: bool | None = None
    threshold: Probability
    display_threshold: Probability
    fusion_mode: FusionMode
    flagged_classes: list[LesionLabel] = Field(default_factory=list)
    images: list[ImageResult] = Field(default_factory=list)
    ct: CtAnalysis | None = None
    provenance: Provenance
    timings: Seconds = Field(default_factory=dict)
    analysed_at: dt.datetime

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        failed = self.outcome is Outcome.FAILED
        if failed != (self.failure_reason is not None):
            raise ValueError("failure_reason is set exactly when the outcome is FAILED")
        if (self.probability is None) != (self.decision is None):
            raise ValueError("a study has a probability exactly when it has a decision")
        radiographs = any(im.probability is not None for im in self.images)
        if failed and self.probability is not None:
            raise ValueError("a FAILED study has no probability")
        if not failed and radiographs != (self.probability is not None):
            raise ValueError("a study has a probability exactly when a radiograph was analysed")
        if not failed and not radiographs and (self.ct is None or not self.ct.analysed):
            raise ValueError("a study that did not fail analysed a radiograph or a CT series")
        return self

    @property
    def class_flags(self) -> dict[LesionClass, bool]:
        """Every class → whether it has a displayed box in the study."""
        return {c: c in self.flagged_classes for c in LesionClass}

    @property
    def analysed_images(self) -> list[ImageResult]:
        """Images that were analysed."""
        return [im for im in self.images if not im.failed]

    @property
    def vertebral_analyses(self) -> list[tuple[ImageResult, VertebralAnalysis]]:
        """Images analysed for vertebral fractures, with their analysis."""
        return [
            (im, im.vertebrae)
            for im in self.images
            if im.vertebrae is not None and im.vertebrae.analysed
        ]

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON (enums as stable strings).

        Parameters
        ----------
        indent : int, optional
            Pretty-print with this indent.

        Returns
        -------
        str
            The JSON text.
        """
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> StudyResult:
        """Parse and validate JSON written by `to_json`.

        Parameters
        ----------
        text : str or bytes
            The JSON text.

        Returns
        -------
        StudyResult
            The result.

        Raises
        ------
        pydantic.ValidationError
            When the text is not a valid serialised result.
        """
        return cls.model_validate_json(text)


def study_result_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of `StudyResult.to_json`'s output.

    Returns
    -------
    dict
        The schema.
    """
    return StudyResult.model_json_schema(mode="serialization")

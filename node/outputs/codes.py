"""Every coded concept the output objects use, defined once.

Standard codes (SCT, DCM, UCUM) are taken only where pydicom's code dictionary (generated from
DICOM PS3.16) holds the exact value; the tests check each of them there. Concepts with no
such code use the project's private coding scheme `PROJECT_SCHEME` (a ``99``-prefixed
designator, PS3.16 section 8.2), which every SR declares in its Coding Scheme Identification
Sequence (`coding_scheme_identification`).
"""

from __future__ import annotations

import logging
from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from spinexr.node import MANUFACTURER
from spinexr.pipeline.classes import LesionClass

logger = logging.getLogger(__name__)

PROJECT_SCHEME = "99SPINEXR"
"""Coding Scheme Designator of the project's private codes."""

PROJECT_SCHEME_NAME = "spinexr-node private codes"
PROJECT_SCHEME_VERSION = "1"


def _project(value: str, meaning: str) -> Code:
    """Return a code of the private scheme (short upper-case mnemonics, SH ≤ 16)."""
    if len(value) > 16:
        raise ValueError(f"code value {value!r} is longer than 16 characters")
    return Code(value, PROJECT_SCHEME, meaning)


# ----------------------------------------------------------------------------- findings

FINDING_CODES: MappingProxyType[LesionClass, Code] = MappingProxyType(
    {
        LesionClass.OSTEOPHYTES: _project("OSTEOPHYTE", "Osteophyte"),
        LesionClass.SURGICAL_IMPLANT: Code("40388003", "SCT", "Implant"),
        LesionClass.SPONDYLOLISTHESIS: _project("SPONDYLOLISTH", "Spondylolisthesis"),
        LesionClass.FORAMINAL_STENOSIS: _project("FORAMINAL_STEN", "Spinal foraminal stenosis"),
        LesionClass.DISC_SPACE_NARROWING: _project(
            "DISC_NARROWING", "Intervertebral disc space narrowing"
        ),
        LesionClass.VERTEBRAL_COLLAPSE: _project("VERT_COLLAPSE", "Collapse of vertebra"),
        LesionClass.OTHER_LESIONS: Code("52988006", "SCT", "Lesion"),
    }
)
"""Finding type of each lesion class (TID 1410 row 3b ``Finding``)."""

SPINE_RADIOGRAPH_ABNORMALITY = _project("SPINE_XR_ABN", "Abnormal spine radiograph")
"""Finding of the image- and study-level classification groups."""

# ----------------------------------------------------------------------------- measurements

ABNORMALITY_PROBABILITY = _project("ABN_PROBABILITY", "Abnormality probability")
"""Classifier (ensemble) probability that the image or study is abnormal."""

DECISION_THRESHOLD = _project("DECISION_THRESH", "Decision threshold")
"""The operating threshold c* the decision was taken at."""

ABNORMAL_DECISION = _project("ABN_DECISION", "Abnormal at decision threshold")
"""Qualitative evaluation: probability ≥ c*; valued `YES` or `NO`."""

DETECTION_SCORE = _project("DETECTION_SCORE", "Detection confidence score")
"""Detector confidence of a box."""

ANALYSIS_FAILED = _project("ANALYSIS_FAILED", "Analysis failed")
"""Qualitative evaluation (TEXT) carrying why an image or the study could not be analysed."""

YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")

MAXIMUM = Code("56851009", "SCT", "Maximum")
"""Derivation (CID 3488) of the study probability: the maximum over its images."""

BOUNDED_BY = Code("75958009", "SCT", "Bounded by")
"""Geometric purpose of a box region (CID 219): the rectangle bounds the finding."""

PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")
"""UCUM annotation unit (dimensionless) for probabilities."""

NO_UNITS = Code("1", "UCUM", "no units")
"""UCUM unity, for scores."""

# ----------------------------------------------------------------------------- outcome

PROCESSING_SUMMARY = Code("111017", "DCM", "CAD Processing and Findings Summary")
"""Concept name of the study outcome (valued from CID 6047)."""

OUTCOME_WITH_FINDINGS = Code("111242", "DCM", "All algorithms succeeded; with findings")
NO_ABNORMAL_FINDING = Code("111241", "DCM", "All algorithms succeeded; without findings")
OUTCOME_FAILED = Code("111245", "DCM", "No algorithms succeeded; without findings")
PARTIAL_WITH_FINDINGS = Code("111244", "DCM", "Not all algorithms succeeded; with findings")
PARTIAL_WITHOUT_FINDINGS = Code("111243", "DCM", "Not all algorithms succeeded; without findings")

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
"""TID 1500 row 12 container (PS3.16) holding the outcome code and text."""

SUMMARY = Code("121111", "DCM", "Summary")
"""Concept name of the human-readable outcome text."""

# ----------------------------------------------------------------------------- document

REPORT_TITLE = Code("126000", "DCM", "Imaging Measurement Report")
"""TID 1500 document title (CID 7021)."""

PROCEDURE_REPORTED = Code("363679005", "SCT", "Imaging procedure")
"""TID 1500 ``Procedure reported`` (CID 100)."""

PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
"""Purpose of reference of the model in the Contributing Equipment Sequence (CID 7005)."""

KEY_OBJECT_TITLE = Code("113000", "DCM", "Of Interest")
"""Key Object Selection document title (CID 7010)."""

STANDARD_CODES: tuple[Code, ...] = (
    FINDING_CODES[LesionClass.SURGICAL_IMPLANT],
    FINDING_CODES[LesionClass.OTHER_LESIONS],
    YES,
    NO,
    MAXIMUM,
    BOUNDED_BY,
    PROCESSING_SUMMARY,
    OUTCOME_WITH_FINDINGS,
    NO_ABNORMAL_FINDING,
    OUTCOME_FAILED,
    PARTIAL_WITH_FINDINGS,
    PARTIAL_WITHOUT_FINDINGS,
    SUMMARY,
    REPORT_TITLE,
    PROCEDURE_REPORTED,
    PROCESSING_EQUIPMENT,
    KEY_OBJECT_TITLE,
    NO_UNITS,
)
"""The SCT/DCM/UCUM codes above that must exist in pydicom's dictionary (checked by tests).
Not listed there: the UCUM annotation `PROBABILITY_UNIT` (valid UCUM syntax) and
`QUALITATIVE_EVALUATIONS` (fixed by TID 1500 itself)."""


def finding_code(label: LesionClass) -> Code:
    """Return the finding code of a lesion class.

    Parameters
    ----------
    label : LesionClass
        The class.

    Returns
    -------
    pydicom.sr.coding.Code
        SCT where PS3.16 has the concept, else a `PROJECT_SCHEME` code.
    """
    return FINDING_CODES[label]


def coding_scheme_identification() -> list[CodingSchemeIdentificationItem]:
    """Return the Coding Scheme Identification items declaring `PROJECT_SCHEME`.

    Returns
    -------
    list of highdicom.sr.CodingSchemeIdentificationItem
        One item (PS3.3 C.12.1.1.2 Coding Scheme Identification Sequence).
    """
    return [
        CodingSchemeIdentificationItem(
            designator=PROJECT_SCHEME,
            name=PROJECT_SCHEME_NAME,
            version=PROJECT_SCHEME_VERSION,
            responsible_organization=MANUFACTURER,
        )
    ]

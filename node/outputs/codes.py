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


# ============================================================================= vertebrae
# Vertebral fracture analysis (issue 16; encoding in `spinexr.node.outputs.vertebrae_sr`).
# Standard codes below were each checked in pydicom's dictionary (`VERTEBRA_STANDARD_CODES`).

VERTEBRA = Code("51282000", "SCT", "Vertebra")
"""Finding type of the per-vertebra groups. SCT "Vertebral body" is not in pydicom's
dictionary, so the vertebra itself is the finding (its body is what the outline bounds)."""

VERTEBRA_LEVELS: MappingProxyType[str, Code] = MappingProxyType(
    {
        "T1": Code("64864005", "SCT", "T1 vertebra"),
        "T2": Code("53733008", "SCT", "T2 vertebra"),
        "T3": Code("1626008", "SCT", "T3 vertebra"),
        "T4": Code("73071006", "SCT", "T4 vertebra"),
        "T5": Code("56401006", "SCT", "T5 vertebra"),
        "T6": Code("45296009", "SCT", "T6 vertebra"),
        "T7": Code("62487009", "SCT", "T7 vertebra"),
        "T8": Code("11068009", "SCT", "T8 vertebra"),
        "T9": Code("82687006", "SCT", "T9 vertebra"),
        "T10": Code("7610001", "SCT", "T10 vertebra"),
        "T11": Code("12989004", "SCT", "T11 vertebra"),
        "T12": Code("23215003", "SCT", "T12 vertebra"),
        "L1": Code("66794005", "SCT", "L1 vertebra"),
        "L2": Code("14293000", "SCT", "L2 vertebra"),
        "L3": Code("36470004", "SCT", "L3 vertebra"),
        "L4": Code("11994002", "SCT", "L4 vertebra"),
        "L5": Code("49668003", "SCT", "L5 vertebra"),
    }
)
"""CID 7603 "Vertebra" code of each thoracic and lumbar level (finding site), as pydicom's
``codes.cid7603`` lists them."""

HEIGHT = Code("121207", "DCM", "Height")
"""Concept name of the anterior, middle and posterior heights."""

HEIGHT_SITE_MODIFIERS: MappingProxyType[str, Code] = MappingProxyType(
    {
        "anterior": Code("255549009", "SCT", "Anterior"),
        "middle": Code("C25569", "NCIt", "Middle"),
        "posterior": Code("255551008", "SCT", "Posterior"),
    }
)
"""Topographical modifier of a height's finding site (CID 212 Generic Anatomic Location
Modifier), keyed by `spinexr.pipeline.vertebrae.genant.HEIGHT_NAMES`."""

MILLIMETRE = Code("mm", "UCUM", "mm")
RATIO_UNIT = Code("{ratio}", "UCUM", "ratio")
MINIMUM = Code("255605001", "SCT", "Minimum")
"""Derivation (CID 3488) of the lowest Genant index of an image."""

GENANT_INDEX = _project("GENANT_INDEX", "Genant index")
"""``min(h_a, h_m, h_p) / max(h_a, h_m, h_p)`` (UCUM ``{ratio}``)."""

GENANT_GRADE = _project("GENANT_GRADE", "Genant grade")
"""Qualitative evaluation of a vertebra, valued from `GRADE_CODES`."""

WORST_GENANT_GRADE = _project("WORST_GENANT", "Worst Genant grade")
"""Qualitative evaluation of an image's vertebral analysis, valued from `GRADE_CODES`."""

GRADE_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "normal": Code("17621005", "SCT", "Normal"),
        "mild": Code("255604002", "SCT", "Mild"),
        "moderate": Code("6736007", "SCT", "Moderate"),
        "severe": Code("24484000", "SCT", "Severe"),
    }
)
"""Genant grade (`GenantGrade` value) → SCT normality/severity qualifier (CID 222, CID 3716)."""

VERTEBRAE_AT_GRADE: MappingProxyType[str, Code] = MappingProxyType(
    {
        "normal": _project("N_VERT_NORMAL", "Number of vertebrae graded normal"),
        "mild": _project("N_VERT_MILD", "Number of vertebrae graded mild"),
        "moderate": _project("N_VERT_MODERATE", "Number of vertebrae graded moderate"),
        "severe": _project("N_VERT_SEVERE", "Number of vertebrae graded severe"),
    }
)
"""Counts in an image's vertebral summary (UCUM ``1``), keyed by `GenantGrade` value."""

DEFORMITY = _project("VERT_DEFORMITY", "Vertebral deformity type")
DEFORMITY_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "none": _project("DEFORM_NONE", "No vertebral deformity"),
        "wedge": _project("DEFORM_WEDGE", "Wedge deformity"),
        "biconcave": _project("DEFORM_BICONCAVE", "Biconcave deformity"),
        "crush": _project("DEFORM_CRUSH", "Crush deformity"),
    }
)
"""Deformity type (`Deformity` value) → code."""

SPACING_BASIS = _project("SPACING_BASIS", "Pixel spacing used for heights")
SPACING_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "PixelSpacing": _project("PIXEL_SPACING", "Pixel Spacing"),
        "ImagerPixelSpacing/magnification": _project(
            "IMAGER_SP_MAG", "Imager Pixel Spacing / magnification factor"
        ),
        "ImagerPixelSpacing": _project("IMAGER_SPACING", "Imager Pixel Spacing (detector)"),
        "none": _project("NO_SPACING", "No pixel spacing: no heights in mm"),
    }
)
"""Where the mm came from: `SpacingBasis` value, ``/magnification`` when
EstimatedRadiographicMagnificationFactor divided Imager Pixel Spacing."""

MAGNIFICATION_FACTOR = _project("MAGNIFICATION", "Estimated radiographic magnification")
"""The EstimatedRadiographicMagnificationFactor that divided Imager Pixel Spacing."""

VERTEBRAL_ANALYSIS = _project("VERT_FX_ANALYSIS", "Vertebral fracture analysis")
"""Finding type of an image's vertebral summary group."""

VERTEBRAL_STATUS = _project("VERT_FX_STATUS", "Vertebral fracture analysis status")
STATUS_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "analysed": _project("VERT_ANALYSED", "Analysed for vertebral fractures"),
        "not_lateral": _project("VERT_NOT_LATERAL", "Not analysed: not a lateral view"),
        "no_vertebrae": _project("VERT_NONE_FOUND", "Not analysed: no vertebrae found"),
        "too_small": _project("VERT_TOO_SMALL", "Not analysed: image too small"),
        "no_model": _project("VERT_NO_MODEL", "Not analysed: no keypoint model"),
        "failed": _project("VERT_FAILED", "Not analysed: vertebral analysis failed"),
    }
)
"""`VertebralStatus` value → code."""

LEVEL_RULE = _project("VERT_LEVEL_RULE", "Vertebral level rule")
LEVEL_RULE_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "sacrum": _project("LEVELS_SACRUM", "Levels counted up from the sacrum"),
        "from_top": _project("LEVELS_FROM_TOP", "Numbered from the top, level not established"),
    }
)
"""`LevelRule` value → code."""

VERTEBRAL_NOTE = _project("VERT_FX_NOTE", "Vertebral fracture analysis note")
"""TEXT in ``Qualitative Evaluations``: per image, what the vertebral analysis concluded, why
an image was not analysed for vertebral fractures, or that its spacing was absent."""

# ============================================================================= CT
# Vertebral fractures on CT (issue 17; encoding in `spinexr.node.outputs.ct_sr`).

CT_VERTEBRAL_ANALYSIS = _project("CT_VERT_FX", "CT vertebral fracture analysis")
"""Finding type of the CT summary group."""

CT_STATUS_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "analysed": _project("CT_ANALYSED", "Analysed for vertebral fractures on CT"),
        "no_eligible_series": _project("CT_NO_SERIES", "Not analysed: no suitable CT series"),
        "no_spine": _project("CT_NO_SPINE", "Not analysed: no vertebral column found"),
        "no_vertebrae": _project("CT_NONE_FOUND", "Not analysed: no vertebra measurable"),
        "no_model": _project("CT_NO_MODEL", "Not analysed: no CT model"),
        "failed": _project("CT_FAILED", "Not analysed: CT analysis failed"),
        "refused": _project("CT_REFUSED", "Not analysed: CT series refused"),
    }
)
"""CT outcome → code: ``analysed``, the refusal codes named here, ``refused`` for every
other `spinexr.pipeline.ct.errors.CtRefusal` (a gapped, tilted, undecodable... series; the
note says which)."""

CT_NOTE = _project("CT_VERT_NOTE", "CT vertebral fracture analysis note")
"""TEXT in ``Qualitative Evaluations``: the CT series analysed (or why none was) and why each
other series of the study was not."""

HEIGHTS_IN_3D = _project("HEIGHTS_3D", "Heights measured in 3D between mapped keypoints")
"""Method of a CT vertebra's heights: measured in the patient between the keypoints found
on the straightened reformat and mapped back, free of the straightening's distortion."""


# ============================================================================= characterisation
# Benign or malignant vertebral fracture on CT (issue 18; `spinexr.node.outputs.ct_sr`).

FRACTURE_CHARACTERISATION = _project("FX_CHARACTER", "Vertebral fracture characterisation")
"""Qualitative evaluation of a characterised vertebra (and of the study), valued from
`CHARACTERISATION_CODES`."""

CHARACTERISATION_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "malignant": Code("21594007", "SCT", "Malignant"),
        "benign": Code("30807003", "SCT", "Benign"),
    }
)
"""Li et al.'s call → CID 6063 code (both in pydicom's dictionary)."""

MALIGNANCY_PROBABILITY = _project("MALIGNANCY_PROB", "Malignancy probability")
"""The vertebra's malignancy probability: the highest of its sagittal slices'."""

SLICES_SCORED = _project("FX_SLICES", "Sagittal slices scored")
"""How many 3 mm sagittal slices of the vertebra the classifier scored."""

CHARACTERISATION_STATUS_CODES: MappingProxyType[str, Code] = MappingProxyType(
    {
        "characterised": _project("FX_CHARACTERISED", "Characterised as benign or malignant"),
        "not_applicable": _project("FX_NOT_APPLIC", "Not applicable: no fracture at trigger"),
        "not_possible": _project("FX_NOT_POSSIBLE", "Not possible: edge of field of view"),
        "no_model": _project("FX_NO_MODEL", "Not characterised: no model"),
    }
)
"""`CharacterisationStatus` value → code (the study's summary)."""

CHARACTERISATION_STATUS = _project("FX_CHAR_STATUS", "Fracture characterisation status")


VERTEBRA_STANDARD_CODES: tuple[Code, ...] = (
    VERTEBRA,
    *VERTEBRA_LEVELS.values(),
    HEIGHT,
    *HEIGHT_SITE_MODIFIERS.values(),
    MILLIMETRE,
    RATIO_UNIT,
    MINIMUM,
    *GRADE_CODES.values(),
)
"""The SCT/DCM/NCIt/UCUM codes of this section (each checked in pydicom's dictionary)."""

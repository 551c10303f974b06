"""Facts every output object carries, and the node's deterministic UIDs.

Every object the node builds says who made it (our `MANUFACTURER`, the model bundle as
Manufacturer's Model Name, node and bundle versions, a serial number and Device UID derived
from the bundle weights), lists the model in the Contributing Equipment Sequence with purpose
``(109102, DCM, "Processing Equipment")`` (CID 7005: equipment that processed instances to
create new ones), and sits in a series whose description marks it as AI output (and as a
demo when the bundle was trained on phantoms).

UIDs are derived, not random: `output_uid` hashes its parts under the node's UID root
(pydicom's `generate_uid` with the parts as entropy sources), so re-building the same result
gives the same Series and SOP Instance UIDs and a PACS never gets duplicates when a result is
sent again. Box tracking UIDs are derived the same way, so the SR
and the GSPS name each finding with the same UID (`box_trackings`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal

from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from spinexr.node import MANUFACTURER, __version__
from spinexr.node.outputs.codes import PROCESSING_EQUIPMENT
from spinexr.node.settings import Settings
from spinexr.pipeline.results import Box, Provenance, StudyResult

logger = logging.getLogger(__name__)

OutputKind = Literal["sr", "gsps", "kos", "sc", "reformat"]
"""The object kinds the node builds (the same names as `Destination.objects`); ``reformat``
is a CT study's straightened mid-sagittal Secondary Capture and the GSPS drawn on it."""

OUTPUT_FORMAT_VERSION = "2"
"""Part of every derived UID: bump when the objects' layout changes incompatibly, so that a
changed object never reuses an old SOP Instance UID."""

SERIES_NUMBERS: dict[OutputKind, int] = {
    "sr": 9901,
    "gsps": 9902,
    "kos": 9903,
    "sc": 9904,
    "reformat": 9905,
}
"""Series Number of each kind of output series (high, to sort after acquired series)."""

SERIES_LABELS: dict[OutputKind, str] = {
    "sr": "SR",
    "gsps": "annotations",
    "kos": "key images",
    "sc": "burned-in boxes",
    "reformat": "CT spine reformat",
}

REFORMAT_GSPS_SERIES_NUMBER = 9906
"""Series Number of the GSPS drawn on the CT reformat (its own series: modality PR)."""

DEMO_WARNING = "DEMO - NOT FOR CLINICAL USE"
"""Added to descriptions when the bundle is a demo (ASCII: survives every character set)."""

NOT_FOR_DIAGNOSIS = "AI RESULT - NOT FOR DIAGNOSIS"

_UID_MAX = 64
_PART_SEPARATOR = "\x1f"  # pydicom concatenates entropy sources: ("ab", "c") == ("a", "bc")


def output_uid(root: str, *parts: object) -> str:
    """Return a valid DICOM UID under ``root`` derived deterministically from ``parts``.

    Parameters
    ----------
    root : str
        UID root (``settings.node.uid_root``, at most 40 characters).
    *parts : object
        Values whose ``str`` are pydicom's entropy sources; the same parts give the same UID.

    Returns
    -------
    str
        ``root + "." + digits``, at most 64 characters (`pydicom.uid.generate_uid`: the
        SHA-512 of the parts as a decimal number, cut to fit).

    Raises
    ------
    ValueError
        If ``root`` leaves no room for at least 16 digits.

    Notes
    -----
    PS3.5 section 9.1: components are digits without leading zeros, 64 characters at most.
    With a 40-character root, 23 decimal digits (~76 bits) follow.
    """
    if _UID_MAX - len(root) - 1 < 16:
        raise ValueError(f"UID root {root!r} is too long to derive UIDs from")
    return str(generate_uid(f"{root}.", [f"{p}{_PART_SEPARATOR}" for p in parts]))


@dataclass(frozen=True)
class Equipment:
    """General Equipment facts of an output object.

    Attributes
    ----------
    manufacturer : str
        `MANUFACTURER`.
    model_name : str
        The bundle name (Manufacturer's Model Name).
    software_versions : tuple of str
        Node version, then bundle name and version.
    device_serial_number : str
        First 16 hex digits of the bundle's weights digest.
    device_uid : str
        The bundle's Device UID.
    """

    manufacturer: str
    model_name: str
    software_versions: tuple[str, str]
    device_serial_number: str
    device_uid: str


def equipment(provenance: Provenance) -> Equipment:
    """Return the General Equipment facts for a result's provenance.

    Parameters
    ----------
    provenance : Provenance
        Model bundle and software that produced the result.

    Returns
    -------
    Equipment
        What goes into Manufacturer, Manufacturer's Model Name, Software Versions, Device
        Serial Number and Device UID.
    """
    return Equipment(
        manufacturer=MANUFACTURER,
        model_name=provenance.bundle_name[:64],
        software_versions=(
            f"spinexr-node {__version__}"[:64],
            f"{provenance.bundle_name} {provenance.bundle_version}"[:64],
        ),
        device_serial_number=provenance.weights_digest[:16] or "unknown",
        device_uid=provenance.device_uid,
    )


def contributing_equipment(result: StudyResult) -> ContributingEquipment:
    """Return the Contributing Equipment item describing the model that analysed the study.

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    highdicom.ContributingEquipment
        Purpose ``(109102, DCM, "Processing Equipment")``, the bundle as model name, bundle
        and analysing node versions, the weights-derived serial number, when and how it ran.
    """
    prov = result.provenance
    facts = equipment(prov)
    description = (
        f"AI analysis by {prov.bundle_name} {prov.bundle_version} "
        f"(fusion {result.fusion_mode.value}, threshold {result.threshold:.4g}, "
        f"display threshold {result.display_threshold:.4g}) on {prov.torch_device}"
    )
    if prov.demo:
        description += f"; {DEMO_WARNING}: model trained on synthetic phantoms"
    return ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=facts.model_name,
        software_versions=[
            prov.bundle_version[:64],
            f"spinexr-node {prov.software_version}"[:64],
        ],
        device_serial_number=facts.device_serial_number,
        contribution_datetime=_local(result.analysed_at),
        contribution_description=description[:1024],
    )


def series_description(settings: Settings, provenance: Provenance, kind: OutputKind) -> str:
    """Return the Series Description of an output series.

    Parameters
    ----------
    settings : Settings
        ``output.series_description_prefix`` starts the description.
    provenance : Provenance
        Adds `DEMO_WARNING` for a demo bundle.
    kind : {"sr", "gsps", "kos", "sc"}
        The object kind.

    Returns
    -------
    str
        E.g. ``"AI spinexr SR"`` or ``"AI spinexr SR DEMO - NOT FOR CLINICAL USE"`` (LO, at
        most 64 characters; the demo warning is kept whole).
    """
    head = f"{settings.output.series_description_prefix} {SERIES_LABELS[kind]}".strip()
    if not provenance.demo:
        return head[:64]
    tail = f" {DEMO_WARNING}"
    return head[: 64 - len(tail)] + tail


def content_date_time(result: StudyResult) -> tuple[str, str]:
    """Return Content Date and Time (``YYYYMMDD``, ``HHMMSS``): when the analysis finished.

    Parameters
    ----------
    result : StudyResult
        ``analysed_at`` (UTC) is converted to the node's local time, as DICOM dates without
        a Timezone Offset From UTC are local.

    Returns
    -------
    tuple of str
        Date and time.
    """
    local = _local(result.analysed_at)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S")


def apply_equipment(ds: Dataset, result: StudyResult, *, content_date: bool = True) -> None:
    """Set the attributes highdicom's constructors do not take.

    Sets Device UID (General Equipment) and, where the IOD has them, Content Date/Time to
    when the analysis finished, so that re-building a result gives the same content.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A built object (modified in place).
    result : StudyResult
        The analysis.
    content_date : bool
        Set Content Date/Time (False for presentation states, whose IOD has none).
    """
    ds.DeviceUID = result.provenance.device_uid
    if content_date:
        ds.ContentDate, ds.ContentTime = content_date_time(result)


def _local(when: dt.datetime) -> dt.datetime:
    """Return ``when`` (naive = UTC) as a naive local time (no offset: DICOM dates are local)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone().replace(tzinfo=None)


# ----------------------------------------------------------------------------- tracking


@dataclass(frozen=True)
class BoxTracking:
    """How the SR and the GSPS name one displayed box.

    Attributes
    ----------
    number : int
        1-based, study-wide, in image order then box order (highest score first).
    sop_instance_uid : str
        The source image.
    box : Box
        The box.
    identifier : str
        Tracking Identifier, e.g. ``"box 3 Osteophytes"``.
    uid : str
        Tracking UID, derived from the result (same result → same UID).
    """

    number: int
    sop_instance_uid: str
    box: Box
    identifier: str
    uid: str


def box_trackings(result: StudyResult, root: str) -> list[BoxTracking]:
    """Return the tracking identifier and UID of every displayed box of a study.

    Parameters
    ----------
    result : StudyResult
        The analysis.
    root : str
        UID root.

    Returns
    -------
    list of BoxTracking
        One per displayed box, study-wide numbering; the SR's planar ROI groups and the
        GSPS graphic objects use these identifiers and UIDs.
    """
    out: list[BoxTracking] = []
    prov = result.provenance
    for image in result.images:
        for box in image.displayed_boxes:
            number = len(out) + 1
            uid = output_uid(
                root,
                "tracking",
                OUTPUT_FORMAT_VERSION,
                result.study_instance_uid,
                image.sop_instance_uid,
                number,
                box.label.name,
                f"{box.xmin:.3f},{box.ymin:.3f},{box.xmax:.3f},{box.ymax:.3f},{box.score:.6f}",
                prov.bundle_name,
                prov.bundle_version,
                prov.weights_digest,
            )
            out.append(
                BoxTracking(
                    number=number,
                    sop_instance_uid=image.sop_instance_uid,
                    box=box,
                    identifier=f"box {number} {box.label.display_name}",
                    uid=uid,
                )
            )
    return out

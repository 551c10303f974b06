"""A Key Object Selection document flagging the images the AI found abnormal.

Optional per site (``output.kos``). Title ``(113000, DCM, "Of Interest")`` (CID 7010); the
device observer is the model; the description says why the images were selected (and that
it is a demo, for a demo bundle). Only built when at least one image is flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import DeviceObserverIdentifyingAttributes, ObserverContext
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from spinexr.node.outputs import codes
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    SERIES_NUMBERS,
    apply_equipment,
    contributing_equipment,
    equipment,
    series_description,
)
from spinexr.node.outputs.source import ascii_text
from spinexr.node.settings import Settings
from spinexr.pipeline.results import ImageResult, StudyResult

logger = logging.getLogger(__name__)


def is_flagged(image: ImageResult) -> bool:
    """Return whether an image is flagged: analysed, and positive or with a displayed box.

    Parameters
    ----------
    image : ImageResult
        The image's analysis.

    Returns
    -------
    bool
        True for images a radiologist should look at first.
    """
    return not image.failed and (bool(image.decision) or bool(image.displayed_boxes))


def flagged_images(result: StudyResult) -> list[ImageResult]:
    """Return the flagged images of a study, in input order.

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    list of ImageResult
        Images for which `is_flagged` holds.
    """
    return [im for im in result.images if is_flagged(im)]


def build_kos(
    sources: Sequence[Dataset],
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
) -> KeyObjectSelectionDocument:
    """Build the Key Object Selection document of the flagged images.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        The study's source images (headers suffice).
    result : StudyResult
        The analysis.
    settings : Settings
        ``node.name``, ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs of the document.
    instance_number : int
        Instance Number.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        The document.

    Raises
    ------
    ValueError
        If no image is flagged, or a flagged image is not among the sources.

    References
    ----------
    PS3.3 A.35.4 Key Object Selection Document IOD; PS3.16 TID 2010.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    flagged = flagged_images(result)
    if not flagged:
        raise ValueError("no flagged image: nothing to select")
    missing = [im.sop_instance_uid for im in flagged if im.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"flagged images not among the sources: {missing}")
    selected = [by_uid[im.sop_instance_uid] for im in flagged]
    prov = result.provenance
    facts = equipment(prov)
    description = (
        f"Images flagged by AI ({prov.bundle_name} {prov.bundle_version}): abnormality "
        f"probability at or above {result.threshold:.2f} or a displayed finding box. "
        "AI result - not for diagnosis."
    )
    if prov.demo:
        description = f"{DEMO_WARNING}. {description}"
    content = KeyObjectSelection(
        document_title=codes.KEY_OBJECT_TITLE,
        referenced_objects=selected,
        observer_device_context=ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=facts.device_uid,
                name=settings.node.name[:64],
                manufacturer_name=facts.manufacturer,
                model_name=facts.model_name,
                serial_number=facts.device_serial_number,
            ),
        ),
        description=ascii_text(description),
    )
    kos = KeyObjectSelectionDocument(
        evidence=selected,
        content=content,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["kos"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=facts.manufacturer,
        contributing_equipment=[contributing_equipment(result)],
        series_description=series_description(settings, prov, "kos"),
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),
        device_serial_number=facts.device_serial_number,
    )
    apply_equipment(kos, result)
    logger.debug("built KOS %s selecting %d images", sop_uid, len(selected))
    return kos

"""Which received instances are analysed, and which are the node's own results (loops).

Every instance goes through the ``study`` rules in order: SOP class, modality, body part
regex, then the body part rule of its kind (below), then study description regex and calling
AE; the first that says no is recorded as ``not for analysis: <rule>``.

Radiographs (CR, DX): with ``study.body_parts = "spine"`` (the default) an instance whose
header names a part other than the spine (`spinexr.pipeline.bodypart.tag_verdict`: Body Part
Examined, then Series Description and Protocol Name, then Study Description) is recorded
``not for analysis: not a spine image (<attribute> <term>)``; an instance whose header says
nothing is analysed, and the worker's image check (`spinexr.pipeline.anatomy`) decides.

CT (`spinexr.node.sopclasses.CT_IMAGE_SOP_CLASSES`): a CT of the chest or abdomen shows the
spine, so the radiograph rule does not apply. With ``ct.enabled`` false every CT instance is
``not for analysis: CT analysis disabled``; otherwise a Body Part Examined, compacted (upper
case, letters and digits only, as the worker's series selection compacts it), must be one of
``ct.body_parts``, else ``not for analysis: CT body part <value>`` (the compacted defined
term, or ``(other value)``: a reason carries no free text from the header). A CT instance
without Body Part Examined (or with one of no letter or digit) is analysed. Localizers,
reformats, dose reports and the like are not filtered here: the worker's series selection
(`spinexr.pipeline.ct.series.select_series`) chooses the series and records why each other
one was ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spinexr.node import MANUFACTURER
from spinexr.node.ingest.header import InstanceHeader
from spinexr.node.settings import BodyParts, Settings, compact_body_part
from spinexr.node.sopclasses import CT_IMAGE_SOP_CLASSES
from spinexr.pipeline.bodypart import (
    OTHER_BODY_PARTS,
    SPINE_BODY_PARTS,
    TagAnatomy,
    tag_verdict,
)
from spinexr.pipeline.ct.series import ALLOWED_BODY_PARTS

ANALYSE = "analyse"
NOT_SPINE = "not a spine image"
CT_DISABLED = "CT analysis disabled"
CT_BODY_PART = "CT body part"

OTHER_VALUE = "(other value)"
"""Shown for a Body Part Examined that is no defined term (a reason carries no free text)."""

_CT_CLASSES = frozenset(str(uid) for uid in CT_IMAGE_SOP_CLASSES)
_DEFINED_BODY_PARTS = ALLOWED_BODY_PARTS | SPINE_BODY_PARTS | OTHER_BODY_PARTS
"""The Body Part Examined defined terms a reason may name (compacted)."""


@dataclass(frozen=True)
class Decision:
    """Outcome of the rules for one instance."""

    analyse: bool
    rule: str

    @property
    def text(self) -> str:
        """``analyse`` or ``not for analysis: <rule>`` (stored in the database)."""
        return ANALYSE if self.analyse else f"not for analysis: {self.rule}"


def is_own_object(header: InstanceHeader, settings: Settings) -> bool:
    """Return whether an instance was produced by this node (or one sharing its UID root).

    Parameters
    ----------
    header : InstanceHeader
        The received instance.
    settings : Settings
        For the UID root.

    Returns
    -------
    bool
        True for our Manufacturer signature or an instance/series UID under our root.
    """
    root = settings.node.uid_root + "."
    return (
        header.manufacturer == MANUFACTURER
        or header.sop_instance_uid.startswith(root)
        or header.series_instance_uid.startswith(root)
    )


def decide(header: InstanceHeader, calling_ae: str, settings: Settings) -> Decision:
    """Apply the study rules from settings to one instance.

    Parameters
    ----------
    header : InstanceHeader
        The received instance.
    calling_ae : str
        Who sent it (``STOW-RS`` for HTTP).
    settings : Settings
        ``study`` section.

    Returns
    -------
    Decision
        Analyse, or the first rule that says no (``not a spine image (...)`` for a
        radiograph of another body part when ``study.body_parts`` is ``spine``; ``CT
        analysis disabled`` or ``CT body part <value>`` for CT, see the module docstring).
    """
    rules = settings.study
    if header.sop_class_uid not in rules.accepted_sop_classes:
        return Decision(False, f"SOP class {header.sop_class_uid}")
    if rules.accepted_modalities and header.modality not in rules.accepted_modalities:
        return Decision(False, f"modality {header.modality or '(none)'}")
    if rules.body_part_regex and not re.search(
        rules.body_part_regex, header.body_part_examined, re.IGNORECASE
    ):
        return Decision(False, "body part")
    if header.sop_class_uid in _CT_CLASSES:
        refusal = _ct_refusal(header, settings)
        if refusal is not None:
            return refusal
    elif rules.body_parts is BodyParts.SPINE:
        verdict = tag_verdict(
            header.body_part_examined,
            header.series_description,
            header.protocol_name,
            header.study_description,
        )
        if verdict.anatomy is TagAnatomy.OTHER:
            return Decision(False, f"{NOT_SPINE} ({verdict.reason})"[:100])
    if rules.study_description_regex and not re.search(
        rules.study_description_regex, header.study_description, re.IGNORECASE
    ):
        return Decision(False, "study description")
    if rules.analyse_calling_aets and calling_ae not in rules.analyse_calling_aets:
        return Decision(False, f"calling AE {calling_ae}")
    return Decision(True, ANALYSE)


def _ct_refusal(header: InstanceHeader, settings: Settings) -> Decision | None:
    """Apply the CT rules: ``ct.enabled``, then Body Part Examined in ``ct.body_parts``."""
    if not settings.ct.enabled:
        return Decision(False, CT_DISABLED)
    stated = compact_body_part(header.body_part_examined)
    if stated and stated not in settings.ct.body_parts:
        named = stated if stated in _DEFINED_BODY_PARTS else OTHER_VALUE
        return Decision(False, f"{CT_BODY_PART} {named}"[:100])
    return None

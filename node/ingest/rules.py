"""Which received instances are analysed, and which are the node's own results (loops).

With ``study.body_parts = "spine"`` (the default) an instance whose header names a part other
than the spine (`spinexr.pipeline.bodypart.tag_verdict`: Body Part Examined, then Series
Description and Protocol Name, then Study Description) is recorded
``not for analysis: not a spine image (<attribute> <term>)``; an instance whose header says
nothing is analysed, and the worker's image check (`spinexr.pipeline.anatomy`) decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spinexr.node import MANUFACTURER
from spinexr.node.ingest.header import InstanceHeader
from spinexr.node.settings import BodyParts, Settings
from spinexr.pipeline.bodypart import TagAnatomy, tag_verdict

ANALYSE = "analyse"
NOT_SPINE = "not a spine image"


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
        Analyse, or the first rule that says no (``not a spine image (...)`` for another
        body part when ``study.body_parts`` is ``spine``).
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
    if rules.body_parts is BodyParts.SPINE:
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

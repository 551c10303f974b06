"""What the readers behind each destination will see, by viewer family (``docs/viewers.md``).

The admin dashboard shows, per destination, the objects it receives (the site's output
profile intersected with the destination's ``objects``) and, for each viewer family, what its
readers see of them and what to add when something is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spinexr.node.settings import Destination, Settings


@dataclass(frozen=True)
class ViewerFamily:
    """A family of viewers and the objects it displays.

    Attributes
    ----------
    name : str
        E.g. ``"OHIF v3"``.
    shows : frozenset of str
        The object kinds (``sr``, ``gsps``, ``kos``, ``sc``) whose results it draws on or
        beside the images.
    recommended : tuple of str
        The profile ``docs/viewers.md`` recommends for it.
    evidence : str
        How that was established.
    """

    name: str
    shows: frozenset[str]
    recommended: tuple[str, ...]
    evidence: str


VIEWER_FAMILIES: tuple[ViewerFamily, ...] = (
    ViewerFamily(
        "OHIF v3",
        frozenset({"sr", "sc", "reformat"}),
        ("sr", "sc"),
        "checked in a browser (tests/viewers): boxes, abnormality, vertebral outlines and "
        "height lines from the SR; GSPS not applied; the capture adds grades and levels",
    ),
    ViewerFamily(
        "PACS viewers with GSPS (IHE CPI), Weasis",
        frozenset({"gsps", "sc", "kos", "reformat"}),
        ("sr", "gsps"),
        "documented by the products, not checked here",
    ),
    ViewerFamily(
        "viewers without GSPS or SR display",
        frozenset({"sc", "reformat"}),
        ("sr", "sc"),
        "any viewer shows a Secondary Capture",
    ),
)
"""The families of ``docs/viewers.md``'s profile table."""

OBJECT_NAMES = {
    "sr": "SR",
    "gsps": "GSPS",
    "kos": "KOS",
    "sc": "Secondary Capture",
    "reformat": "CT reformat",
}


def built_objects(settings: Settings) -> list[str]:
    """Return the object kinds the node builds (``[output]``).

    Parameters
    ----------
    settings : Settings
        The node's settings.

    Returns
    -------
    list of str
        Among ``sr``, ``gsps``, ``kos``, ``sc``, and ``reformat`` (a CT study's straightened
        reformat and its GSPS, built whenever a CT series is analysed).
    """
    out = settings.output
    flags = {
        "sr": out.sr,
        "gsps": out.gsps,
        "kos": out.kos,
        "sc": out.secondary_capture,
        "reformat": True,
    }
    return [kind for kind, on in flags.items() if on]


def sent_objects(settings: Settings, dest: Destination) -> list[str]:
    """Return what a destination receives: the objects built that it takes.

    Parameters
    ----------
    settings : Settings
        The node's settings.
    dest : Destination
        The destination.

    Returns
    -------
    list of str
        Object kinds, in the order of `built_objects`.
    """
    return [kind for kind in built_objects(settings) if kind in dest.objects]


def advice(objects: Iterable[str]) -> list[dict[str, str]]:
    """Return, per viewer family, what its readers see of ``objects`` and what to add.

    Parameters
    ----------
    objects : iterable of str
        The object kinds a destination receives.

    Returns
    -------
    list of dict
        ``family``, ``sees`` (the objects it shows, or "nothing"), ``add`` (the recommended
        kinds missing, or ""), ``evidence``.
    """
    have = set(objects)
    out = []
    for family in VIEWER_FAMILIES:
        seen = [OBJECT_NAMES[k] for k in OBJECT_NAMES if k in have and k in family.shows]
        missing = [OBJECT_NAMES[k] for k in family.recommended if k not in have]
        out.append(
            {
                "family": family.name,
                "sees": ", ".join(seen) if seen else "nothing",
                "add": ", ".join(missing),
                "evidence": family.evidence,
            }
        )
    return out


def destinations_view(settings: Settings) -> list[dict[str, object]]:
    """Return each destination with what it receives and the advice per viewer family.

    Parameters
    ----------
    settings : Settings
        The node's settings.

    Returns
    -------
    list of dict
        ``name``, ``kind``, ``objects`` (display names), ``advice`` (see `advice`).
    """
    out: list[dict[str, object]] = []
    for dest in settings.destinations:
        sent = sent_objects(settings, dest)
        out.append(
            {
                "name": dest.name,
                "kind": dest.kind,
                "objects": [OBJECT_NAMES[k] for k in sent],
                "advice": advice(sent),
            }
        )
    return out

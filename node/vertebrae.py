"""The node's settings for the vertebral fracture analysis, as the pipeline takes them."""

from __future__ import annotations

from spinexr.node.settings import Settings
from spinexr.pipeline.vertebrae.genant import GenantCutoffs


def genant_cutoffs(settings: Settings) -> GenantCutoffs:
    """Return the Genant grade bounds of the site (``[vertebrae]`` mild / moderate / severe).

    Parameters
    ----------
    settings : Settings
        Validated settings.

    Returns
    -------
    GenantCutoffs
        The bounds.
    """
    v = settings.vertebrae
    return GenantCutoffs(mild=v.mild, moderate=v.moderate, severe=v.severe)

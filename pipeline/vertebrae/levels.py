"""Naming vertebrae (T1…L5) only where the image fixes the count.

A lateral radiograph rarely shows C2 or T1, so the only anchor that fixes the count on a
lumbar or thoraco-lumbar view is the sacrum. The rule (``method.md`` §8, stated in
``training/README.md``):

1. Fewer than two vertebrae: no level names (`LevelRule.FROM_TOP`).
2. The best first-sacral-segment (S1) detection scoring at least ``sacrum_threshold`` is
   accepted as the anchor only when it lies directly below the lowest vertebra: its top
   within one median vertebral height of that vertebra's bottom, its centre below the
   vertebra's centre, and horizontally within one vertebral depth of it.
3. With the anchor, the lowest vertebra is L5 and the ones above are counted upward (L4 …
   L1, T12 … T1, C7 … C1), five lumbar vertebrae assumed (a lumbosacral transitional
   vertebra shifts every name by one: a limitation the SR states through the rule used).
   Counting stops at the first gap larger than 1.6 median pitches (a missed vertebra):
   vertebrae above it stay unnamed.
4. Without the anchor, vertebrae are numbered from the top and no level is claimed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spinexr.pipeline.vertebrae.findings import LevelRule
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind, sort_top_to_bottom

LEVELS_TOP_DOWN: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
)
"""Presacral levels, top to bottom (five lumbar vertebrae assumed)."""

MAX_GAP_PITCHES = 1.6
"""A centre-to-centre distance above this many median pitches means a missed vertebra."""


def _top(obj: DetectedObject) -> float:
    return float(obj.keypoints[0::2, 1].mean())


def _bottom(obj: DetectedObject) -> float:
    return float(obj.keypoints[1::2, 1].mean())


def _height(obj: DetectedObject) -> float:
    return _bottom(obj) - _top(obj)


def _depth(obj: DetectedObject) -> float:
    xmin, _, xmax, _ = obj.box
    return xmax - xmin


def sacrum_anchor(
    vertebrae: Sequence[DetectedObject], sacra: Sequence[DetectedObject], threshold: float
) -> DetectedObject | None:
    """Return the S1 detection that fixes the count, or None.

    Parameters
    ----------
    vertebrae : sequence of DetectedObject
        Vertebral bodies, top to bottom (at least two).
    sacra : sequence of DetectedObject
        Sacrum detections, any order.
    threshold : float
        Lowest accepted sacrum score.

    Returns
    -------
    DetectedObject or None
        The accepted anchor.
    """
    candidates = [s for s in sacra if s.score >= threshold]
    if len(vertebrae) < 2 or not candidates:
        return None
    best = max(candidates, key=lambda s: s.score)
    lowest = vertebrae[-1]
    height = float(np.median([_height(v) for v in vertebrae]))
    below = best.centre[1] > lowest.centre[1]
    close = abs(_top(best) - _bottom(lowest)) <= height
    aligned = abs(best.centre[0] - lowest.centre[0]) <= _depth(lowest)
    return best if below and close and aligned else None


def assign_levels(
    objects: Sequence[DetectedObject], *, sacrum_threshold: float = 0.5
) -> tuple[LevelRule, list[tuple[DetectedObject, str | None]]]:
    """Order the vertebrae top to bottom and name them where the sacrum fixes the count.

    Parameters
    ----------
    objects : sequence of DetectedObject
        Detections of one image (vertebrae and sacrum; already thresholded).
    sacrum_threshold : float
        Lowest score of an S1 detection accepted as the anchor.

    Returns
    -------
    tuple
        The rule used and ``(vertebra, level or None)`` pairs, top to bottom.
    """
    vertebrae = sort_top_to_bottom([o for o in objects if o.kind is ObjectKind.VERTEBRA])
    sacra = [o for o in objects if o.kind is ObjectKind.SACRUM]
    anchor = sacrum_anchor(vertebrae, sacra, sacrum_threshold)
    if anchor is None:
        return LevelRule.FROM_TOP, [(v, None) for v in vertebrae]
    centres = [v.centre[1] for v in vertebrae]
    pitch = float(np.median(np.diff(centres)))
    names: list[str | None] = [None] * len(vertebrae)
    level = len(LEVELS_TOP_DOWN) - 1
    for k in range(len(vertebrae) - 1, -1, -1):
        if level < 0:
            break
        if k < len(vertebrae) - 1 and centres[k + 1] - centres[k] > MAX_GAP_PITCHES * pitch:
            break
        names[k] = LEVELS_TOP_DOWN[level]
        level -= 1
    return LevelRule.SACRUM, list(zip(vertebrae, names, strict=True))

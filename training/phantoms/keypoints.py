"""The six ground-truth keypoints of a phantom vertebral body, and of S1, on a lateral view.

The patient faces left: the anterior side of a body is its left side (``x0``). The points
follow `spinexr.pipeline.vertebrae.genant.KEYPOINT_NAMES`: (anterior top, anterior bottom,
middle top, middle bottom, posterior top, posterior bottom), ``(x, y)`` in pixels.

Where the points go, so that they lie on what is drawn:

- **Anterior and posterior heights**: on the superior and inferior end plates
  (`VertebralBody.top_at` / `bottom_at`) at the column where the rounded corner ends
  (``x0 + radius`` and ``x1 - radius``), the outermost column at which the drawn outline
  *is* the end plate (nearer the side the rounding pulls the outline inwards).
- **Middle height**: on both end plates at the body's mid column.
- **S1**: the anterior and posterior corners of the sacral plateau as `sacrum_shapes` draws
  it (the first two vertices of its polygon), bottoms one vertebral height (of the lowest
  vertebra) further along the sacrum's anterior and posterior sides, middle points half way.

Genant's index of a phantom body is the index of these keypoints (`keypoint_genant_index`),
which is what a detector trained on them measures. The older `lesions.genant_index` takes
the heights at the sides themselves (``x0``, ``x1``): the two agree on normal bodies and
drift apart as a fracture tilts or curves the end plates (the corner columns sit a radius
inside the sides), so fractures are made to their requested index in keypoint terms
(`spinexr.training.phantoms.fractures`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.vertebrae import genant
from spinexr.training.phantoms.anatomy import Spine, sacrum_shapes
from spinexr.training.phantoms.shapes import ConvexPolygon, VertebralBody

Keypoints = npt.NDArray[np.float64]
"""``(6, 2)`` float array of ``(x, y)``."""

MAX_INSET_FRACTION = 0.2
"""The corner columns sit at most this share of the body's depth inside its sides."""


def corner_inset(body: VertebralBody) -> float:
    """Distance in pixels from a side of the body to the column of its corner keypoints.

    Parameters
    ----------
    body : VertebralBody
        The body.

    Returns
    -------
    float
        The corner radius, at most `MAX_INSET_FRACTION` of the body's depth.
    """
    return min(max(body.radius, 0.0), MAX_INSET_FRACTION * (body.x1 - body.x0))


def body_keypoints(body: VertebralBody) -> Keypoints:
    """Six keypoints of a vertebral body on a lateral view (anterior = ``x0`` side).

    Parameters
    ----------
    body : VertebralBody
        The body, in image pixels.

    Returns
    -------
    numpy.ndarray
        ``(6, 2)`` float array in `genant.KEYPOINT_NAMES` order.
    """
    inset = corner_inset(body)
    columns = (body.x0 + inset, 0.5 * (body.x0 + body.x1), body.x1 - inset)
    points: list[tuple[float, float]] = []
    for x in columns:
        points.append((x, body.top_at(x)))
        points.append((x, body.bottom_at(x)))
    return genant.as_keypoints(points)


def keypoint_heights(body: VertebralBody) -> tuple[float, float, float]:
    """Anterior, middle and posterior heights in pixels between the body's keypoints.

    Parameters
    ----------
    body : VertebralBody
        The body.

    Returns
    -------
    tuple of float
        ``(h_a, h_m, h_p)``.
    """
    return genant.heights(body_keypoints(body))


def keypoint_genant_index(body: VertebralBody) -> float:
    """Genant's index of the body as its keypoints measure it (the ground truth).

    Parameters
    ----------
    body : VertebralBody
        The body.

    Returns
    -------
    float
        ``min(h) / max(h)`` of `keypoint_heights`.
    """
    return genant.genant_index(keypoint_heights(body))


def sacrum_keypoints(spine: Spine) -> Keypoints | None:
    """Six keypoints of the first sacral segment (S1) as `sacrum_shapes` draws it.

    Parameters
    ----------
    spine : Spine
        A lateral geometry.

    Returns
    -------
    numpy.ndarray or None
        ``(6, 2)`` float array (anterior top / bottom, middle top / bottom, posterior top /
        bottom); None on an AP view or when the spine has no sacrum.
    """
    if spine.view != "LAT" or not spine.sacrum:
        return None
    shapes = sacrum_shapes(spine)
    polygon = shapes[0][0] if shapes else None
    if not isinstance(polygon, ConvexPolygon) or len(polygon.points) != 4:
        return None
    # Vertices: anterior-top, posterior-top, posterior-bottom, anterior-bottom.
    (ax, ay), (px, py), (qx, qy), (dx, dy) = polygon.points
    height = spine.vertebrae[-1].height
    a_bottom = _along((ax, ay), (dx, dy), height)
    p_bottom = _along((px, py), (qx, qy), height)
    return genant.as_keypoints(
        [
            (ax, ay),
            a_bottom,
            (0.5 * (ax + px), 0.5 * (ay + py)),
            (0.5 * (a_bottom[0] + p_bottom[0]), 0.5 * (a_bottom[1] + p_bottom[1])),
            (px, py),
            p_bottom,
        ]
    )


def _along(
    start: tuple[float, float], end: tuple[float, float], distance: float
) -> tuple[float, float]:
    """Return the point ``distance`` pixels from ``start`` towards ``end`` (at most ``end``)."""
    vx, vy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(vx, vy)
    t = 1.0 if length <= distance else distance / length
    return start[0] + t * vx, start[1] + t * vy

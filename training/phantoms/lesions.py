"""Draw the seven lesion classes into a `Spine` and return their boxes.

Geometric lesions (spondylolisthesis, disc space narrowing, vertebral collapse) edit the
vertebrae first; the other classes then add bone, lytic regions or metal on the final
geometry. Every lesion is a visible structure inside its box, so a detector can learn it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from spinexr.pipeline.classes import LesionClass
from spinexr.training.phantoms.anatomy import Spine, foramen_region, pedicles
from spinexr.training.phantoms.shapes import (
    BBox,
    Capsule,
    ConvexPolygon,
    Ellipse,
    Shape,
    VertebralBody,
    union_bbox,
)

logger = logging.getLogger(__name__)

_Key = TypeVar("_Key", bound=tuple[object, ...])

_GEOMETRIC = (
    LesionClass.SPONDYLOLISTHESIS,
    LesionClass.DISC_SPACE_NARROWING,
    LesionClass.VERTEBRAL_COLLAPSE,
)


@dataclass(frozen=True)
class Box:
    """One lesion box in original DICOM pixel coordinates (float, ``xmax > xmin``).

    Parameters
    ----------
    class_id : LesionClass
        Lesion class.
    xmin, ymin, xmax, ymax : float
        Corners; ``x`` is the column, ``y`` the row.
    """

    class_id: LesionClass
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.ymax - self.ymin

    def as_tuple(self) -> tuple[float, float, float, float]:
        """Return ``(xmin, ymin, xmax, ymax)``."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)


def genant_index(body: VertebralBody) -> float:
    """Genant index ``min(h_a, h_m, h_p) / max(h_a, h_m, h_p)`` of a vertebral body.

    Parameters
    ----------
    body : VertebralBody
        The body (on a lateral view left = anterior).

    Returns
    -------
    float
        The ratio in ``(0, 1]``.
    """
    heights = body.heights()
    return min(heights) / max(heights)


def apply_lesions(
    spine: Spine, lesions: Sequence[LesionClass], rng: np.random.Generator
) -> list[Box]:
    """Add ``lesions`` to ``spine`` (in place) and return one box per lesion.

    Parameters
    ----------
    spine : Spine
        Normal geometry from `build_spine`; edited in place.
    lesions : sequence of LesionClass
        Lesions to draw; repeats are allowed (each gets its own level).
    rng : numpy.random.Generator
        Source of lesion placement and shape.

    Returns
    -------
    list of Box
        In the order of ``lesions``. A lesion that finds no room is left out (logged).
    """
    placer = _Placer(spine, rng)
    order = sorted(range(len(lesions)), key=lambda i: (lesions[i] not in _GEOMETRIC, i))
    pending: dict[int, BBox | None] = {}
    geometric_levels: dict[int, tuple[LesionClass, int]] = {}
    for i in order:
        cls = LesionClass(lesions[i])
        if cls in _GEOMETRIC:
            level = placer.geometric(cls)
            if level is not None:
                geometric_levels[i] = (cls, level)
            else:
                pending[i] = None
    # Boxes of geometric lesions come from the final geometry (later edits move vertebrae).
    for i, (cls, level) in geometric_levels.items():
        pending[i] = placer.geometric_box(cls, level)
    for i in order:
        cls = LesionClass(lesions[i])
        if cls not in _GEOMETRIC:
            pending[i] = placer.overlay(cls)
    boxes: list[Box] = []
    for i in range(len(lesions)):
        bb = pending.get(i)
        box = _clip(LesionClass(lesions[i]), bb, spine) if bb is not None else None
        if box is None:
            logger.debug("no room for %s on this phantom", LesionClass(lesions[i]).name)
            continue
        boxes.append(box)
    return boxes


def _clip(cls: LesionClass, bb: BBox, spine: Spine) -> Box | None:
    xmin = float(np.clip(bb[0], 0.0, spine.cols - 1.0))
    ymin = float(np.clip(bb[1], 0.0, spine.rows - 1.0))
    xmax = float(np.clip(bb[2], 0.0, spine.cols - 1.0))
    ymax = float(np.clip(bb[3], 0.0, spine.rows - 1.0))
    if xmax - xmin < 2.0 or ymax - ymin < 2.0:
        return None
    return Box(cls, round(xmin, 2), round(ymin, 2), round(xmax, 2), round(ymax, 2))


def _pad(bb: BBox, pad: float) -> BBox:
    return (bb[0] - pad, bb[1] - pad, bb[2] + pad, bb[3] + pad)


class _Placer:
    """Chooses levels for lesions and draws them."""

    def __init__(self, spine: Spine, rng: np.random.Generator) -> None:
        self.spine = spine
        self.rng = rng
        self.claimed: set[int] = set()
        self.used: set[tuple[object, ...]] = set()
        self.pad = 0.06 * spine.scale + spine.edge

    # -- choosing ---------------------------------------------------------------------------

    def _pick(self, candidates: list[int], claims: int, prefer_low: bool = False) -> int | None:
        """Pick a start index whose ``claims`` vertebrae are free, else any candidate."""
        if not candidates:
            return None
        free = [k for k in candidates if not any(k + j in self.claimed for j in range(claims))]
        pool = free or candidates
        weights = np.array([1.0 + (2.0 * k if prefer_low else 0.0) for k in pool])
        k = int(self.rng.choice(pool, p=weights / weights.sum()))
        self.claimed.update(k + j for j in range(claims))
        return k

    def _pick_unused(self, keys: list[_Key], weights: list[float]) -> _Key:
        """Pick a key not used yet (weighted), else any key; mark it used."""
        free = [(k, w) for k, w in zip(keys, weights, strict=True) if k not in self.used]
        pool = free or list(zip(keys, weights, strict=True))
        p = np.array([w for _, w in pool], dtype=float)
        key = pool[int(self.rng.choice(len(pool), p=p / p.sum()))][0]
        self.used.add(key)
        return key

    # -- geometric lesions ------------------------------------------------------------------

    def geometric(self, cls: LesionClass) -> int | None:
        """Edit the vertebrae for a geometric lesion; return its level (or None)."""
        spine, rng = self.spine, self.rng
        verts = spine.vertebrae
        if cls is LesionClass.SPONDYLOLISTHESIS:
            k = self._pick(spine.visible_pairs(), 2, prefer_low=True)
            if k is None:
                return None
            slip = rng.uniform(0.16, 0.32) * verts[k].width
            # Lateral: mostly anterolisthesis (towards the left); AP: lateral listhesis.
            forward = 0.8 if spine.view == "LAT" else 0.5
            direction = -1.0 if rng.random() < forward else 1.0
            for j in range(k + 1):
                verts[j].shifted(dx=direction * slip)
            return k
        if cls is LesionClass.DISC_SPACE_NARROWING:
            k = self._pick(spine.visible_pairs(), 2, prefer_low=True)
            if k is None:
                return None
            up, low = verts[k].body, verts[k + 1].body
            gap = min(low.top_l - up.bot_l, low.top_r - up.bot_r)
            keep = rng.uniform(0.12, 0.35)
            drop = max(gap, 0.0) * (1.0 - keep)
            for j in range(k + 1):
                verts[j].shifted(dy=drop)
            # Sclerotic end plates on both sides of the collapsed disc.
            up, low = verts[k].body, verts[k + 1].body
            t = 0.1 * verts[k].height
            self.spine.extra_bone.append(
                (replace(up, top_l=up.bot_l - t, top_r=up.bot_r - t, concavity=0.0), 0.3)
            )
            self.spine.extra_bone.append(
                (replace(low, bot_l=low.top_l + t, bot_r=low.top_r + t, concavity=0.0), 0.3)
            )
            return k
        # Vertebral collapse.
        k = self._pick(spine.visible_indices(), 1)
        if k is None:
            return None
        v = verts[k]
        b = v.body
        genant = rng.uniform(0.42, 0.74)
        if spine.view == "LAT" and rng.random() < 0.7:
            # Anterior wedge: anterior height = G * posterior height.
            new_top_l = b.bot_l - genant * (b.bot_r - b.top_r)
            loss = new_top_l - b.top_l
            v.body = replace(b, top_l=new_top_l)
            shift = 0.25 * loss
        elif spine.view == "LAT":
            # Biconcave: middle height = G * the larger of the side heights.
            h = max(b.bot_l - b.top_l, b.bot_r - b.top_r)
            v.body = replace(b, concavity=0.5 * (1.0 - genant) * h)
            shift = 0.0
        else:
            # AP: crushed body, one side a little more.
            h_l, h_r = b.bot_l - b.top_l, b.bot_r - b.top_r
            tilt = rng.uniform(-0.08, 0.08)
            new_top_l = b.bot_l - (genant + 0.1 + tilt) * h_l
            new_top_r = b.bot_r - (genant + 0.1 - tilt) * h_r
            loss = 0.5 * ((new_top_l - b.top_l) + (new_top_r - b.top_r))
            v.body = replace(b, top_l=new_top_l, top_r=new_top_r)
            shift = 0.6 * loss
        v.density = 1.25
        for j in range(k):
            verts[j].shifted(dy=shift)
        return k

    def geometric_box(self, cls: LesionClass, k: int) -> BBox:
        """Box of a geometric lesion at level ``k`` on the final geometry."""
        verts = self.spine.vertebrae
        if cls is LesionClass.SPONDYLOLISTHESIS:
            return _pad(union_bbox([verts[k].body.bbox(), verts[k + 1].body.bbox()]), self.pad)
        if cls is LesionClass.DISC_SPACE_NARROWING:
            up, low = verts[k].body, verts[k + 1].body
            margin = 0.2 * verts[k].height
            return (
                min(up.x0, low.x0) - self.pad,
                min(up.bot_l, up.bot_r) - margin,
                max(up.x1, low.x1) + self.pad,
                max(low.top_l, low.top_r) + margin,
            )
        return _pad(verts[k].body.bbox(), self.pad)

    # -- overlay lesions --------------------------------------------------------------------

    def overlay(self, cls: LesionClass) -> BBox | None:
        """Add the shapes of a non-geometric lesion; return its box (or None)."""
        if cls is LesionClass.OSTEOPHYTES:
            return self._osteophyte()
        if cls is LesionClass.SURGICAL_IMPLANT:
            return self._implant()
        if cls is LesionClass.FORAMINAL_STENOSIS:
            return self._stenosis()
        return self._other()

    def _osteophyte(self) -> BBox | None:
        spine, rng = self.spine, self.rng
        vis = spine.visible_indices()
        if not vis:
            return None
        keys: list[tuple[str, int, int, int]] = []
        weights: list[float] = []
        for k in vis:
            for side in (-1, 1):
                for end in (-1, 1):
                    keys.append(("osteo", k, side, end))
                    w = 4.0 if (spine.view == "AP" or side < 0) else 1.0
                    weights.append(w * (1.0 + 0.3 * k) * (0.3 if k in self.claimed else 1.0))
        _, k, side, end = self._pick_unused(keys, weights)
        length = rng.uniform(0.2, 0.4) * spine.vertebrae[k].height
        spurs = [self._spur(k, side, end, length)]
        neighbour = k + end
        if 0 <= neighbour < len(spine.vertebrae) and rng.random() < 0.3:
            # Bridging spur from the facing corner across the disc.
            spurs.append(self._spur(neighbour, side, -end, 0.8 * length))
            self.used.add(("osteo", neighbour, side, -end))
        for spur in spurs:
            spine.extra_bone.append((spur, 0.8))
        return _pad(union_bbox([s.bbox() for s in spurs]), self.pad)

    def _spur(self, k: int, side: int, end: int, length: float) -> ConvexPolygon:
        """Build a bony beak at a body corner (``end`` -1: superior plate, +1: inferior)."""
        v = self.spine.vertebrae[k]
        b, w, h = v.body, v.width, v.height
        xs = b.x0 if side < 0 else b.x1
        corners = {(-1, -1): b.top_l, (1, -1): b.top_r, (-1, 1): b.bot_l, (1, 1): b.bot_r}
        ye = corners[(side, end)]
        inward = -side
        return ConvexPolygon(
            (
                (xs + inward * 0.03 * w, ye - end * 0.32 * h),
                (xs + inward * 0.12 * w, ye - end * 0.02 * h),
                (xs + side * length, ye + end * 0.45 * length),
            )
        )

    def _implant(self) -> BBox | None:
        spine, rng = self.spine, self.rng
        pairs = spine.visible_pairs()
        span = 3 if rng.random() < 0.3 else 2
        starts = [k for k in pairs if all(k + j in spine.visible_indices() for j in range(span))]
        if not starts:
            span, starts = 2, pairs
        k = self._pick(starts, span, prefer_low=True)
        if k is None:
            return None
        shapes: list[Shape] = []
        heads: dict[int, list[tuple[float, float]]] = {-1: [], 1: []}
        scale = spine.scale
        radius = max(0.9 * spine.edge, 0.05 * scale)
        pitch = max(3.0, 0.1 * scale)
        for j in range(k, k + span):
            v = spine.vertebrae[j]
            b, w, h = v.body, v.width, v.height
            if spine.view == "LAT":
                entry = (b.x1 + 0.42 * w, b.top_r + 0.27 * h)
                tip = (b.x0 + 0.2 * w, 0.5 * (b.top_l + b.top_r) + 0.45 * h)
                shapes.append(Capsule(*entry, *tip, radius, pitch, 0.3 * radius))
                heads[1].append(entry)
            else:
                for side, ped in zip((-1, 1), pedicles(spine, j), strict=True):
                    entry = (ped.cx + side * 0.08 * w, ped.cy)
                    tip = (v.cx + side * 0.06 * w, ped.cy + 0.1 * h)
                    shapes.append(Capsule(*entry, *tip, radius, pitch, 0.3 * radius))
                    heads[side].append(entry)
        for points in heads.values():
            if not points:
                continue
            for x, y in points:
                shapes.append(Ellipse(cx=x, cy=y, a=0.09 * scale, b=0.11 * scale))
            (xa, ya), (xb, yb) = points[0], points[-1]
            ext = 0.3 * scale
            shapes.append(Capsule(xa, ya - ext, xb, yb + ext, 0.055 * scale))
        spine.metal.extend(shapes)
        return _pad(union_bbox([s.bbox() for s in shapes]), self.pad)

    def _stenosis(self) -> BBox | None:
        spine, rng = self.spine, self.rng
        pairs = spine.visible_pairs()
        if not pairs:
            return None
        sides = (1,) if spine.view == "LAT" else (-1, 1)
        keys = [("foramen", k, s) for k in pairs for s in sides]
        weights = [1.0 + 0.5 * k for k in pairs for _ in sides]
        _, k, side = self._pick_unused(keys, weights)
        x0, y0, x1, y1 = foramen_region(spine, k, side)
        fw, fh = x1 - x0, y1 - y0
        if spine.view == "LAT":
            # Disc/osteophyte bulge from the front and facet hypertrophy from behind leave a
            # slit where the dark foramen was.
            front = Ellipse(
                cx=x0 + 0.08 * fw,
                cy=y0 + 0.62 * fh,
                a=rng.uniform(0.32, 0.45) * fw,
                b=0.32 * fh,
            )
            back = Ellipse(
                cx=x1 - 0.02 * fw,
                cy=y0 + 0.45 * fh,
                a=rng.uniform(0.3, 0.42) * fw,
                b=0.45 * fh,
                lobes=3,
                lobe_depth=0.08,
                phase=rng.uniform(0, 2 * math.pi),
            )
            spine.extra_bone.extend([(front, 0.5), (back, 0.5)])
        else:
            spine.extra_bone.append(
                (
                    Ellipse(
                        cx=0.5 * (x0 + x1),
                        cy=0.5 * (y0 + y1),
                        a=0.42 * fw,
                        b=0.42 * fh,
                        lobes=4,
                        lobe_depth=0.1,
                        phase=rng.uniform(0, 2 * math.pi),
                    ),
                    0.5,
                )
            )
        return _pad((x0, y0, x1, y1), 0.5 * self.pad)

    def _other(self) -> BBox | None:
        spine, rng = self.spine, self.rng
        vis = spine.visible_indices()
        if not vis:
            return None
        keys = [("other", k) for k in vis]
        _, k = self._pick_unused(keys, [0.2 if k in self.claimed else 1.0 for k in vis])
        v = spine.vertebrae[k]
        u = rng.uniform(0.3, 0.7)
        cx = v.body.x0 + u * v.width
        cy = v.body.top_at(cx) + rng.uniform(0.35, 0.65) * v.height
        blob = Ellipse(
            cx=cx,
            cy=cy,
            a=rng.uniform(0.14, 0.24) * v.width,
            b=rng.uniform(0.18, 0.3) * v.height,
            angle=rng.uniform(-0.5, 0.5),
            lobes=int(rng.integers(3, 6)),
            lobe_depth=0.12,
            phase=rng.uniform(0, 2 * math.pi),
        )
        if rng.random() < 0.5:
            spine.extra_bone.append((blob, 0.6))  # sclerotic
        else:
            spine.lytic.append((blob, 0.8))  # lytic
        return _pad(blob.bbox(), self.pad)

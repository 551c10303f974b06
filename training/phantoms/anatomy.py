"""Geometry of a synthetic spine on an AP or lateral radiograph.

`build_spine` lays out vertebral bodies, discs, posterior elements, sacrum, ribs and the
soft-tissue envelope as float pixel geometry. Lesions (`lesions.py`) edit this geometry or
add shapes to it, and `render.py` rasterises it. On a lateral view the patient faces left:
the anterior side of every vertebral body is its left side (``x0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from spinexr.training.phantoms.shapes import (
    BBox,
    Capsule,
    ConvexPolygon,
    Ellipse,
    Polyline,
    Shape,
    VertebralBody,
)

View = Literal["AP", "LAT"]
"""Projection: antero-posterior or lateral."""

Region = Literal["LSPINE", "TSPINE", "SPINE"]
"""Body part shown: lumbar, thoracic, or thoraco-lumbar spine (DICOM Body Part Examined)."""

VIEWS: tuple[View, ...] = ("AP", "LAT")
REGIONS: tuple[Region, ...] = ("LSPINE", "TSPINE", "SPINE")

_LEVELS: dict[Region, tuple[str, ...]] = {
    # One partly visible vertebra above (and for TSPINE below) the named ones is added.
    "LSPINE": ("T11", "T12", "L1", "L2", "L3", "L4", "L5"),
    "TSPINE": ("T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1"),
    "SPINE": ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"),
}


@dataclass
class Vertebra:
    """One vertebra: its body and a few rendering attributes.

    Parameters
    ----------
    name : str
        Level name such as ``"L3"``.
    body : VertebralBody
        Body outline in pixels.
    visible : bool
        Whether the whole body lies well inside the image (lesions go only there).
    density : float
        Multiplier of the cancellous bone density.
    """

    name: str
    body: VertebralBody
    visible: bool = True
    density: float = 1.0

    @property
    def thoracic(self) -> bool:
        """Whether this is a thoracic level (it carries ribs)."""
        return self.name.startswith("T")

    @property
    def height(self) -> float:
        """Mean body height in pixels."""
        return 0.5 * ((self.body.bot_l - self.body.top_l) + (self.body.bot_r - self.body.top_r))

    @property
    def width(self) -> float:
        """Body width (AP) or depth (lateral) in pixels."""
        return self.body.x1 - self.body.x0

    @property
    def cx(self) -> float:
        """Column of the body centre."""
        return 0.5 * (self.body.x0 + self.body.x1)

    def shifted(self, dx: float = 0.0, dy: float = 0.0) -> None:
        """Move the vertebra rigidly by ``(dx, dy)`` pixels."""
        b = self.body
        self.body = replace(
            b,
            x0=b.x0 + dx,
            x1=b.x1 + dx,
            top_l=b.top_l + dy,
            top_r=b.top_r + dy,
            bot_l=b.bot_l + dy,
            bot_r=b.bot_r + dy,
        )


@dataclass
class Spine:
    """Everything the renderer draws for one image.

    Parameters
    ----------
    view : {"AP", "LAT"}
        Projection.
    region : {"LSPINE", "TSPINE", "SPINE"}
        Body part.
    rows, cols : int
        Image size.
    vertebrae : list of Vertebra
        Top to bottom.
    sacrum : bool
        Whether the sacrum (and on AP the iliac wings) is in view.
    envelope_cx, envelope_half_width, tissue : float
        Soft-tissue envelope: centre column, half width and thickness (attenuation units).
    lungs : list of Ellipse
        Air-filled lungs that lower the soft-tissue attenuation.
    gas : list of Ellipse
        Bowel gas bubbles (smaller, milder air regions).
    extra_bone : list of (Shape, float)
        Lesion bone added on top of the anatomy, with its density.
    lytic : list of (Shape, float)
        Regions whose bone density is multiplied by ``1 - factor``.
    metal : list of Shape
        Metal (implants).
    """

    view: View
    region: Region
    rows: int
    cols: int
    vertebrae: list[Vertebra]
    sacrum: bool
    envelope_cx: float
    envelope_half_width: float
    tissue: float
    lungs: list[Ellipse] = field(default_factory=list)
    gas: list[Ellipse] = field(default_factory=list)
    extra_bone: list[tuple[Shape, float]] = field(default_factory=list)
    lytic: list[tuple[Shape, float]] = field(default_factory=list)
    metal: list[Shape] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Typical body height in pixels (sizes of small structures follow it)."""
        visible = [v.height for v in self.vertebrae if v.visible]
        return float(np.median(visible)) if visible else self.rows / 12.0

    @property
    def edge(self) -> float:
        """Width in pixels of the soft edge of drawn structures."""
        return max(1.0, self.rows / 1200.0)

    def visible_indices(self) -> list[int]:
        """Return the indices of vertebrae fully inside the image."""
        return [i for i, v in enumerate(self.vertebrae) if v.visible]

    def visible_pairs(self) -> list[int]:
        """Return the indices ``k`` such that vertebrae ``k`` and ``k + 1`` are visible."""
        vis = set(self.visible_indices())
        return [k for k in sorted(vis) if k + 1 in vis]


def build_spine(
    rng: np.random.Generator, view: View, region: Region, rows: int, cols: int
) -> Spine:
    """Lay out a normal spine.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of anatomical variation.
    view : {"AP", "LAT"}
        Projection.
    region : {"LSPINE", "TSPINE", "SPINE"}
        Body part.
    rows, cols : int
        Image size in pixels.

    Returns
    -------
    Spine
        The geometry, with no lesion.
    """
    names = _LEVELS[region]
    n = len(names)
    sacrum = region != "TSPINE"
    lumbar_like = region != "TSPINE"
    y_top = rows * rng.uniform(0.04, 0.09)
    y_bot = rows * (rng.uniform(0.80, 0.86) if sacrum else rng.uniform(0.93, 0.97))
    # Vertebrae 1..n-1 fill [y_top, y_bot]; vertebra 0 sits above, cut by the border (and
    # on TSPINE the last one is cut by the lower border).
    weights = np.array([1.0 + 0.035 * k for k in range(n)])
    span = y_bot - y_top
    pitch = span * weights / weights[1:].sum()
    starts = y_top + np.concatenate([[-pitch[0], 0.0], np.cumsum(pitch[1:])[:-1]])
    height_ratio = rng.uniform(0.72, 0.78) if lumbar_like else rng.uniform(0.78, 0.82)
    if view == "AP":
        aspect = rng.uniform(1.45, 1.62) if lumbar_like else rng.uniform(1.15, 1.3)
        base = cols * (0.5 + rng.uniform(-0.04, 0.04))
        amp = cols * rng.uniform(0.0, 0.02)
        freq = rng.uniform(0.6, 1.4)
        phase = rng.uniform(0, 2 * math.pi)
    else:
        aspect = rng.uniform(1.22, 1.36) if lumbar_like else rng.uniform(1.05, 1.18)
        base = cols * rng.uniform(0.36, 0.43)
        # Lumbar lordosis bows the column anteriorly (left); thoracic kyphosis posteriorly.
        amp = cols * rng.uniform(0.02, 0.045) * (-1.0 if lumbar_like else 1.0)
        freq = 1.0
        phase = 0.0

    def centre(y: float) -> tuple[float, float]:
        t = (y - y_top) / span
        cx = base + amp * math.sin(math.pi * freq * t + phase)
        dcx = amp * math.pi * freq * math.cos(math.pi * freq * t + phase) / span
        return cx, dcx

    vertebrae: list[Vertebra] = []
    for k in range(n):
        h = float(pitch[k] * height_ratio)
        w = h * aspect * rng.uniform(0.97, 1.03)
        yc = float(starts[k] + 0.5 * h)
        cx, dcx = centre(yc)
        slope = float(np.clip(-dcx + rng.normal(0.0, 0.012), -0.15, 0.15))
        jitter = rng.normal(0.0, 0.012 * h, size=4)
        x0, x1 = cx - w / 2, cx + w / 2
        body = VertebralBody(
            x0=x0,
            x1=x1,
            top_l=yc - h / 2 - slope * w / 2 + jitter[0],
            top_r=yc - h / 2 + slope * w / 2 + jitter[1],
            bot_l=yc + h / 2 - slope * w / 2 + jitter[2],
            bot_r=yc + h / 2 + slope * w / 2 + jitter[3],
            concavity=abs(rng.normal(0.0, 0.01 * h)),
            radius=0.1 * h,
        )
        margin = 0.02 * rows
        inside = body.bbox()[1] > margin and body.bbox()[3] < rows - margin
        vertebrae.append(Vertebra(name=names[k], body=body, visible=inside and k > 0))
    if not sacrum:
        vertebrae[-1].visible = False

    mean_w = float(np.mean([v.width for v in vertebrae]))
    if view == "AP":
        env_cx = cols * (0.5 + rng.uniform(-0.03, 0.03))
        env_hw = cols * rng.uniform(0.48, 0.7)
    else:
        spinous_tip = max(v.body.x1 for v in vertebrae) + 0.95 * mean_w
        env_hw = cols * rng.uniform(0.42, 0.55)
        env_cx = spinous_tip + cols * rng.uniform(0.1, 0.2) - env_hw
    lungs: list[Ellipse] = []
    if region != "LSPINE":
        top_frac = 0.45 if region == "TSPINE" else 0.0
        b = rows * (0.45 if region == "TSPINE" else 0.22)
        cy = rows * top_frac
        if view == "AP":
            for side in (-1.0, 1.0):
                lungs.append(
                    Ellipse(
                        cx=cols * 0.5 + side * (0.5 * mean_w + cols * 0.22),
                        cy=cy,
                        a=cols * 0.2,
                        b=b,
                    )
                )
        else:
            lungs.append(Ellipse(cx=vertebrae[0].body.x0 - cols * 0.22, cy=cy, a=cols * 0.25, b=b))
    gas: list[Ellipse] = []
    if region != "TSPINE":
        for _ in range(int(rng.integers(3, 10))):
            if view == "AP":
                gx = cols * rng.uniform(0.1, 0.9)
            else:
                gx = vertebrae[1].body.x0 - cols * rng.uniform(0.03, 0.35)
            size = cols * rng.uniform(0.02, 0.07)
            gas.append(
                Ellipse(
                    cx=gx,
                    cy=rows * rng.uniform(0.3, 0.95),
                    a=size,
                    b=size * rng.uniform(0.5, 1.2),
                    angle=rng.uniform(0, math.pi),
                    lobes=int(rng.integers(2, 5)),
                    lobe_depth=0.15,
                    phase=rng.uniform(0, 2 * math.pi),
                )
            )
    return Spine(
        view=view,
        region=region,
        rows=rows,
        cols=cols,
        vertebrae=vertebrae,
        sacrum=sacrum,
        envelope_cx=env_cx,
        envelope_half_width=env_hw,
        tissue=float(rng.uniform(1.1, 1.5) if region != "TSPINE" else rng.uniform(0.8, 1.1)),
        lungs=lungs,
        gas=gas,
    )


# --- derived structures -------------------------------------------------------------------


def pedicles(spine: Spine, k: int) -> list[Ellipse]:
    """Pedicle outlines of vertebra ``k`` (two rings on AP, one bar-like oval on lateral)."""
    v = spine.vertebrae[k]
    b, w, h = v.body, v.width, v.height
    if spine.view == "AP":
        y = 0.5 * (b.top_l + b.top_r) + 0.28 * h
        return [
            Ellipse(cx=b.x0 + 0.2 * w, cy=y, a=0.085 * w, b=0.15 * h),
            Ellipse(cx=b.x1 - 0.2 * w, cy=y, a=0.085 * w, b=0.15 * h),
        ]
    return [Ellipse(cx=b.x1 + 0.14 * w, cy=b.top_r + 0.27 * h, a=0.2 * w, b=0.2 * h)]


def posterior_elements(spine: Spine, k: int) -> list[tuple[Shape, float]]:
    """Solid posterior-element shapes of vertebra ``k`` with their densities."""
    v = spine.vertebrae[k]
    b, w, h = v.body, v.width, v.height
    out: list[tuple[Shape, float]] = []
    if spine.view == "AP":
        top = 0.5 * (b.top_l + b.top_r)
        # Spinous process: a tear-drop in the midline over the lower body and disc.
        out.append((Ellipse(cx=v.cx, cy=top + 0.95 * h, a=0.07 * w, b=0.25 * h), 0.35))
        # Laminae: a faint band joining the pedicles.
        out.append(
            (
                VertebralBody(
                    x0=b.x0 + 0.15 * w,
                    x1=b.x1 - 0.15 * w,
                    top_l=top + 0.45 * h,
                    top_r=top + 0.45 * h,
                    bot_l=top + 0.8 * h,
                    bot_r=top + 0.8 * h,
                    radius=0.1 * h,
                ),
                0.12,
            )
        )
        if not v.thoracic:
            for side in (-1.0, 1.0):
                root = b.x0 + 0.15 * w if side < 0 else b.x1 - 0.15 * w
                tip = root + side * 0.55 * w
                out.append((Capsule(root, top + 0.3 * h, tip, top + 0.34 * h, 0.08 * h), 0.35))
        return out
    # Lateral: pedicle bar, articular/laminar mass and spinous process behind the body.
    out.append(
        (
            VertebralBody(
                x0=b.x1 - 0.05 * w,
                x1=b.x1 + 0.3 * w,
                top_l=b.top_r + 0.08 * h,
                top_r=b.top_r + 0.1 * h,
                bot_l=b.top_r + 0.46 * h,
                bot_r=b.top_r + 0.44 * h,
                radius=0.08 * h,
            ),
            0.55,
        )
    )
    out.append(
        (
            VertebralBody(
                x0=b.x1 + 0.28 * w,
                x1=b.x1 + 0.58 * w,
                top_l=b.top_r - 0.12 * h,
                top_r=b.top_r - 0.05 * h,
                bot_l=b.bot_r + 0.12 * h,
                bot_r=b.bot_r + 0.05 * h,
                radius=0.1 * h,
            ),
            0.5,
        )
    )
    out.append(
        (
            ConvexPolygon(
                (
                    (b.x1 + 0.5 * w, b.top_r + 0.15 * h),
                    (b.x1 + 0.92 * w, b.top_r + 0.35 * h),
                    (b.x1 + 0.95 * w, b.top_r + 0.65 * h),
                    (b.x1 + 0.5 * w, b.bot_r - 0.05 * h),
                )
            ),
            0.4,
        )
    )
    return out


def foramen_region(spine: Spine, k: int, side: int = 1) -> BBox:
    """Box around the intervertebral foramen below vertebra ``k``.

    On a lateral view this is the dark notch behind the disc between the pedicles of ``k``
    and ``k + 1``; on AP it is the gap between the pedicles of one side (``side`` -1: left,
    +1: right).

    Parameters
    ----------
    spine : Spine
        Geometry.
    k : int
        Upper vertebra; ``k + 1`` must exist.
    side : int
        Image side on AP views.

    Returns
    -------
    tuple of float
        ``(xmin, ymin, xmax, ymax)``.
    """
    up, low = spine.vertebrae[k], spine.vertebrae[k + 1]
    if spine.view == "LAT":
        x0 = up.body.x1 - 0.02 * up.width
        x1 = up.body.x1 + 0.3 * up.width
        y0 = up.body.top_r + 0.46 * up.height
        y1 = low.body.top_r + 0.1 * low.height
        return (x0, y0, x1, y1)
    ped_up = pedicles(spine, k)[0 if side < 0 else 1]
    ped_low = pedicles(spine, k + 1)[0 if side < 0 else 1]
    cx = 0.5 * (ped_up.cx + ped_low.cx)
    half = 0.14 * up.width
    return (cx - half, ped_up.cy + ped_up.b, cx + half, ped_low.cy - ped_low.b)


def ribs(spine: Spine, k: int) -> list[Polyline]:
    """Rib segments of a thoracic vertebra on an AP view (empty otherwise)."""
    v = spine.vertebrae[k]
    if spine.view != "AP" or not v.thoracic or v.name == "T12":
        return []
    b, w, h = v.body, v.width, v.height
    top = 0.5 * (b.top_l + b.top_r)
    out: list[Polyline] = []
    for side in (-1.0, 1.0):
        root = b.x0 + 0.1 * w if side < 0 else b.x1 - 0.1 * w
        # A posterior rib: out and slightly up from the transverse process, then down.
        t = np.linspace(0.0, 1.0, 9)
        xs = root + side * w * (3.2 * np.sin(0.5 * np.pi * t))
        ys = top + 0.3 * h + h * (3.4 * t**2 - 0.6 * t)
        points = tuple((float(px), float(py)) for px, py in zip(xs, ys, strict=True))
        out.append(Polyline(points, 0.12 * h))
    return out


def sacrum_shapes(spine: Spine) -> list[tuple[Shape, float, float]]:
    """Sacrum (and on AP the iliac wings) below the last vertebra.

    Returns
    -------
    list of (Shape, float, float)
        Shape, fill density and cortical-rim density.
    """
    if not spine.sacrum:
        return []
    last = spine.vertebrae[-1]
    b, w, h = last.body, last.width, last.height
    gap = 0.35 * h
    out: list[tuple[Shape, float, float]] = []
    if spine.view == "AP":
        y0 = max(b.bot_l, b.bot_r) + gap
        out.append(
            (
                ConvexPolygon(
                    (
                        (last.cx - 0.8 * w, y0),
                        (last.cx + 0.8 * w, y0),
                        (last.cx + 0.3 * w, y0 + 2.4 * h),
                        (last.cx - 0.3 * w, y0 + 2.4 * h),
                    )
                ),
                0.25,
                0.2,
            )
        )
        for side in (-1.0, 1.0):
            # Iliac wing: a tilted oval whose crest reaches the L4-L5 level.
            out.append(
                (
                    Ellipse(
                        cx=last.cx + side * 1.45 * w,
                        cy=y0 + 0.8 * h,
                        a=0.5 * w,
                        b=1.7 * h,
                        angle=side * 0.6,
                    ),
                    0.12,
                    0.3,
                )
            )
        return out
    y0 = b.bot_l + gap
    out.append(
        (
            ConvexPolygon(
                (
                    (b.x0 + 0.05 * w, y0),
                    (b.x1 + 0.1 * w, b.bot_r + gap + 0.35 * h),
                    (b.x1 + 0.6 * w, y0 + 2.2 * h),
                    (b.x0 + 0.55 * w, y0 + 2.0 * h),
                )
            ),
            0.3,
            0.25,
        )
    )
    out.append((Ellipse(cx=b.x1 + 0.2 * w, cy=y0 + 0.9 * h, a=1.3 * w, b=1.1 * h), 0.12, 0.12))
    return out

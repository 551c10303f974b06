"""Rasterise a `Spine` into a 12-bit radiograph (bone bright, as displayed).

The model is a projection: soft tissue, bone and metal add up to an attenuation map ``A``;
the detector sees ``N0 * exp(-A)`` quanta per pixel (with a heel-effect gradient), Poisson-like
noise is added, and the log signal is scaled to 12 bits. All drawing is numpy-vectorised on
windows around each structure.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinexr.training.phantoms.anatomy import (
    Spine,
    pedicles,
    posterior_elements,
    ribs,
    sacrum_shapes,
)
from spinexr.training.phantoms.shapes import (
    FloatArray,
    Shape,
    VertebralBody,
    grid,
    soft,
    window,
)

MAX_STORED = 4095
"""Largest 12-bit value."""

_METAL = 6.0
_N0 = 40000.0


def render_spine(spine: Spine, rng: np.random.Generator) -> npt.NDArray[np.uint16]:
    """Render the geometry to a 12-bit image in display orientation (bone bright).

    Parameters
    ----------
    spine : Spine
        Geometry, lesions included.
    rng : numpy.random.Generator
        Source of texture, exposure and noise (draws do not depend on the lesions, so the
        same generator state gives the same noise with and without lesions).

    Returns
    -------
    numpy.ndarray
        ``uint16`` array of shape ``(rows, cols)`` with values in ``0..4095``.
    """
    rows, cols = spine.rows, spine.cols
    texture = _texture(rng, rows, cols)
    bone_gain = rng.uniform(0.9, 1.15)
    heel = rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1)
    offset = rng.uniform(80.0, 260.0)
    full_scale = rng.uniform(4.4, 5.0)
    noise = rng.standard_normal((rows, cols), dtype=np.float32)

    bone = np.zeros((rows, cols), dtype=np.float32)
    metal = np.zeros((rows, cols), dtype=np.float32)
    edge = spine.edge
    for k, v in enumerate(spine.vertebrae):
        _draw_body(bone, texture, v.body, v.density, edge)
        for ped in pedicles(spine, k):
            if spine.view == "AP":
                _draw_ring(bone, ped, 0.3, 0.25 * min(ped.a, ped.b), edge)
            else:
                _draw_solid(bone, ped, 0.1, edge)
        for shape, density in posterior_elements(spine, k):
            _draw_solid(bone, shape, density, edge, texture)
        for rib in ribs(spine, k):
            _draw_solid(bone, rib, 0.1, edge)
            _draw_ring(bone, rib, 0.12, 0.35 * rib.radius, edge)
    rim = max(1.5 * edge, 0.06 * spine.scale)
    for shape, density, rim_density in sacrum_shapes(spine):
        _draw_solid(bone, shape, density, edge, texture)
        _draw_ring(bone, shape, rim_density, rim, edge)
    for shape, density in spine.extra_bone:
        _draw_solid(bone, shape, density, edge, texture)
    for shape, factor in spine.lytic:
        _scale(bone, shape, 1.0 - factor, edge)
    for shape in spine.metal:
        _draw_solid(metal, shape, 1.0, edge)

    y = np.linspace(-0.5, 0.5, rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    profile = np.sqrt(
        np.clip(1.0 - ((x - spine.envelope_cx) / spine.envelope_half_width) ** 2, 0.0, 1.0)
    )
    tissue = np.float32(spine.tissue) * profile * (1.0 + 0.06 * np.sin(3.0 * y + 0.5))
    tissue = np.broadcast_to(tissue, (rows, cols)).astype(np.float32)
    lung_edge = 0.03 * rows
    for lung in spine.lungs:
        _scale(tissue, lung, 0.45, lung_edge)
    for bubble in spine.gas:
        _scale(tissue, bubble, 0.88, 0.3 * bubble.b + edge)

    atten = tissue
    atten += np.float32(bone_gain) * bone
    atten += np.float32(_METAL) * metal
    exposure = np.float32(_N0) * (
        1.0 + np.float32(heel[0]) * y + np.float32(heel[1]) * (x / np.float32(cols) - 0.5)
    )
    quanta = exposure * np.exp(-atten)
    quanta += np.sqrt(quanta) * noise
    np.maximum(quanta, 0.5, out=quanta)
    signal = np.log(np.float32(_N0) / quanta)
    gain = (MAX_STORED - offset) / full_scale
    signal *= np.float32(gain)
    signal += np.float32(offset)
    np.clip(signal, 0, MAX_STORED, out=signal)
    return np.rint(signal).astype(np.uint16)


def _texture(rng: np.random.Generator, rows: int, cols: int) -> FloatArray:
    """Smooth trabecular-like texture, zero mean, unit-ish variance, full size."""
    block = max(2, rows // 420)
    lr_rows, lr_cols = -(-rows // block) + 1, -(-cols // block) + 1
    low = rng.standard_normal((lr_rows, lr_cols), dtype=np.float32)
    low = ndimage.gaussian_filter(low, 0.7)
    low /= max(float(low.std()), 1e-6)
    # Bilinear upsampling by index arithmetic (exact output size, no rounding surprises).
    ry = np.arange(rows, dtype=np.float32) / block
    rx = np.arange(cols, dtype=np.float32) / block
    iy, ix = ry.astype(np.int32), rx.astype(np.int32)
    fy, fx = (ry - iy)[:, None], (rx - ix)[None, :]
    a = low[iy][:, ix]
    b = low[iy][:, ix + 1]
    c = low[iy + 1][:, ix]
    d = low[iy + 1][:, ix + 1]
    top = a + (b - a) * fx
    bottom = c + (d - c) * fx
    out: FloatArray = (top + (bottom - top) * fy).astype(np.float32)
    return out


def _draw_body(
    bone: FloatArray, texture: FloatArray, body: VertebralBody, density: float, edge: float
) -> None:
    """Draw a body: textured cancellous interior plus a brighter cortical rim."""
    sl = window(body.bbox(), bone.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    d = body.sdf(y, x)
    occ = soft(d, edge)
    height = 0.5 * ((body.bot_l - body.top_l) + (body.bot_r - body.top_r))
    rim = max(1.5 * edge, 0.07 * height)
    cortical = occ * np.exp(-np.maximum(d, 0.0) / np.float32(rim))
    bone[sl] += occ * np.float32(0.4 * density) * (1.0 + 0.25 * texture[sl]) + 0.35 * cortical


def _draw_solid(
    arr: FloatArray,
    shape: Shape,
    density: float,
    edge: float,
    texture: FloatArray | None = None,
) -> None:
    """Add ``density`` times the (soft) occupancy of ``shape``."""
    sl = window(shape.bbox(), arr.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    occ = soft(shape.sdf(y, x), edge)
    if texture is not None:
        arr[sl] += occ * np.float32(density) * (1.0 + 0.15 * texture[sl])
    else:
        arr[sl] += occ * np.float32(density)


def _draw_ring(arr: FloatArray, shape: Shape, density: float, thick: float, edge: float) -> None:
    """Add a band ``thick`` pixels wide just inside the outline of ``shape``."""
    sl = window(shape.bbox(), arr.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    d = shape.sdf(y, x)
    band = soft(d, edge) * soft(np.float32(thick) - d, edge)
    arr[sl] += band * np.float32(density)


def _scale(arr: FloatArray, shape: Shape, factor: float, edge: float) -> None:
    """Multiply ``arr`` inside ``shape`` by ``factor`` (soft-edged)."""
    sl = window(shape.bbox(), arr.shape, 2 * edge)
    if sl is None:
        return
    y, x = grid(sl)
    occ = soft(shape.sdf(y, x), edge)
    arr[sl] *= 1.0 - occ * np.float32(1.0 - factor)

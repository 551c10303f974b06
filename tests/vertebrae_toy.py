"""Tiny synthetic lateral views for the keypoint models' tests (not the phantoms).

Bright six-cornered bodies (anterior / middle / posterior heights as given) stacked on a dark,
noisy background, each with a dimmer posterior element behind a gap (so which side is
anterior can be learnt), and optionally a sacrum: a wider, tilted, textured block below.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

DEPTH_MM = 36.0
HEIGHT_MM = 25.0
GAP_MM = 8.0


def toy_record(
    seed: int,
    *,
    spacing: tuple[float, float] = (0.8, 0.8),
    n_vertebrae: int = 4,
    face_left: bool = True,
    sacrum: bool = True,
    heights_mm: Sequence[tuple[float, float, float]] | None = None,
    size_mm: tuple[float, float] = (220.0, 130.0),
) -> KeypointRecord:
    """A toy lateral view with its keypoints (x = column, y = row, original pixels)."""
    rng = np.random.default_rng(seed)
    row_mm, col_mm = spacing
    rows, cols = round(size_mm[0] / row_mm), round(size_mm[1] / col_mm)
    img = Image.new("F", (cols, rows), 0.0)
    draw = ImageDraw.Draw(img)
    # Work in mm, convert to pixels at the end; anterior = -1 side when facing left.
    sign = -1.0 if face_left else 1.0
    cx = size_mm[1] / 2 + rng.uniform(-8, 8)
    y = 18.0 + rng.uniform(0, 8)
    objects: list[AnnotatedObject] = []

    def px(points_mm: np.ndarray) -> np.ndarray:
        """mm to pixels, origin at the top-left corner of the top-left pixel."""
        return np.stack([points_mm[:, 0] / col_mm, points_mm[:, 1] / row_mm], axis=1)

    def poly(points_mm: np.ndarray, value: float) -> None:
        p = px(points_mm) - 0.5  # PIL's integer coordinates are pixel centres
        draw.polygon([tuple(q) for q in p], fill=value)

    for k in range(n_vertebrae):
        h = heights_mm[k] if heights_mm is not None else (HEIGHT_MM,) * 3
        depth = DEPTH_MM + rng.uniform(-3, 3)
        ha, hm, hp = h
        top = y + (max(h) - np.array([ha, hm, hp])) / 2  # reduced heights sink from the top
        xa, xm, xp = cx + sign * depth / 2, cx, cx - sign * depth / 2
        kp = np.array(
            [
                [xa, top[0]],
                [xa, top[0] + ha],
                [xm, top[1]],
                [xm, top[1] + hm],
                [xp, top[2]],
                [xp, top[2] + hp],
            ]
        )
        outline = kp[[0, 2, 4, 5, 3, 1]]
        poly(outline, 0.75 + rng.uniform(-0.05, 0.05))
        # Posterior element: a dimmer bar behind a gap (the canal).
        bx = xp - sign * 6.0
        bar = np.array(
            [[bx, y + 4], [bx - sign * 14, y + 2], [bx - sign * 14, y + 16], [bx, y + 18]]
        )
        poly(bar, 0.45)
        objects.append(AnnotatedObject(ObjectKind.VERTEBRA, f"L{k + 1}", px(kp)))
        y += max(h) + GAP_MM
    if sacrum:
        depth = DEPTH_MM + 6
        xa, xp = cx + sign * depth / 2, cx - sign * depth / 2
        tilt = 6.0
        kp = np.array(
            [
                [xa, y + tilt],
                [xa, y + tilt + 18],
                [cx, y + tilt / 2],
                [cx, y + tilt / 2 + 18],
                [xp, y],
                [xp, y + 18],
            ]
        )
        outline = kp[[0, 2, 4, 5, 3, 1]]
        poly(outline, 0.6)
        tail = np.array([kp[1], kp[5], [xp - sign * 4, y + 60], [cx, y + 60]])
        poly(tail, 0.6)
        objects.append(AnnotatedObject(ObjectKind.SACRUM, "S1", px(kp)))
    arr = np.asarray(img, dtype=np.float64)
    arr = arr + 0.15 + rng.normal(0, 0.03, arr.shape)
    display = np.clip(arr * 255, 0, 255).astype(np.uint8)
    return KeypointRecord(
        study=f"toy-{seed}",
        series="1",
        image=f"toy-{seed}-1",
        display=display,
        spacing_mm=spacing,
        objects=objects,
    )

"""Anchors of Pisov et al.'s keypoint detector: shapes in mm, encoding, target assignment.

The detector predicts at every pixel of its input (resampled to a fixed model spacing, so
the anchors are fixed in model pixels) and for every anchor shape (``method.md`` §8):

- **Shapes**: scales 17, 23, 28, 35 mm × aspect ratios 0.8, 1.1, 1.3, 2 (Pisov et al.),
  where the aspect ratio is **width / height** (a lateral vertebral body's box is wider than
  tall: lumbar about 1.3–1.8, fractured bodies more) and the scale is the square root of the
  area: ``w = s·√r``, ``h = s/√r``; plus two scales of ours, 45 and 55 mm
  (`EXTRA_SCALES_MM`), for the first sacral segment, whose tilted keypoint box on a lateral
  view (45–80 × 22–56 mm on the phantoms) no anchor of the paper's (chest CT: no sacrum)
  overlaps by 0.5, and for large or magnified lumbar bodies (boxes up to about 54 mm). With
  them every phantom object has an anchor of IoU ≥ 0.68. Shapes are scale-major
  (``shape = len(ratios)·scale + ratio``).
- **Centres**: pixel centres. Coordinates have their origin at the top-left corner of the
  top-left pixel (DICOM's convention for graphic annotations, and the phantoms'): pixel
  ``(row i, column j)`` has its centre at ``(x, y) = (j + 0.5, i + 0.5)``.
- **Encoding** of a keypoint ``g`` relative to anchor ``a``: ``e = (g − a_xy) / a_wh``.
- **Targets**: the axis-aligned box of an object's six keypoints; an anchor is positive where
  its IoU with a box is above 0.5, and every box's best anchor is positive too (a box no anchor
  overlaps by 0.5, such as a severely crushed body, still gets one); an anchor matches the box
  it overlaps most. Ours: an anchor whose best IoU is in ``(0.4, 0.5]`` (`NEGATIVE_IOU`) is
  left out of the objectness loss rather than being a negative — at full resolution such an
  anchor and a positive one a pixel away look alike, and calling one object and the other
  background caps the scores of objects whose best IoU is not far above 0.5.

Anchor tensors are laid out ``(shape, row, column)`` like the network's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

PAPER_SCALES_MM: tuple[float, ...] = (17.0, 23.0, 28.0, 35.0)
"""Anchor scales (square root of the area) in mm, Pisov et al."""

EXTRA_SCALES_MM: tuple[float, ...] = (45.0, 55.0)
"""Our added anchor scales (the first sacral segment, large bodies)."""

ANCHOR_SCALES_MM: tuple[float, ...] = (*PAPER_SCALES_MM, *EXTRA_SCALES_MM)
"""Anchor scales of the detector: the paper's and `EXTRA_SCALES_MM`."""

ANCHOR_RATIOS: tuple[float, ...] = (0.8, 1.1, 1.3, 2.0)
"""Anchor aspect ratios, width / height, Pisov et al."""

POSITIVE_IOU = 0.5
"""IoU above which an anchor is a positive (objectness 1)."""

NEGATIVE_IOU = 0.4
"""Best IoU at or below which an anchor is a negative (between the two: left out)."""

IGNORE_IOU = 0.4
"""IoU above which an anchor overlapping an object only partly in view is left out of the loss."""


def anchor_shapes(
    spacing_mm: float,
    scales_mm: Sequence[float] = ANCHOR_SCALES_MM,
    ratios: Sequence[float] = ANCHOR_RATIOS,
) -> torch.Tensor:
    """Widths and heights of the anchors in pixels of a given spacing.

    Parameters
    ----------
    spacing_mm : float
        Pixel size (isotropic) of the image the anchors live on.
    scales_mm : sequence of float
        Square roots of the anchor areas in mm.
    ratios : sequence of float
        Aspect ratios, width / height.

    Returns
    -------
    torch.Tensor
        ``(len(scales) · len(ratios), 2)`` float32 ``(w, h)``, scale-major.
    """
    if spacing_mm <= 0:
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    wh = [
        (s * math.sqrt(r) / spacing_mm, s / math.sqrt(r) / spacing_mm)
        for s in scales_mm
        for r in ratios
    ]
    return torch.tensor(wh, dtype=torch.float32)


def keypoint_boxes(keypoints: torch.Tensor) -> torch.Tensor:
    """Axis-aligned boxes of keypoint sets.

    Parameters
    ----------
    keypoints : torch.Tensor
        ``(..., 6, 2)`` ``(x, y)``.

    Returns
    -------
    torch.Tensor
        ``(..., 4)`` ``(xmin, ymin, xmax, ymax)``.
    """
    return torch.cat([keypoints.amin(dim=-2), keypoints.amax(dim=-2)], dim=-1)


def pixel_centres(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Centres ``(x, y)`` of pixels given by row and column indices.

    Parameters
    ----------
    rows, columns : torch.Tensor
        ``(K,)`` integer indices.

    Returns
    -------
    torch.Tensor
        ``(K, 2)`` float32 ``(column + 0.5, row + 0.5)``.
    """
    return torch.stack([columns, rows], dim=1).float() + 0.5


def encode(keypoints: torch.Tensor, centres: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """Encode keypoints relative to anchors: ``e = (g − a_xy) / a_wh``.

    Parameters
    ----------
    keypoints : torch.Tensor
        ``(K, 6, 2)`` global ``(x, y)``.
    centres : torch.Tensor
        ``(K, 2)`` anchor centres ``(x, y)``.
    shapes : torch.Tensor
        ``(K, 2)`` anchor ``(w, h)``.

    Returns
    -------
    torch.Tensor
        ``(K, 6, 2)`` encoded coordinates.
    """
    return (keypoints - centres[:, None, :]) / shapes[:, None, :]


def decode(encoded: torch.Tensor, centres: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """Invert `encode`: ``g = e · a_wh + a_xy``.

    Parameters
    ----------
    encoded : torch.Tensor
        ``(K, 6, 2)`` encoded coordinates.
    centres : torch.Tensor
        ``(K, 2)`` anchor centres ``(x, y)``.
    shapes : torch.Tensor
        ``(K, 2)`` anchor ``(w, h)``.

    Returns
    -------
    torch.Tensor
        ``(K, 6, 2)`` global ``(x, y)``.
    """
    return encoded * shapes[:, None, :] + centres[:, None, :]


@dataclass(frozen=True)
class AnchorTargets:
    """Objectness targets of every anchor of one image.

    Attributes
    ----------
    objectness : torch.Tensor
        ``(A, H, W)`` float, 1 for positives, 0 otherwise.
    weight : torch.Tensor
        ``(A, H, W)`` float, 0 for anchors left out of the objectness loss, else 1.
    matched : torch.Tensor
        ``(A, H, W)`` int64 index of the box a positive anchor regresses to, -1 elsewhere.
    """

    objectness: torch.Tensor
    weight: torch.Tensor
    matched: torch.Tensor


def anchor_ious(
    box: torch.Tensor,
    shapes: torch.Tensor,
    height: int,
    width: int,
    *,
    origin: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """IoU of one box with every anchor of a ``height × width`` grid of anchor centres.

    Parameters
    ----------
    box : torch.Tensor
        ``(4,)`` ``(xmin, ymin, xmax, ymax)``.
    shapes : torch.Tensor
        ``(A, 2)`` anchor ``(w, h)``.
    height, width : int
        Grid size (anchor centres at every pixel centre).
    origin : tuple of int
        ``(row, column)`` of the grid's first pixel (for a window of a larger grid).

    Returns
    -------
    torch.Tensor
        ``(A, height, width)`` IoU.
    """
    dev = shapes.device
    xs = torch.arange(width, dtype=torch.float32, device=dev) + (origin[1] + 0.5)
    ys = torch.arange(height, dtype=torch.float32, device=dev) + (origin[0] + 0.5)
    half_w, half_h = shapes[:, 0:1] / 2, shapes[:, 1:2] / 2
    # Overlaps along x and y separately: (A, W) and (A, H); the intersection is their product.
    ix = (torch.minimum(xs + half_w, box[2]) - torch.maximum(xs - half_w, box[0])).clamp(min=0)
    iy = (torch.minimum(ys + half_h, box[3]) - torch.maximum(ys - half_h, box[1])).clamp(min=0)
    inter = iy[:, :, None] * ix[:, None, :]
    area_anchor = (shapes[:, 0] * shapes[:, 1])[:, None, None]
    area_box = (box[2] - box[0]).clamp(min=0) * (box[3] - box[1]).clamp(min=0)
    return inter / (area_anchor + area_box - inter).clamp(min=1e-6)


def _window(
    box: torch.Tensor, shapes: torch.Tensor, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(r0, r1, c0, c1)`` (end exclusive) of anchor centres that can overlap."""
    reach_w, reach_h = (float(v) / 2 + 1 for v in shapes.amax(dim=0))
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, c1 = max(0, math.floor(x0 - reach_w)), min(width, math.ceil(x1 + reach_w) + 1)
    r0, r1 = max(0, math.floor(y0 - reach_h)), min(height, math.ceil(y1 + reach_h) + 1)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def assign_targets(
    boxes: torch.Tensor,
    shapes: torch.Tensor,
    height: int,
    width: int,
    *,
    ignore_boxes: torch.Tensor | None = None,
    positive_iou: float = POSITIVE_IOU,
    negative_iou: float = NEGATIVE_IOU,
    ignore_iou: float = IGNORE_IOU,
) -> AnchorTargets:
    """Objectness and box matching of every anchor (see the module docstring).

    Parameters
    ----------
    boxes : torch.Tensor
        ``(G, 4)`` keypoint boxes of the objects to detect, in grid pixels.
    shapes : torch.Tensor
        ``(A, 2)`` anchor ``(w, h)`` from `anchor_shapes`.
    height, width : int
        Grid size.
    ignore_boxes : torch.Tensor, optional
        ``(J, 4)`` boxes of objects only partly in view: anchors overlapping one by more than
        `ignore_iou` that are not positives are left out of the objectness loss.
    positive_iou : float
        IoU above which an anchor is positive.
    negative_iou : float
        Best IoU at or below which an anchor is negative; anchors between the two thresholds
        (not positive) are left out of the objectness loss. Equal to `positive_iou`: every
        anchor that is not positive is negative (the paper).
    ignore_iou : float
        IoU with an ignored box above which an anchor is left out.

    Returns
    -------
    AnchorTargets
        Objectness, loss weight and matched box per anchor.
    """
    n_shapes = shapes.shape[0]
    dev = shapes.device
    best = torch.zeros((n_shapes, height, width), device=dev)
    matched = torch.full((n_shapes, height, width), -1, dtype=torch.int64, device=dev)
    forced: list[tuple[int, int, int, int]] = []
    for g in range(boxes.shape[0]):
        win = _window(boxes[g], shapes, height, width)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        iou = anchor_ious(boxes[g], shapes, r1 - r0, c1 - c0, origin=(r0, c0))
        old = best[:, r0:r1, c0:c1]
        better = iou > old
        best[:, r0:r1, c0:c1] = torch.where(better, iou, old)
        matched[:, r0:r1, c0:c1][better] = g
        top = int(torch.argmax(iou))
        if float(iou.flatten()[top]) > 0:
            a, rem = divmod(top, (r1 - r0) * (c1 - c0))
            r, c = divmod(rem, c1 - c0)
            forced.append((a, r0 + r, c0 + c, g))
    positive = best > positive_iou
    matched = torch.where(positive, matched, -1)
    for a, r, c, g in forced:
        positive[a, r, c] = True
        matched[a, r, c] = g
    weight = torch.where(
        (best > negative_iou) & ~positive,
        torch.zeros((), device=dev),
        torch.ones((), device=dev),
    )
    if ignore_boxes is not None:
        for j in range(ignore_boxes.shape[0]):
            win = _window(ignore_boxes[j], shapes, height, width)
            if win is None:
                continue
            r0, r1, c0, c1 = win
            iou = anchor_ious(ignore_boxes[j], shapes, r1 - r0, c1 - c0, origin=(r0, c0))
            near = (iou > ignore_iou) & ~positive[:, r0:r1, c0:c1]
            weight[:, r0:r1, c0:c1][near] = 0.0
    return AnchorTargets(positive.float(), weight, matched)

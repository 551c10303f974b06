"""Training crops for the Pisov detector: resampling, augmentation, keypoints carried along.

Each `KeypointRecord` is resampled once to the model spacing (`prepare_record`, the same
`resample` as inference). Every training sample is then one random crop (`sample_crop`) of
``crop × crop`` model pixels taken through a single affine map — scale jitter (log-uniform,
a spacing jitter), a small rotation and a horizontal flip — with gamma and Gaussian noise on
the intensities, and the same z-scoring as inference (the image's mean and standard
deviation; outside the image is black, z-scored alike).

**Facing and flips.** The records' keypoint names are anatomical (anterior = towards the
patient's front). Mirroring a lateral view gives the view from the other side: the anterior
top corner is still the anterior top corner, only on the other side of the image. The network
regresses keypoints in *image order* (the height on the image's left first, ``net.py``) and
predicts once per image which way the patient faces. So `prepare_record` finds each image's
facing from its keypoints (anterior left of posterior on average: facing left) and puts a
right-facing image's keypoints into image order with `genant.FLIP_HORIZONTAL`; a flipped crop
permutes them with `genant.FLIP_HORIZONTAL` again and toggles its facing. The detector
turns image order back into anatomical order with the predicted facing. (Permuting on a
flip while keeping anatomical labels as targets would be wrong: wedge fractures of patients
facing right would come out as crush fractures.) Lateral radiographs face either way, so
training flips half of the crops.

An object whose keypoint box lies at least `AugmentConfig.min_visible` inside the crop is a
target; one only partly inside is left out of the objectness loss (`IGNORE_IOU`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from spinexr.pipeline.vertebrae.anchors import keypoint_boxes
from spinexr.pipeline.vertebrae.detector import resample
from spinexr.pipeline.vertebrae.genant import FLIP_HORIZONTAL, genant_index, heights
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.vertebrae.records import KeypointRecord

MIN_GENANT = 0.25
"""Lower bound of the Genant index dividing an object's keypoint loss (a zero height)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Crop size and augmentation ranges.

    Attributes
    ----------
    crop : int
        Side of the square crop in model pixels (a multiple of the network's stride).
    scale_jitter : float
        Zoom drawn log-uniformly in ``[1 / (1 + j), 1 + j]``.
    rotation_deg : float
        Rotation drawn uniformly in ``±rotation_deg``.
    flip : float
        Probability of a horizontal flip.
    gamma : float
        ``log(gamma)`` drawn uniformly in ``±gamma``.
    noise : float
        Gaussian noise standard deviation drawn uniformly in ``[0, noise]`` (image in 0..1).
    min_visible : float
        Share of a keypoint box inside the crop for the object to be a target.
    """

    crop: int = 192
    scale_jitter: float = 0.15
    rotation_deg: float = 8.0
    flip: float = 0.5
    gamma: float = 0.35
    noise: float = 0.03
    min_visible: float = 0.6


@dataclass(frozen=True)
class PreparedRecord:
    """A record resampled to the model spacing.

    Attributes
    ----------
    image : torch.Tensor
        ``(H, W)`` float32 in ``0..1``.
    keypoints : torch.Tensor
        ``(G, 6, 2)`` float32 ``(x, y)`` in model pixels, image order (module docstring).
    faces_right : bool or None
        Whether the patient faces right (None: no object to tell).
    sacrum : torch.Tensor
        ``(G,)`` bool, the object is the first sacral segment.
    genant : torch.Tensor
        ``(G,)`` float32 Genant index of each object (1 for the sacrum), at least
        `MIN_GENANT`.
    """

    image: torch.Tensor
    keypoints: torch.Tensor
    faces_right: bool | None
    sacrum: torch.Tensor
    genant: torch.Tensor


def facing_of(keypoints: Sequence[npt.NDArray[np.float64]]) -> bool | None:
    """Whether the patient faces right: posterior keypoints left of the anterior ones on average.

    Parameters
    ----------
    keypoints : sequence of numpy.ndarray
        ``(6, 2)`` keypoints in anatomical order.

    Returns
    -------
    bool or None
        None without keypoints or when the sides cannot be told apart.
    """
    if not keypoints:
        return None
    kp = np.asarray(keypoints, dtype=np.float64)
    depth = float(np.mean(kp[:, 4:6, 0] - kp[:, 0:2, 0]))
    return None if depth == 0 else depth < 0


def prepare_record(record: KeypointRecord, model_spacing_mm: float) -> PreparedRecord:
    """Resample a record's image and keypoints to the model spacing.

    Parameters
    ----------
    record : KeypointRecord
        An image with a spacing.
    model_spacing_mm : float
        The model's pixel size.

    Returns
    -------
    PreparedRecord
        Image, keypoints in model pixels, kinds and Genant indices.

    Raises
    ------
    ValueError
        When the record has no spacing.
    """
    if record.spacing_mm is None:
        raise ValueError(f"record {record.image} has no spacing: it cannot be resampled")
    res = resample(record.display, record.spacing_mm, model_spacing_mm)
    faces_right = facing_of([o.keypoints for o in record.objects])
    kps, sacrum, g = [], [], []
    for obj in record.objects:
        points = obj.keypoints[list(FLIP_HORIZONTAL)] if faces_right else obj.keypoints
        kps.append(res.to_model(points))
        is_sacrum = obj.kind is ObjectKind.SACRUM
        sacrum.append(is_sacrum)
        gi = 1.0 if is_sacrum else genant_index(heights(obj.keypoints, record.spacing_mm))
        g.append(max(MIN_GENANT, gi))
    return PreparedRecord(
        res.image,
        torch.tensor(np.array(kps, dtype=np.float32).reshape(-1, 6, 2)),
        faces_right,
        torch.tensor(sacrum, dtype=torch.bool),
        torch.tensor(g, dtype=torch.float32),
    )


@dataclass(frozen=True)
class Sample:
    """One augmented training crop.

    Attributes
    ----------
    image : torch.Tensor
        ``(1, crop, crop)`` z-scored.
    keypoints : torch.Tensor
        ``(G, 6, 2)`` targets in crop pixels, image order.
    faces_right : float
        1 when the patient faces right in the crop, 0 facing left, NaN unknown.
    sacrum : torch.Tensor
        ``(G,)`` bool.
    genant : torch.Tensor
        ``(G,)`` float32.
    ignore_boxes : torch.Tensor
        ``(J, 4)`` keypoint boxes of objects only partly inside the crop.
    """

    image: torch.Tensor
    keypoints: torch.Tensor
    faces_right: float
    sacrum: torch.Tensor
    genant: torch.Tensor
    ignore_boxes: torch.Tensor


def _centre(extent: int, half: float, rng: np.random.Generator) -> float:
    """Draw a crop centre along one axis (the crop may stick out by a quarter of its size)."""
    margin = half / 2
    lo, hi = half - margin, extent - half + margin
    if lo > hi:
        lo, hi = extent / 2 - margin, extent / 2 + margin
    return float(rng.uniform(lo, hi))


def sample_crop(record: PreparedRecord, config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Draw one augmented crop of a prepared record (module docstring).

    Parameters
    ----------
    record : PreparedRecord
        The resampled image and its objects.
    config : AugmentConfig
        Crop size and ranges.
    rng : numpy.random.Generator
        Source of every random draw (reproducible).

    Returns
    -------
    Sample
        Image, targets and ignored boxes.
    """
    size = config.crop
    j = math.log1p(config.scale_jitter)
    zoom = math.exp(rng.uniform(-j, j))
    theta = math.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    flip = -1.0 if rng.random() < config.flip else 1.0
    log_gamma = rng.uniform(-config.gamma, config.gamma)
    sigma = rng.uniform(0.0, config.noise)
    height, width = record.image.shape
    half = size / (2 * zoom)
    centre = np.array([_centre(width, half, rng), _centre(height, half, rng)])
    noise = rng.standard_normal((size, size)).astype(np.float32) * sigma

    # Crop point p -> model point q = centre + M (p - c), M = R(theta) · diag(flip, 1) / zoom,
    # both with the origin at the top-left corner (pixel centres at i + 0.5).
    cos, sin = math.cos(theta), math.sin(theta)
    m = np.array([[cos * flip, -sin], [sin * flip, cos]]) / zoom
    c = size / 2
    grid_axis = np.arange(size, dtype=np.float64) + 0.5 - c
    px, py = np.meshgrid(grid_axis, grid_axis)
    qx = centre[0] + m[0, 0] * px + m[0, 1] * py
    qy = centre[1] + m[1, 0] * px + m[1, 1] * py
    grid = np.stack([qx / width * 2 - 1, qy / height * 2 - 1], axis=-1)

    image = record.image.clamp(0, 1) ** math.exp(log_gamma)
    mean, std = image.mean(), image.std(unbiased=False).clamp(min=1e-6)
    crop = F.grid_sample(
        image[None, None],
        torch.from_numpy(grid[None].astype(np.float32)),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )[0]
    crop = (crop + torch.from_numpy(noise)[None] - mean) / std

    m_inv = torch.from_numpy(np.linalg.inv(m).astype(np.float32))
    kp = (record.keypoints - torch.from_numpy(centre.astype(np.float32))) @ m_inv.T + c
    faces_right = math.nan if record.faces_right is None else float(record.faces_right)
    if flip < 0:
        kp = kp[:, list(FLIP_HORIZONTAL)]
        faces_right = 1.0 - faces_right
    boxes = keypoint_boxes(kp)
    lo, hi = torch.tensor(0.0), torch.tensor(float(size))
    inside_w = (torch.minimum(boxes[:, 2], hi) - torch.maximum(boxes[:, 0], lo)).clamp(min=0)
    inside_h = (torch.minimum(boxes[:, 3], hi) - torch.maximum(boxes[:, 1], lo)).clamp(min=0)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    visible = inside_w * inside_h / area
    target = visible >= config.min_visible
    partial = (visible > 0) & ~target
    return Sample(
        crop.float(),
        kp[target],
        faces_right,
        record.sacrum[target],
        record.genant[target],
        boxes[partial],
    )

"""Pisov et al.'s single-stage vertebra keypoint detector, ready for inference.

`PisovDetector` implements `spinexr.pipeline.vertebrae.objects.KeypointModel`:

1. The display image is resampled (bilinear, antialiased) to the model's fixed spacing
   (`PisovHyper.model_spacing_mm`, isotropic), so the anchors (`anchors`) are fixed in model
   pixels; the only other preprocessing is z-scoring over the image (Pisov et al.); the image
   is padded with black (z-scored like the image) to a multiple of the network's stride.
2. `PisovNet` predicts objectness, sacrum-vs-vertebra and the encoded keypoints for every
   anchor at every model pixel.
3. Decoding: anchors whose objectness probability reaches `PisovHyper.score_threshold` are
   decoded (``g = e·a_wh + a_xy``), and non-maximum suppression
   (``torchvision.ops.nms``, `PisovHyper.nms_iou`) runs on the axis-aligned boxes of the
   decoded keypoints, vertebrae and sacrum together. Ours: each kept detection's keypoints
   (and sacrum probability) are then the score-weighted mean over the anchors of that object
   (`decode_output`'s voting); measured on held-out phantoms it removes a 2 mm
   overestimate of the heights that the single best anchor carries and lowers the centre
   error. An object is the sacrum where its sacrum probability is above one half.
4. The network gives keypoints in image order (the height on the image's left first) and a
   per-image facing; where the patient faces right (probability above one half) the
   keypoints are permuted by `genant.FLIP_HORIZONTAL` into anatomical order.
5. Keypoints go back to original pixels through the resampling's exact ratios; a detection
   with a keypoint outside the image (a body cut by the border, which cannot be measured) is
   dropped.

Coordinates, original and model, have their origin at the top-left corner of the top-left
pixel (pixel centres at ``i + 0.5``: DICOM's graphic annotations and the phantoms), so the
resampling maps points by a plain scaling.

Without a spacing (``spacing_mm=None``) the detector finds the scale itself (`search_scale`):
it assumes square pixels and each field of view of `ASSUMED_FIELDS_MM` over the image's
height (250 to 500 mm, a geometric series of ratio 2^(1/6) ≈ 1.12, within the ±15 % scale
jitter of training), detects at each, and keeps the one whose detections have the largest
**sum of scores** among the *plausible* ones: those whose vertebrae have a median size
(`body_size_mm`, in the assumed mm) within a factor `SIZE_TOLERANCE` of the training data's
(`PisovHyper.reference_size_mm`); when none is plausible, among all; ties go to the smaller
field. The size check is needed because the anchors span 17–55 mm: a body shown 1.5 times
too large still matches an anchor with full confidence, and at the largest fields parts of
bodies come out as extra detections that raise the sum (measured on toy images: scores
equal from 250 to 500 mm). The keypoints are in pixels either way, so heights in pixels and
Genant ratios stay right; only heights in mm need the true spacing.

Checkpoints are plain ``torch.save`` dictionaries (`save_checkpoint`) that
``torch.load(..., weights_only=True)`` reads: ``arch="pisov"``, ``version``, ``hyper``
(`PisovHyper` as plain types), ``state_dict`` and ``training`` metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torchvision.ops import box_iou, nms

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.vertebrae.anchors import (
    ANCHOR_RATIOS,
    ANCHOR_SCALES_MM,
    anchor_shapes,
    decode,
    keypoint_boxes,
    pixel_centres,
)
from spinexr.pipeline.vertebrae.genant import FLIP_HORIZONTAL
from spinexr.pipeline.vertebrae.net import PisovNet
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind

ARCH = "pisov"
"""The ``arch`` entry of this detector's checkpoints."""

CHECKPOINT_VERSION = 1
"""Version of the checkpoint layout (and of the algorithm, in `PisovDetector.name`)."""

ASSUMED_FIELDS_MM: tuple[float, ...] = tuple(250.0 * 2.0 ** (k / 6) for k in range(7))
"""Fields of view over the image height tried when the image has no spacing."""

SIZE_TOLERANCE = 1.25
"""Factor within which a scale's median vertebra size must lie of the reference to be kept."""

REFERENCE_SIZE_MM = 30.0
"""Default typical vertebra size (`body_size_mm`) in mm."""

MAX_CANDIDATES = 3000
"""Anchors above the score threshold kept (best first) before non-maximum suppression."""


@dataclass(frozen=True)
class PisovHyper:
    """Everything besides the weights that a trained detector needs.

    Attributes
    ----------
    channels : tuple of int
        U-Net channels per level, finest first.
    head_channels : int
        Hidden width of the per-pixel head.
    model_spacing_mm : float
        Isotropic pixel size the image is resampled to.
    anchor_scales_mm, anchor_ratios : tuple of float
        Anchor shapes (`anchors.anchor_shapes`; ratios are width / height).
    score_threshold : float
        Objectness probability a detection must reach.
    nms_iou : float
        IoU of keypoint boxes above which the lower-scored detection is suppressed.
    vote_threshold, vote_iou : float
        Keypoint voting: each kept detection's keypoints are the score-weighted mean of the
        anchors scoring at least `vote_threshold` whose keypoint box overlaps its box by more
        than `vote_iou` (`decode_output`).
    reference_size_mm : float
        Median vertebra size (`body_size_mm`) in the training data, for the scale search
        without spacing.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    head_channels: int = 32
    model_spacing_mm: float = 2.0
    anchor_scales_mm: tuple[float, ...] = ANCHOR_SCALES_MM
    anchor_ratios: tuple[float, ...] = ANCHOR_RATIOS
    score_threshold: float = 0.5
    nms_iou: float = 0.3
    vote_threshold: float = 0.05
    vote_iou: float = 0.5
    reference_size_mm: float = REFERENCE_SIZE_MM

    def to_dict(self) -> dict[str, Any]:
        """Plain types for the checkpoint (lists instead of tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PisovHyper:
        """Inverse of `to_dict`."""
        return cls(
            channels=tuple(int(c) for c in d["channels"]),
            head_channels=int(d["head_channels"]),
            model_spacing_mm=float(d["model_spacing_mm"]),
            anchor_scales_mm=tuple(float(s) for s in d["anchor_scales_mm"]),
            anchor_ratios=tuple(float(r) for r in d["anchor_ratios"]),
            score_threshold=float(d["score_threshold"]),
            nms_iou=float(d["nms_iou"]),
            vote_threshold=float(d["vote_threshold"]),
            vote_iou=float(d["vote_iou"]),
            reference_size_mm=float(d["reference_size_mm"]),
        )

    def shapes(self) -> torch.Tensor:
        """Anchor ``(w, h)`` in model pixels."""
        return anchor_shapes(self.model_spacing_mm, self.anchor_scales_mm, self.anchor_ratios)


def body_size_mm(keypoints: npt.ArrayLike, spacing_mm: tuple[float, float]) -> float:
    """Size of a vertebral body: square root of (mean of its three heights × its depth), mm.

    The depth is the distance between the midpoints of the anterior and the posterior
    heights. Unlike the keypoint box, it does not grow with the spread of noisy keypoints.

    Parameters
    ----------
    keypoints : array-like
        ``(6, 2)`` keypoints in pixels.
    spacing_mm : tuple of float
        ``(row_mm, column_mm)``.

    Returns
    -------
    float
        The size in mm.
    """
    kp = np.asarray(keypoints, dtype=np.float64) * np.array([spacing_mm[1], spacing_mm[0]])
    h = np.linalg.norm(kp[1::2] - kp[0::2], axis=1)
    depth = np.linalg.norm((kp[4] + kp[5]) / 2 - (kp[0] + kp[1]) / 2)
    return float(math.sqrt(max(0.0, float(h.mean()) * float(depth))))


def build_model(hyper: PisovHyper) -> PisovNet:
    """Build the network for these hyperparameters (random weights).

    Parameters
    ----------
    hyper : PisovHyper
        Channels and anchors.

    Returns
    -------
    PisovNet
        The network.
    """
    n_anchors = len(hyper.anchor_scales_mm) * len(hyper.anchor_ratios)
    return PisovNet(hyper.channels, n_anchors, hyper.head_channels)


@dataclass(frozen=True)
class Resampled:
    """An image resampled to the model spacing.

    Attributes
    ----------
    image : torch.Tensor
        ``(H, W)`` float32 in ``0..1``.
    scale : tuple of float
        ``(rows, columns)`` original pixels per model pixel (exact, from the sizes).
    """

    image: torch.Tensor
    scale: tuple[float, float]

    def to_model(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 2)`` ``(x, y)`` from original to model pixels (corner origin)."""
        p = np.asarray(points, dtype=np.float64)
        return p / np.array([self.scale[1], self.scale[0]])

    def to_original(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 2)`` ``(x, y)`` from model to original pixels (corner origin)."""
        p = np.asarray(points, dtype=np.float64)
        return p * np.array([self.scale[1], self.scale[0]])


def resample(
    display: npt.NDArray[np.uint8] | npt.NDArray[np.floating[Any]],
    spacing_mm: tuple[float, float],
    model_spacing_mm: float,
) -> Resampled:
    """Resample a display image to the model spacing (bilinear, antialiased).

    Parameters
    ----------
    display : numpy.ndarray
        ``(rows, columns)`` image, ``uint8`` (scaled to ``0..1``) or float in ``0..1``.
    spacing_mm : tuple of float
        ``(row_mm, column_mm)`` of the image.
    model_spacing_mm : float
        Target pixel size.

    Returns
    -------
    Resampled
        The image and the exact original-per-model pixel ratios.
    """
    arr = np.asarray(display)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"expected a (rows, columns) image, got shape {arr.shape}")
    row_mm, col_mm = (float(v) for v in spacing_mm)
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm) and math.isfinite(col_mm)):
        raise ValueError(f"spacing must be positive and finite, got {spacing_mm}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.dtype == np.uint8:
        x = x / 255.0
    rows, cols = arr.shape
    out_rows = max(1, round(rows * row_mm / model_spacing_mm))
    out_cols = max(1, round(cols * col_mm / model_spacing_mm))
    y = F.interpolate(x[None, None], size=(out_rows, out_cols), mode="bilinear", antialias=True)[
        0, 0
    ]
    return Resampled(y.contiguous(), (rows / out_rows, cols / out_cols))


def model_input(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Z-score an image and pad it with black to a multiple of `stride` (bottom, right).

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` float in ``0..1``.
    stride : int
        The network's stride.

    Returns
    -------
    torch.Tensor
        ``(1, 1, H', W')`` float32.
    """
    mean = image.mean()
    std = image.std(unbiased=False).clamp(min=1e-6) if image.numel() > 1 else torch.tensor(1.0)
    h, w = image.shape
    ph, pw = -h % stride, -w % stride
    z = F.pad(image, (0, pw, 0, ph), value=0.0)
    return ((z - mean) / std)[None, None].float()


@dataclass(frozen=True)
class RawDetections:
    """Decoded detections in model pixels (after NMS), best first.

    Attributes
    ----------
    scores : torch.Tensor
        ``(K,)`` objectness probabilities.
    sacrum : torch.Tensor
        ``(K,)`` sacrum probabilities.
    keypoints : torch.Tensor
        ``(K, 6, 2)`` ``(x, y)`` in model pixels.
    """

    scores: torch.Tensor
    sacrum: torch.Tensor
    keypoints: torch.Tensor


def decode_output(
    scores: torch.Tensor,
    encoded: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    shapes: torch.Tensor,
    valid: tuple[int, int],
    *,
    score_threshold: float,
    nms_iou: float,
    vote_threshold: float | None = None,
    vote_iou: float = 0.5,
    max_candidates: int = MAX_CANDIDATES,
) -> RawDetections:
    """Turn one image's network output into detections.

    Parameters
    ----------
    scores : torch.Tensor
        ``(A, SCORES, H, W)`` score logits of one image (`PisovOutput.scores`).
    encoded : callable
        ``(anchor, row, column) -> (K, 12)`` encoded keypoints of those anchors
        (`PisovNet.keypoints` of the image).
    shapes : torch.Tensor
        ``(A, 2)`` anchor ``(w, h)`` in model pixels.
    valid : tuple of int
        ``(rows, columns)`` of the image inside the padded input (anchors centred in the
        padding are dropped).
    score_threshold : float
        Objectness probability to reach.
    nms_iou : float
        IoU threshold of the non-maximum suppression on keypoint boxes.
    vote_threshold : float, optional
        Keypoint voting (None: off): the keypoints of each detection kept by the suppression
        become the score-weighted mean over the anchors scoring at least `vote_threshold`
        whose keypoint box overlaps the detection's by more than `vote_iou`. The anchor that
        scores best is biased towards its own shape (an under-trained regression leans on its
        anchor); the mean over the object's anchors, large and small, is not.
    vote_iou : float
        Overlap for the voting.
    max_candidates : int
        Best anchors kept (each, for the seeds and for the voting) before the suppression.

    Returns
    -------
    RawDetections
        The kept detections, best first.
    """
    rows, cols = valid
    logits = scores[:, :, :rows, :cols].float()
    objectness = torch.sigmoid(logits[:, 0])
    shapes = shapes.to(logits.device)

    def candidates(threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, y, x = torch.nonzero(objectness >= threshold, as_tuple=True)
        s = objectness[a, y, x]
        if s.numel() > max_candidates:
            top = torch.topk(s, max_candidates).indices
            a, y, x, s = a[top], y[top], x[top], s[top]
        kp = decode(encoded(a, y, x).float().reshape(-1, 6, 2), pixel_centres(y, x), shapes[a])
        return s, kp, torch.sigmoid(logits[a, 1, y, x])

    s, kp, sacrum = candidates(score_threshold)
    boxes = keypoint_boxes(kp)
    keep = nms(boxes, s, nms_iou)
    if vote_threshold is None or keep.numel() == 0:
        return RawDetections(s[keep], sacrum[keep], kp[keep])
    vs, vkp, vsacrum = candidates(min(vote_threshold, score_threshold))
    weight = (box_iou(boxes[keep], keypoint_boxes(vkp)) > vote_iou).float() * vs[None, :]
    weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=1e-12)
    voted = torch.einsum("kc,cpd->kpd", weight, vkp)
    return RawDetections(s[keep], weight @ vsacrum, voted)


@dataclass(frozen=True)
class ImageDetections:
    """What the detector found on one image at one spacing.

    Attributes
    ----------
    objects : list of DetectedObject
        Keypoints in original pixels, anatomical order, best score first.
    faces_right : float
        Probability that the patient faces right (anterior = image right).
    spacing_mm : tuple of float
        The (true or assumed) ``(row_mm, column_mm)`` used.
    """

    objects: list[DetectedObject]
    faces_right: float
    spacing_mm: tuple[float, float]

    def vertebra_size_mm(self) -> float | None:
        """Median `body_size_mm` of the vertebrae found, if any."""
        sizes = [
            body_size_mm(o.keypoints, self.spacing_mm)
            for o in self.objects
            if o.kind is ObjectKind.VERTEBRA
        ]
        return float(np.median(sizes)) if sizes else None


@dataclass(frozen=True)
class ScaleTrial:
    """One assumed spacing of `PisovDetector.search_scale`.

    Attributes
    ----------
    row_mm : float
        The assumed (square) pixel size.
    vertebrae : int
        Vertebrae found.
    size_mm : float or None
        Their median `body_size_mm` in assumed mm (None without any).
    quality : float
        Sum of the detection scores.
    """

    row_mm: float
    vertebrae: int
    size_mm: float | None
    quality: float


@dataclass(frozen=True)
class ScaleSearch:
    """What `PisovDetector.search_scale` found.

    Attributes
    ----------
    best : ImageDetections
        The detections at the spacing kept.
    tried : list of ScaleTrial
        Every assumed spacing, smallest first.
    """

    best: ImageDetections
    tried: list[ScaleTrial] = field(default_factory=list)


class PisovDetector:
    """A trained Pisov keypoint detector (`objects.KeypointModel`).

    Parameters
    ----------
    model : PisovNet
        Trained network (put in eval mode on `device`).
    hyper : PisovHyper
        Its hyperparameters.
    device : torch.device or str
        Where inference runs.
    training : dict, optional
        Training metadata from the checkpoint.
    """

    def __init__(
        self,
        model: PisovNet,
        hyper: PisovHyper,
        device: torch.device | str = "cpu",
        training: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.hyper = hyper
        self.training = dict(training or {})
        self._shapes = hyper.shapes().to(self.device)

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: torch.device | str = "cpu") -> PisovDetector:
        """Load a checkpoint written by `save_checkpoint`.

        Parameters
        ----------
        path : pathlib.Path or str
            The ``.pt`` file.
        device : torch.device or str
            ``cpu``, ``cuda``, ``auto``...

        Returns
        -------
        PisovDetector
            Ready for `predict`.

        Raises
        ------
        ValueError
            When the file is not a Pisov checkpoint of a known version.
        """
        ckpt = load_checkpoint(path)
        hyper = PisovHyper.from_dict(ckpt["hyper"])
        model = build_model(hyper)
        model.load_state_dict(ckpt["state_dict"])
        return cls(model, hyper, device, ckpt.get("training"))

    @property
    def name(self) -> str:
        """Algorithm name and version, for the SR."""
        return f"pisov-keypoints {CHECKPOINT_VERSION}"

    def predict(
        self, image: npt.NDArray[np.uint8], spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        """Detect vertebral bodies and the sacrum (see the module docstring).

        Parameters
        ----------
        image : numpy.ndarray
            ``uint8`` ``(rows, columns)`` display image, bone bright.
        spacing_mm : tuple of float, optional
            ``(row_mm, column_mm)``; None: the scale is searched (`search_scale`).

        Returns
        -------
        list of DetectedObject
            Keypoints in original pixels, anatomical order, best score first.
        """
        if spacing_mm is None:
            return self.search_scale(image).best.objects
        return self.detect(image, spacing_mm).objects

    def detect(
        self, image: npt.NDArray[np.uint8], spacing_mm: tuple[float, float]
    ) -> ImageDetections:
        """Detect at a given (true or assumed) spacing.

        Parameters
        ----------
        image : numpy.ndarray
            ``uint8`` ``(rows, columns)`` display image.
        spacing_mm : tuple of float
            ``(row_mm, column_mm)``.

        Returns
        -------
        ImageDetections
            Detections in original pixels and the facing.
        """
        res = resample(image, spacing_mm, self.hyper.model_spacing_mm)
        x = model_input(res.image, self.model.stride).to(self.device)
        with torch.inference_mode():
            out = self.model(x)

            def encoded(a: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return self.model.keypoints(out.features, torch.zeros_like(a), a, y, x)

            raw = decode_output(
                out.scores[0],
                encoded,
                self._shapes,
                (res.image.shape[0], res.image.shape[1]),
                score_threshold=self.hyper.score_threshold,
                nms_iou=self.hyper.nms_iou,
                vote_threshold=self.hyper.vote_threshold,
                vote_iou=self.hyper.vote_iou,
            )
        faces_right = float(torch.sigmoid(out.facing[0]))
        keypoints = res.to_original(raw.keypoints.cpu().numpy())
        if faces_right > 0.5:  # image order -> anatomical order
            keypoints = keypoints[:, list(FLIP_HORIZONTAL)]
        rows, cols = np.asarray(image).shape
        inside = np.all(
            (keypoints >= 0) & (keypoints <= np.array([cols, rows], dtype=np.float64)), axis=(1, 2)
        )
        objects = [
            DetectedObject(
                ObjectKind.SACRUM if float(p) > 0.5 else ObjectKind.VERTEBRA,
                float(s),
                keypoints[i],
            )
            for i, (s, p) in enumerate(zip(raw.scores.tolist(), raw.sacrum.tolist(), strict=True))
            if inside[i]
        ]
        return ImageDetections(objects, faces_right, (float(spacing_mm[0]), float(spacing_mm[1])))

    def search_scale(
        self, image: npt.NDArray[np.uint8], fields_mm: Sequence[float] = ASSUMED_FIELDS_MM
    ) -> ScaleSearch:
        """Detect at every assumed field of view and keep the best plausible one (module doc).

        Parameters
        ----------
        image : numpy.ndarray
            ``uint8`` ``(rows, columns)`` display image.
        fields_mm : sequence of float
            Assumed fields of view over the image height, in mm.

        Returns
        -------
        ScaleSearch
            The detections kept and every run's spacing, vertebra count, median size and
            sum of scores.
        """
        if not fields_mm:
            raise ValueError("no field of view to try")
        rows = np.asarray(image).shape[0]
        runs: list[ImageDetections] = []
        tried: list[ScaleTrial] = []
        for fov in sorted(fields_mm):
            found = self.detect(image, (fov / rows, fov / rows))
            size = found.vertebra_size_mm()
            quality = float(sum(o.score for o in found.objects))
            n = sum(o.kind is ObjectKind.VERTEBRA for o in found.objects)
            runs.append(found)
            tried.append(ScaleTrial(found.spacing_mm[0], n, size, quality))
        ref = self.hyper.reference_size_mm
        plausible = [
            k
            for k, t in enumerate(tried)
            if t.size_mm is not None and abs(math.log(t.size_mm / ref)) <= math.log(SIZE_TOLERANCE)
        ]
        pool = plausible or list(range(len(tried)))
        best = max(pool, key=lambda k: (tried[k].quality, -k))
        return ScaleSearch(runs[best], tried)


def save_checkpoint(
    path: Path, model: PisovNet, hyper: PisovHyper, training: Mapping[str, Any]
) -> Path:
    """Write a checkpoint that `PisovDetector.from_checkpoint` loads (atomically).

    Parameters
    ----------
    path : pathlib.Path
        Destination ``.pt`` file.
    model : PisovNet
        The network (its weights are saved on the CPU).
    hyper : PisovHyper
        Its hyperparameters.
    training : mapping
        Plain-typed metadata (seed, iterations, data digest, timings...).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    obj = {
        "arch": ARCH,
        "version": CHECKPOINT_VERSION,
        "hyper": hyper.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": dict(training),
    }
    write_atomically(path, lambda tmp: torch.save(obj, tmp))
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read and check a Pisov checkpoint (``weights_only=True``).

    Parameters
    ----------
    path : pathlib.Path or str
        The ``.pt`` file.

    Returns
    -------
    dict
        Its contents.

    Raises
    ------
    ValueError
        When it is not a Pisov checkpoint of a known version.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ValueError(f"{path} is not a Pisov keypoint detector checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt.get('version')!r}, expected {CHECKPOINT_VERSION}"
        )
    return ckpt

"""torchvision's Keypoint R-CNN with six keypoints per vertebra: the baseline of issue 16.

The model is ``keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None,
num_keypoints=6, num_classes=3)`` (classes: background, vertebra, sacrum), trained from
scratch (nothing is downloaded). `KeypointRCNNModel` implements
`spinexr.pipeline.vertebrae.objects.KeypointModel`.

Input. The ``uint8`` display image (bone bright) is resampled (bilinear, antialiased) to a
fixed ``config.spacing_mm`` mm per pixel, so that a vertebra has the same size in pixels on
every image, z-scored (Pisov et al.'s only preprocessing) and replicated to three channels.
torchvision's own resizing to ``min_size``/``max_size`` is switched off (`_FixedScaleTransform`):
the spacing sets the scale instead, and ``config.max_size`` only caps the longer side of the
resampled image (a larger image is shrunk further, and the detector then sees smaller
vertebrae than it was trained on). Without a spacing the image is assumed to span
`NOMINAL_FIELD_OF_VIEW_MM` (430 mm, a 35 × 43 cm detector) over its rows: ``430 / rows`` mm
per pixel in both directions, the pitch of the project's phantoms.

Coordinates. Keypoints are ``(x, y)`` with the centre of pixel ``(row, column)`` at
``(column, row)``; torchvision puts it at ``(column + 0.5, row + 0.5)``. `rescale_points`
maps between the original and the resampled image in torchvision's continuous convention and
returns ours, so predictions come back in original pixels.

Boxes. Keypoint R-CNN regresses boxes, but a vertebra is its six keypoints: the training
box is the keypoints' axis-aligned box padded by ``config.box_margin`` (10 %) of its width
and height on each side, because a keypoint outside the proposal box drops out of the
keypoint loss; the returned objects carry only keypoints (their `DetectedObject.box` is the
keypoints' box). Detections are kept above ``config.score_threshold``, then one per place:
torchvision suppresses per class, and a second non-maximum suppression over both classes on
the keypoint boxes (IoU ``config.nms_iou``) keeps the better of a vertebra and a sacrum
found at the same place.

Anchors are given in mm (``config.anchor_sizes_mm``, one size per FPN level, and
height/width ratios ``config.aspect_ratios``) and converted with the model spacing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
import torchvision
from torch import nn
from torchvision.models.detection import KeypointRCNN, keypointrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.errors import WeightsError
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind

ARCH = "keypointrcnn"
"""Value of ``checkpoint["arch"]``."""

CHECKPOINT_VERSION = 1
"""Value of ``checkpoint["version"]`` written by `make_checkpoint`."""

NUM_KEYPOINTS = 6

NOMINAL_FIELD_OF_VIEW_MM = 430.0
"""Height in mm assumed for an image without spacing (``430 / rows`` mm per pixel)."""

LABELS: dict[int, ObjectKind] = {1: ObjectKind.VERTEBRA, 2: ObjectKind.SACRUM}
"""Class index → object kind (0 is the background)."""

LABEL_OF_KIND: dict[ObjectKind, int] = {kind: label for label, kind in LABELS.items()}
"""Object kind → class index."""

TORCHVISION_FPN_CHANNELS = 256
"""Channels of torchvision's feature pyramid (and so of its RPN and region heads)."""

TORCHVISION_KEYPOINT_HEAD: tuple[int, ...] = (512,) * 8
"""torchvision's keypoint head: eight 3×3 convolutions of 512 channels."""

Backbone = Literal["resnet50", "resnet18"]


@dataclass(frozen=True)
class KRCNNConfig:
    """Everything that builds the network and prepares its input (saved in the checkpoint).

    The defaults are the issue's model (ResNet-50 FPN) at 0.8 mm per pixel; `cpu` gives a
    lighter one for training on a few CPU cores.

    Attributes
    ----------
    backbone : {"resnet50", "resnet18"}
        ``resnet50``: torchvision's ``keypointrcnn_resnet50_fpn`` (with the default
        ``fpn_channels``). ``resnet18``: the same Keypoint R-CNN on a ResNet-18 FPN (about
        2.5× fewer backbone operations), for CPUs.
        Both are trained from scratch with ordinary batch norm and every layer trainable
        (torchvision ignores ``trainable_backbone_layers`` without pre-trained weights).
    spacing_mm : float
        mm per pixel of the resampled image the network sees.
    max_size : int
        Cap on the longer side of the resampled image, in pixels.
    anchor_sizes_mm : tuple of float
        One anchor size per FPN level (P2…P6), in mm.
    aspect_ratios : tuple of float
        Anchor height / width ratios (every level).
    rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train : int
        Region proposals kept before / after NMS while training.
    rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test : int
        The same at inference.
    box_batch_size_per_image : int
        Proposals sampled per image for the box and keypoint heads while training.
    detections_per_img : int
        Most detections per image.
    score_threshold : float
        Lowest score `KeypointRCNNModel.predict` keeps.
    nms_iou : float
        IoU above which the lower-scoring of two detections is dropped.
    box_margin : float
        Padding of the training boxes around the keypoints, as a fraction of the keypoint
        box's width and height on each side.
    fpn_channels : int
        Channels of the feature pyramid, the RPN head and the region pooling (torchvision:
        256; the 3×3 convolutions at a quarter of the resolution cost the most).
    keypoint_head_channels : tuple of int
        Output channels of each 3×3 convolution of the keypoint head (torchvision's default:
        eight of 512, about 3.7 GFLOP per region; it dominates a CPU training step).
    """

    backbone: Backbone = "resnet50"
    spacing_mm: float = 0.8
    max_size: int = 1024
    anchor_sizes_mm: tuple[float, ...] = (20.0, 32.0, 48.0, 72.0, 108.0)
    aspect_ratios: tuple[float, ...] = (0.6, 0.85, 1.2)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    detections_per_img: int = 50
    score_threshold: float = 0.5
    nms_iou: float = 0.5
    box_margin: float = 0.1
    fpn_channels: int = 256  # TORCHVISION_FPN_CHANNELS
    keypoint_head_channels: tuple[int, ...] = (512,) * 8  # TORCHVISION_KEYPOINT_HEAD

    def __post_init__(self) -> None:
        if self.backbone not in ("resnet50", "resnet18"):
            raise ValueError(f"unknown backbone {self.backbone!r} (resnet50 or resnet18)")
        if not self.spacing_mm > 0 or self.max_size < 64:
            raise ValueError("spacing_mm must be positive and max_size at least 64 pixels")
        if len(self.anchor_sizes_mm) != 5 or not self.aspect_ratios:
            raise ValueError("anchor_sizes_mm needs one size per FPN level (5)")
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ValueError("score_threshold and nms_iou must lie in [0, 1]")
        if not 0.0 <= self.box_margin <= 1.0:
            raise ValueError("box_margin must lie in [0, 1]")
        if not self.keypoint_head_channels or min(self.keypoint_head_channels) < 1:
            raise ValueError("keypoint_head_channels needs at least one positive width")

    @classmethod
    def cpu(cls, **overrides: Any) -> KRCNNConfig:
        """Return the light configuration for CPUs (a few cores).

        ResNet-18 with a 128-channel FPN, 1.2 mm per pixel (a 43 cm image is 358 pixels
        tall; a lumbar body about 25 × 30 pixels), longer side at most 512, a quarter of the
        proposals, and a keypoint head of four 128-channel convolutions (about 30 times
        cheaper than torchvision's). A training step of two 512 × 384 phantoms takes about
        1.2 CPU-seconds (one thread) against 2.3 with a 256-channel FPN.

        Parameters
        ----------
        **overrides
            Fields to change.

        Returns
        -------
        KRCNNConfig
            The configuration.
        """
        light: dict[str, Any] = {
            "backbone": "resnet18",
            "spacing_mm": 1.2,
            "max_size": 512,
            "rpn_pre_nms_top_n_train": 500,
            "rpn_post_nms_top_n_train": 500,
            "rpn_pre_nms_top_n_test": 250,
            "rpn_post_nms_top_n_test": 250,
            "box_batch_size_per_image": 128,
            "keypoint_head_channels": (128,) * 4,
            "fpn_channels": 128,
        }
        return cls(**(light | overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for the checkpoint and ``weights_only`` loading)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> KRCNNConfig:
        """Rebuild from `to_dict`'s values (unknown keys are an error).

        Parameters
        ----------
        values : mapping
            Field values.

        Returns
        -------
        KRCNNConfig
            The configuration.

        Raises
        ------
        ValueError
            For an unknown field or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown Keypoint R-CNN config fields: {sorted(unknown)}")
        clean: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()
        }
        return cls(**clean)


class _FixedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's input transform without its resizing: the input is already at scale."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def build_keypointrcnn(config: KRCNNConfig) -> nn.Module:
    """Build an untrained Keypoint R-CNN for six keypoints and three classes.

    Parameters
    ----------
    config : KRCNNConfig
        Architecture and input scale.

    Returns
    -------
    torch.nn.Module
        A ``torchvision.models.detection.KeypointRCNN`` whose transform normalises nothing
        (inputs are z-scored by `model_input`) and resizes nothing.
    """
    sizes = tuple((max(4, round(mm / config.spacing_mm)),) for mm in config.anchor_sizes_mm)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(config.aspect_ratios,) * len(sizes))
    kwargs: dict[str, Any] = {
        "min_size": config.max_size,
        "max_size": config.max_size,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "rpn_anchor_generator": anchors,
        "rpn_pre_nms_top_n_train": config.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": config.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": config.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": config.rpn_post_nms_top_n_test,
        "box_batch_size_per_image": config.box_batch_size_per_image,
        "box_detections_per_img": config.detections_per_img,
        "box_nms_thresh": config.nms_iou,
        "box_score_thresh": min(0.05, config.score_threshold),
    }
    model: Any  # torchvision's KeypointRCNN (untyped)
    if config.backbone == "resnet50" and config.fpn_channels == TORCHVISION_FPN_CHANNELS:
        model = keypointrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_keypoints=NUM_KEYPOINTS,
            num_classes=3,
            **kwargs,
        )
    else:
        body = getattr(torchvision.models, config.backbone)(weights=None, norm_layer=nn.BatchNorm2d)
        widths = [64, 128, 256, 512] if config.backbone == "resnet18" else [256, 512, 1024, 2048]
        backbone = BackboneWithFPN(
            body,
            return_layers={f"layer{i + 1}": str(i) for i in range(4)},
            in_channels_list=widths,
            out_channels=config.fpn_channels,
        )
        model = KeypointRCNN(backbone, num_classes=3, num_keypoints=NUM_KEYPOINTS, **kwargs)
    if config.keypoint_head_channels != TORCHVISION_KEYPOINT_HEAD:
        channels = list(config.keypoint_head_channels)
        model.roi_heads.keypoint_head = KeypointRCNNHeads(model.backbone.out_channels, channels)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(channels[-1], NUM_KEYPOINTS)
    model.transform = _FixedScaleTransform(
        config.max_size, config.max_size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    )
    return model


def image_spacing(
    shape: tuple[int, ...], spacing_mm: tuple[float, float] | None
) -> tuple[float, float]:
    """Return the spacing that resamples an image: its own, or the nominal one.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, columns)``.
    spacing_mm : tuple of float, optional
        ``(row_mm, column_mm)``.

    Returns
    -------
    tuple of float
        ``spacing_mm``, or ``NOMINAL_FIELD_OF_VIEW_MM / rows`` twice when it is None.
    """
    if spacing_mm is not None:
        row_mm, col_mm = float(spacing_mm[0]), float(spacing_mm[1])
        if row_mm > 0 and col_mm > 0 and math.isfinite(row_mm) and math.isfinite(col_mm):
            return row_mm, col_mm
        raise ValueError(f"pixel spacing must be positive and finite, got {spacing_mm}")
    nominal = NOMINAL_FIELD_OF_VIEW_MM / shape[0]
    return nominal, nominal


def model_size(
    shape: tuple[int, ...],
    spacing_mm: tuple[float, float] | None,
    config: KRCNNConfig,
    zoom: float = 1.0,
) -> tuple[int, int]:
    """Rows and columns of the image resampled to the model's spacing.

    Parameters
    ----------
    shape : tuple of int
        Original ``(rows, columns)``.
    spacing_mm : tuple of float, optional
        Original spacing (None: nominal, see `image_spacing`).
    config : KRCNNConfig
        Model spacing and size cap.
    zoom : float
        Extra magnification (scale augmentation while training; 1 at inference).

    Returns
    -------
    tuple of int
        ``(rows, columns)``, each at least 1, the longer at most ``config.max_size``.
    """
    row_mm, col_mm = image_spacing(shape, spacing_mm)
    rows = shape[0] * row_mm / config.spacing_mm * zoom
    cols = shape[1] * col_mm / config.spacing_mm * zoom
    cap = min(1.0, config.max_size / max(rows, cols))
    return max(1, round(rows * cap)), max(1, round(cols * cap))


def resample(display: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Resample a display image to ``size`` (bilinear, antialiased when shrinking), in [0, 1].

    Parameters
    ----------
    display : numpy.ndarray
        ``uint8`` ``(rows, columns)``.
    size : tuple of int
        Target ``(rows, columns)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` image of shape ``size``.
    """
    image = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32) / 255.0)
    if tuple(image.shape) == tuple(size):
        return image.numpy()
    out = F.interpolate(
        image[None, None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def rescale_points(
    points: npt.ArrayLike, from_shape: tuple[int, ...], to_shape: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    """Map ``(x, y)`` points between two samplings of the same image.

    Parameters
    ----------
    points : array-like
        ``(..., 2)`` points, pixel centres at integer coordinates.
    from_shape, to_shape : tuple of int
        ``(rows, columns)`` of the two images.

    Returns
    -------
    numpy.ndarray
        The points in ``to_shape``'s pixels (same convention).
    """
    p = np.asarray(points, dtype=np.float64)
    sx = to_shape[1] / from_shape[1]
    sy = to_shape[0] / from_shape[0]
    out = np.empty_like(p)
    out[..., 0] = (p[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (p[..., 1] + 0.5) * sy - 0.5
    return out


def model_input(image01: npt.NDArray[np.float32]) -> torch.Tensor:
    """Return the network's input: z-scored, three identical channels.

    Parameters
    ----------
    image01 : numpy.ndarray
        ``(rows, columns)`` float image (as `resample` returns).

    Returns
    -------
    torch.Tensor
        ``float32`` ``(3, rows, columns)``.
    """
    t = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))
    t = (t - t.mean()) / (t.std(correction=0) + 1e-3)
    return t[None].expand(3, -1, -1).contiguous()


def keypoint_boxes(keypoints: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Axis-aligned boxes ``(xmin, ymin, xmax, ymax)`` of ``(n, 6, 2)`` keypoints."""
    return np.concatenate([keypoints.min(axis=1), keypoints.max(axis=1)], axis=1)


def make_checkpoint(
    model: nn.Module, config: KRCNNConfig, training: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the checkpoint dictionary (tensors, strings, numbers: ``weights_only`` loadable).

    Parameters
    ----------
    model : torch.nn.Module
        A model from `build_keypointrcnn` with ``config``.
    config : KRCNNConfig
        Its configuration.
    training : mapping, optional
        Training metadata (seed, iterations, records, seconds...): plain values only.

    Returns
    -------
    dict
        ``{"arch", "version", "config", "state_dict", "training"}``; save with `torch.save`.
    """
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {
        "arch": ARCH,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "training": dict(training or {}),
    }


@dataclass
class KeypointRCNNModel:
    """A trained Keypoint R-CNN ready for inference (`KeypointModel` protocol).

    Parameters
    ----------
    network : torch.nn.Module
        The model from `build_keypointrcnn`, weights loaded; put in eval mode here.
    config : KRCNNConfig
        Its configuration.
    training : dict
        The checkpoint's training metadata.
    device : torch.device
        Where it runs.
    """

    network: nn.Module
    config: KRCNNConfig
    training: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.network.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: Path, device: str | torch.device = "cpu") -> KeypointRCNNModel:
        """Load a checkpoint written from `make_checkpoint` (``torch.load(weights_only=True)``).

        Parameters
        ----------
        path : pathlib.Path
            The ``.pt`` file.
        device : str or torch.device
            ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

        Returns
        -------
        KeypointRCNNModel
            The model.

        Raises
        ------
        WeightsError
            When the file is unreadable, not a Keypoint R-CNN checkpoint of this version, or
            its weights do not fit its configuration.
        """
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # file, zip and unpickling errors
            raise WeightsError(f"cannot read Keypoint R-CNN checkpoint {path}: {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
            raise WeightsError(f"{path} is not a Keypoint R-CNN checkpoint (arch {ARCH!r})")
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise WeightsError(
                f"{path}: checkpoint version {ckpt.get('version')!r}, "
                f"this code reads {CHECKPOINT_VERSION}"
            )
        try:
            config = KRCNNConfig.from_dict(ckpt["config"])
            network = build_keypointrcnn(config)
            network.load_state_dict(ckpt["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path}: weights do not fit their configuration: {exc}") from exc
        return cls(network, config, dict(ckpt.get("training", {})), dev)

    @property
    def name(self) -> str:
        """Algorithm name and checkpoint version, e.g. ``"keypointrcnn-resnet50-fpn 1"``."""
        return f"{ARCH}-{self.config.backbone}-fpn {CHECKPOINT_VERSION}"

    def predict(
        self, image: npt.NDArray[np.uint8], spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        """Detect vertebral bodies and the sacrum on one lateral image.

        Parameters
        ----------
        image : numpy.ndarray
            ``uint8`` ``(rows, columns)`` display image (bone bright).
        spacing_mm : tuple of float, optional
            ``(row_mm, column_mm)``; None: the nominal spacing (module docstring).

        Returns
        -------
        list of DetectedObject
            Keypoints in original pixels, scores at least ``config.score_threshold``, one
            object per place, best score first.
        """
        if image.ndim != 2:
            raise ValueError(f"expected a (rows, columns) image, got shape {image.shape}")
        size = model_size(image.shape, spacing_mm, self.config)
        tensor = model_input(resample(image, size)).to(self.device)
        with torch.inference_mode():
            out = self.network([tensor])[0]
        scores = out["scores"].float().cpu()
        keep = scores >= self.config.score_threshold
        if not bool(keep.any()):
            return []
        labels = out["labels"].cpu()[keep]
        scores = scores[keep]
        # torchvision's keypoints are continuous (pixel centre at +0.5): back to ours.
        points = out["keypoints"].float().cpu()[keep][:, :, :2].double().numpy() - 0.5
        boxes = torch.from_numpy(keypoint_boxes(points))
        order = torchvision.ops.nms(boxes, scores.double(), self.config.nms_iou).tolist()
        points = rescale_points(points, size, image.shape)
        return [
            DetectedObject(
                kind=LABELS[int(labels[i])], score=float(scores[i]), keypoints=points[i].copy()
            )
            for i in order
            if int(labels[i]) in LABELS
        ]

"""Detector models: building one from a config, and running one on preprocessed images.

Inference skips MMDetection's test pipeline: images arrive already resized by our preprocessing
(``method.md`` section 3), so each becomes a ``DetDataSample`` whose ``img_shape`` and
``ori_shape`` are the resized shape and whose ``scale_factor`` is 1; the model's
``data_preprocessor`` normalises with the config's mean/std and pads the batch (to a multiple of
32), and boxes go back to original pixels through each image's ``ResizeTransform``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from spinexr.pipeline.detector.backend import build_model, mmdetection
from spinexr.pipeline.detector.checkpoint import load_checkpoint
from spinexr.pipeline.detector.config import (
    ConfigSource,
    check_config,
    config_class_names,
    load_config,
)
from spinexr.pipeline.detector.detections import Detections
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.geometry import ResizeTransform

logger = logging.getLogger(__name__)


def build_detector_model(
    config: ConfigSource,
    overrides: Mapping[str, Any] | None = None,
    *,
    init_weights: bool = True,
) -> nn.Module:
    """Build a detector from a config, initialised by its ``init_cfg`` (random, no download).

    For training: a config may set a local pretrained file in ``model.backbone.init_cfg``,
    which ``init_weights`` then loads. The model is in training mode on the CPU.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config (see :func:`~spinexr.pipeline.detector.config.load_config`).
    overrides : mapping, optional
        Dotted keys to set, as in ``load_config``.
    init_weights : bool
        Apply the config's weight initialisation (mmengine's ``init_weights``).

    Returns
    -------
    torch.nn.Module
        An mmdet detector (an mmengine ``BaseModel``).

    Raises
    ------
    ValueError
        If the config fails :func:`~spinexr.pipeline.detector.config.check_config`.
    """
    cfg = load_config(config, overrides)
    check_config(cfg)
    return build_model(cfg, init_weights)


class Detector:
    """An MMDetection detector that returns boxes in original image pixels.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The model's config: normally the resolved config saved beside the checkpoint, or one
        of ours (:func:`detector_config_path`). It must pass :func:`check_config`.
    checkpoint : pathlib.Path, optional
        Local weights (see :func:`load_checkpoint`). ``None`` gives a randomly initialised
        model: for tests only.
    device : str
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (the GPU when there is
        one). Asking for a GPU where there is none is an error, not a fallback.
    max_detections : int
        Keep at most this many boxes per image, highest scores first (after the config's own
        ``test_cfg`` limit, 100 in ours).
    min_score : float
        Drop boxes scoring below this (default 0: keep what the model's ``test_cfg`` keeps;
        Sparse R-CNN has no score threshold of its own, Faster R-CNN and RetinaNet 0.05).
    batch_size : int
        Images per forward pass in :meth:`predict`.
    overrides : mapping, optional
        Dotted config keys to set, as in :func:`load_config`.
    weights_only : bool
        Passed to :func:`load_checkpoint`.

    Notes
    -----
    Images go straight to the model's ``data_preprocessor``: the config's ``mean``/``std``
    and ``bgr_to_rgb`` apply as if the array had been loaded by MMDetection (which loads BGR).
    Our inputs are grey replicated to three channels, so the channel order has no effect;
    training must feed the same arrays.
    """

    def __init__(
        self,
        config: ConfigSource,
        checkpoint: Path | None = None,
        device: str = "cpu",
        max_detections: int = 100,
        *,
        min_score: float = 0.0,
        batch_size: int = 2,
        overrides: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> None:
        if max_detections < 1:
            raise ValueError(f"max_detections must be ≥ 1, got {max_detections}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.config = load_config(config, overrides)
        check_config(self.config)
        self.device = resolve_device(device)
        if self.device.type == "cuda" and mmdetection().mmcv_cuda == "not available":
            raise ValueError(
                "mmcv was built without its CUDA ops (RoIAlign, NMS): rebuild it with "
                "FORCE_CUDA=1 against a CUDA toolkit to run the detector on a GPU"
            )
        self.max_detections = max_detections
        self.min_score = float(min_score)
        self.batch_size = batch_size
        if checkpoint is None:
            logger.warning("detector has random weights (no checkpoint): for tests only")
            self.model = build_model(self.config, init_weights=True)
            self.meta: dict[str, Any] = {}
        else:
            # Weights come from the checkpoint: init_cfg (maybe a pretrained file from the
            # training machine) is not applied.
            self.model = build_model(self.config, init_weights=False)
            self.meta = load_checkpoint(self.model, checkpoint, weights_only=weights_only)
            logger.info("detector weights loaded from %s", checkpoint)
        self.model.to(self.device)
        self.model.eval()

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in class-id order, from the config's ``metainfo``."""
        return config_class_names(self.config)

    def predict(
        self, images: Sequence[np.ndarray], transforms: Sequence[ResizeTransform]
    ) -> list[Detections]:
        """Detect lesions on preprocessed images.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            ``H×W×3`` uint8 detector inputs, already resized by our preprocessing (shorter
            side 800, longer side ≤ 1333); sizes may differ within the sequence.
        transforms : sequence of ResizeTransform
            One per image; ``resized_size`` must equal the image's ``(H, W)``. Boxes are
            mapped back to ``original_size`` pixels with :meth:`ResizeTransform.to_original`.

        Returns
        -------
        list of Detections
            One per image, in order. Boxes that have no area inside the image once clipped
            are dropped.

        Raises
        ------
        ValueError
            If the lengths differ, an image is not ``H×W×3`` uint8, or a transform does not
            match its image.
        """
        if len(images) != len(transforms):
            raise ValueError(f"{len(images)} images but {len(transforms)} transforms")
        for i, (img, tf) in enumerate(zip(images, transforms, strict=True)):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"image {i}: expected H×W×3 uint8, got {img.shape} {img.dtype}")
            if tuple(img.shape[:2]) != tuple(tf.resized_size):
                raise ValueError(
                    f"image {i}: size {img.shape[:2]} differs from its transform's "
                    f"resized_size {tf.resized_size}"
                )
        out: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            batch = self._forward(images[start:stop])
            out.extend(
                self._to_detections(b, s, lab, tf)
                for (b, s, lab), tf in zip(batch, transforms[start:stop], strict=True)
            )
        return out

    def _forward(
        self, images: Sequence[np.ndarray]
    ) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
        """Run one batch; return (boxes in resized pixels, scores, labels) per image."""
        mm = mmdetection()
        inputs = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1) for img in images]
        samples = []
        for img in images:
            shape = (int(img.shape[0]), int(img.shape[1]))
            samples.append(
                mm.DetDataSample(
                    metainfo={"img_shape": shape, "ori_shape": shape, "scale_factor": (1.0, 1.0)}
                )
            )
        with torch.inference_mode():
            results = self.model.test_step({"inputs": inputs, "data_samples": samples})  # type: ignore[operator]
        out = []
        for r in results:
            pred = r.pred_instances
            boxes = mm.get_box_tensor(pred.bboxes).float().cpu().numpy().reshape(-1, 4)
            scores = pred.scores.float().cpu().numpy().reshape(-1)
            labels = pred.labels.long().cpu().numpy().reshape(-1)
            out.append((boxes, scores, labels))
        return out

    def _to_detections(
        self,
        boxes: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        transform: ResizeTransform,
    ) -> Detections:
        original = transform.to_original(boxes).astype(np.float32)
        keep = (
            (scores >= self.min_score)
            & (original[:, 2] > original[:, 0])
            & (original[:, 3] > original[:, 1])
        )
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-scores[idx], kind="stable")][: self.max_detections]
        if len(idx) < len(scores):
            logger.debug("kept %d of %d boxes", len(idx), len(scores))
        return Detections(
            boxes=np.ascontiguousarray(original[idx], dtype=np.float32),
            labels=labels[idx].astype(np.int64),
            scores=scores[idx].astype(np.float32),
        )

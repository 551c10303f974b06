"""Lesion detector: the one adapter between this project and MMDetection.

This is the only module that imports ``mmdet``, ``mmcv`` or ``mmengine`` (a test checks it), and
it imports them lazily, on the first call that needs them: ``Detections`` and
``detector_config_path`` cost no MMDetection import. Everything it hands out is our own type:
numpy arrays in original DICOM pixel coordinates, class ids that are ``LesionClass`` values.

Models are built from MMDetection configs (``training/configs/``, or the resolved config saved
beside a checkpoint) through MMDetection's registry; nothing here downloads anything: a config
that names a URL anywhere is refused, and checkpoints are read from local files only.

Inference skips MMDetection's test pipeline: images arrive already resized by our preprocessing
(``method.md`` section 3), so each becomes a ``DetDataSample`` whose ``img_shape`` and
``ori_shape`` are the resized shape and whose ``scale_factor`` is 1; the model's
``data_preprocessor`` normalises with the config's mean/std and pads the batch (to a multiple of
32), and boxes go back to original pixels through each image's ``ResizeTransform``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.resources
import logging
import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.geometry import ResizeTransform

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "spinexr-detector/1"
"""Value of ``meta["format"]`` in checkpoints written by :func:`save_checkpoint`."""

DEFAULT_CONFIG = "sparse-rcnn_r50_fpn_spinexr"
"""The detector the method prescribes (Sparse R-CNN R50-FPN, 100 proposals)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")

ConfigSource = Path | str | Mapping[str, Any]
"""A config file (path), or an already loaded config (a mapping or an mmengine ``Config``)."""


# --------------------------------------------------------------------------------------------
# Output type


def _frozen_copy(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    c = np.array(a, copy=True)
    c.setflags(write=False)
    return c


@dataclass(frozen=True)
class Detections:
    """Boxes found on one image, validated when constructed, held as read-only copies.

    Attributes
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` float32 (xmin, ymin, xmax, ymax) in original image pixels (the DICOM grid,
        origin at the top-left corner of the top-left pixel), each inside the image.
    labels : numpy.ndarray
        ``(N,)`` int64 class ids (``LesionClass`` values).
    scores : numpy.ndarray
        ``(N,)`` float32 in [0, 1], sorted in descending order.
    """

    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        b, lab, s = self.boxes, self.labels, self.scores
        if b.dtype != np.float32 or b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) float32, got {b.shape} {b.dtype}")
        n = b.shape[0]
        if lab.dtype != np.int64 or lab.shape != (n,):
            raise ValueError(f"labels must be ({n},) int64, got {lab.shape} {lab.dtype}")
        if s.dtype != np.float32 or s.shape != (n,):
            raise ValueError(f"scores must be ({n},) float32, got {s.shape} {s.dtype}")
        if n and (lab.min() < 0 or lab.max() >= len(CLASS_NAMES)):
            raise ValueError(f"labels must be class ids 0..{len(CLASS_NAMES) - 1}")
        if not (np.isfinite(b).all() and np.isfinite(s).all()):
            raise ValueError("boxes and scores must be finite")
        if n and (s.min() < 0 or s.max() > 1):
            raise ValueError("scores must be in [0, 1]")
        if n > 1 and bool(np.any(np.diff(s) > 0)):
            raise ValueError("scores must be sorted in descending order")
        for name in ("boxes", "labels", "scores"):
            object.__setattr__(self, name, _frozen_copy(getattr(self, name)))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """Return the result of an image with no detection (arrays of length 0)."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            labels=np.zeros((0,), np.int64),
            scores=np.zeros((0,), np.float32),
        )


# --------------------------------------------------------------------------------------------
# MMDetection, imported on first use


@functools.cache
def _mm() -> SimpleNamespace:
    """Import mmengine/mmdet once, register mmdet's modules, and return what we use."""
    with warnings.catch_warnings():
        # mmengine and mmcv import pkg_resources, which setuptools deprecates loudly.
        warnings.filterwarnings(
            "ignore", message="pkg_resources is deprecated", category=UserWarning
        )
        import mmdet
        from mmcv.ops import get_compiling_cuda_version
        from mmdet.registry import MODELS
        from mmdet.structures import DetDataSample
        from mmdet.structures.bbox import get_box_tensor
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        from mmengine.logging import MMLogger
        from mmengine.registry import DefaultScope

        # Imports every mmdet module so that its classes are in the registries; the default
        # scope is set only around builds (see _mmdet_scope), not for the whole process.
        register_all_modules(init_default_scope=False)
    return SimpleNamespace(
        mmdet_version=mmdet.__version__,
        MODELS=MODELS,
        DetDataSample=DetDataSample,
        get_box_tensor=get_box_tensor,
        Config=Config,
        MMLogger=MMLogger,
        DefaultScope=DefaultScope,
        mmcv_cuda=get_compiling_cuda_version(),  # "not available" in a CPU-only build
    )


@contextlib.contextmanager
def _mmdet_scope() -> Iterator[None]:
    """Build inside mmdet's registry scope, with mmengine's INFO chatter silenced.

    mmengine's ``BaseModel`` builds its ``data_preprocessor`` from mmengine's root registry,
    which finds ``DetDataPreprocessor`` only while the default scope is ``mmdet``; and
    ``init_weights`` logs one INFO block per parameter to mmengine's own logger (which is not
    part of the :mod:`logging` hierarchy, so an application's logging setup does not reach it).
    """
    mm = _mm()
    mm_logger = mm.MMLogger.get_current_instance()
    level = mm_logger.level
    mm_logger.setLevel(logging.WARNING)
    try:
        with mm.DefaultScope.overwrite_default_scope("mmdet"):
            yield
    finally:
        mm_logger.setLevel(level)


# --------------------------------------------------------------------------------------------
# Configs


def config_dir() -> Path:
    """Return the folder of our MMDetection configs (``training/configs``)."""
    return Path(str(importlib.resources.files("spinexr.training").joinpath("configs")))


def available_configs() -> list[str]:
    """Return the names of the configs in :func:`config_dir` (file stems), sorted."""
    return sorted(p.stem for p in config_dir().glob("*.py"))


def detector_config_path(name: str = DEFAULT_CONFIG) -> Path:
    """Resolve one of our config names to its file.

    Parameters
    ----------
    name : str
        A file stem in ``training/configs``, e.g. ``"sparse-rcnn_r50_fpn_spinexr"`` (a trailing
        ``.py`` is accepted).

    Returns
    -------
    pathlib.Path
        The config file.

    Raises
    ------
    FileNotFoundError
        If there is no such config (the message lists the available ones).
    """
    stem = name.removesuffix(".py")
    path = config_dir() / f"{stem}.py"
    if "/" in stem or not path.is_file():
        raise FileNotFoundError(
            f"no detector config {name!r}; available: {', '.join(available_configs())}"
        )
    return path


def load_config(config: ConfigSource, overrides: Mapping[str, Any] | None = None) -> Any:
    """Load and resolve an MMDetection config.

    Parameters
    ----------
    config : pathlib.Path, str or mapping
        A config file (``_base_`` inheritance, ``mmdet::`` package scope and all), a plain
        mapping, or an mmengine ``Config``. Strings are file paths; use
        :func:`detector_config_path` for our config names.
    overrides : mapping, optional
        Dotted keys to set after loading, as mmdet's ``--cfg-options``, e.g.
        ``{"model.test_cfg.rcnn.score_thr": 0.3}``.

    Returns
    -------
    mmengine.config.Config
        A new, fully resolved config (the input is not modified).

    Raises
    ------
    FileNotFoundError
        If a config file does not exist.
    """
    mm = _mm()
    if isinstance(config, mm.Config):
        cfg = mm.Config(copy.deepcopy(config.to_dict()), filename=config.filename)
    elif isinstance(config, Mapping):
        cfg = mm.Config(copy.deepcopy(dict(config)))
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"detector config {path} does not exist")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources", category=UserWarning)
            cfg = mm.Config.fromfile(str(path))
    if overrides:
        cfg.merge_from_dict(dict(overrides))
    return cfg


def dump_config(config: ConfigSource, path: Path) -> Path:
    """Write a config, fully resolved, as a self-contained Python config file.

    The file has no ``_base_``: it loads with :func:`load_config` on a machine that has
    MMDetection but not our ``training/configs``. Written atomically.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.
    path : pathlib.Path
        Destination (``.py``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    cfg = load_config(config)
    _atomic_write(path, cfg.pretty_text.encode())
    return path


def find_urls(config: ConfigSource) -> list[str]:
    """Return the dotted keys of every string value in a config that contains ``://``.

    Such values (``torchvision://resnet50`` in an ``init_cfg``, an ``https://`` ``load_from``)
    make MMDetection download at build or training time; our configs have none.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    list of str
        Keys such as ``model.backbone.init_cfg.checkpoint`` (list items as ``[i]``).
    """
    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and "://" in node:
            found.append(key)

    walk(load_config(config).to_dict(), "")
    return found


def config_class_names(config: ConfigSource) -> tuple[str, ...]:
    """Return the class names a config declares in ``metainfo.classes``.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    tuple of str
        The names, empty if the config declares none.
    """
    meta = load_config(config).get("metainfo") or {}
    return tuple(meta.get("classes") or ())


def config_num_classes(config: ConfigSource) -> set[int]:
    """Return every ``num_classes`` value under the config's ``model`` (one per head).

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Returns
    -------
    set of int
        The distinct values; a consistent config has exactly one.
    """
    values: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "num_classes":
                    values.add(int(v))
                walk(v)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v)

    walk(load_config(config).to_dict().get("model", {}))
    return values


def check_config(config: ConfigSource) -> None:
    """Refuse a config that could download, or whose classes are not ours.

    Parameters
    ----------
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config.

    Raises
    ------
    ValueError
        If any value contains a URL, if ``metainfo.classes`` differs from ``CLASS_NAMES``, or
        if a head's ``num_classes`` differs from their number.
    """
    cfg = load_config(config)
    urls = find_urls(cfg)
    if urls:
        raise ValueError(f"detector config names URLs (nothing may be downloaded): {urls}")
    names = config_class_names(cfg)
    if names != CLASS_NAMES:
        raise ValueError(f"config metainfo.classes {names} differ from {CLASS_NAMES}")
    counts = config_num_classes(cfg)
    if counts != {len(CLASS_NAMES)}:
        raise ValueError(f"config heads have num_classes {sorted(counts)}, not {len(CLASS_NAMES)}")


# --------------------------------------------------------------------------------------------
# Models and checkpoints


def _build(cfg: Any, init_weights: bool) -> nn.Module:
    with _mmdet_scope():
        model: nn.Module = _mm().MODELS.build(cfg.model)
        if init_weights:
            # Needed even for a throw-away model: with PyTorch's default initialisation the
            # deep heads overflow and Sparse R-CNN hands RoIAlign boxes of NaN size.
            model.init_weights()  # type: ignore[operator]
    return model


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
        The config (see :func:`load_config`).
    overrides : mapping, optional
        Dotted keys to set, as in :func:`load_config`.
    init_weights : bool
        Apply the config's weight initialisation (mmengine's ``init_weights``).

    Returns
    -------
    torch.nn.Module
        An mmdet detector (an mmengine ``BaseModel``).

    Raises
    ------
    ValueError
        If the config fails :func:`check_config`.
    """
    cfg = load_config(config, overrides)
    check_config(cfg)
    return _build(cfg, init_weights)


def save_checkpoint(
    model: nn.Module, path: Path, config: ConfigSource, config_path: Path | None = None
) -> tuple[Path, Path]:
    """Write a model's weights and, beside them, its resolved config.

    The checkpoint is mmengine's layout reduced to what inference needs,
    ``{"state_dict": ..., "meta": {"format", "cfg", "dataset_meta", "mmdet_version"}}``, and
    holds only tensors, strings and numbers, so it loads with ``torch.load(weights_only=True)``
    (and with mmengine's own ``load_checkpoint``). Both files are written atomically.

    Parameters
    ----------
    model : torch.nn.Module
        The detector (e.g. from :func:`build_detector_model`, or ``Detector.model``).
    path : pathlib.Path
        Checkpoint file, conventionally ``*.pth``.
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config the model was built from.
    config_path : pathlib.Path, optional
        Where to write the resolved config; default ``path`` with suffix ``.py``.

    Returns
    -------
    tuple of pathlib.Path
        (checkpoint, config) paths.
    """
    cfg = load_config(config)
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    checkpoint = {
        "state_dict": state,
        "meta": {
            "format": CHECKPOINT_FORMAT,
            "cfg": cfg.pretty_text,
            "dataset_meta": {"classes": list(config_class_names(cfg))},
            "mmdet_version": _mm().mmdet_version,
        },
    }
    config_path = path.with_suffix(".py") if config_path is None else config_path
    if config_path == path:
        raise ValueError(f"checkpoint and config would both be written to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = Path(f.name)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dump_config(cfg, config_path)
    return path, config_path


def load_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Load weights from a local checkpoint file into a model, strictly.

    Accepts our format (:func:`save_checkpoint`), mmengine ``Runner`` checkpoints and bare
    state dicts; a ``module.`` prefix (from DistributedDataParallel) is removed.

    Parameters
    ----------
    model : torch.nn.Module
        The detector, built from the checkpoint's config.
    path : pathlib.Path
        A local file; URLs are not accepted.
    map_location : str or torch.device
        As in :func:`torch.load`.
    weights_only : bool
        Unpickle only tensors and plain containers (torch's safe loader, torch ≥ 2.6's
        default). Our checkpoints need nothing more. An mmengine ``Runner`` checkpoint also
        holds optimizer and logging objects and needs ``False``: pass it only for a file whose
        SHA-256 you have checked (the bundle manifest), as unpickling runs code — or convert
        it once with :func:`export_checkpoint`.

    Returns
    -------
    dict
        The checkpoint's ``meta`` (empty for a bare state dict).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a weights-only checkpoint (with ``weights_only``), has no state
        dict, or its keys or shapes do not match the model.
    """
    checkpoint = _read_checkpoint(path, map_location, weights_only)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: no state dict of tensors in the checkpoint")
    state = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the model's config: {exc}") from exc
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def export_checkpoint(src: Path, dst: Path, config: ConfigSource) -> tuple[Path, Path]:
    """Convert a trusted training checkpoint (mmengine ``Runner``) to our weights-only format.

    Unpickles ``src`` fully (``weights_only=False``): use it only on checkpoints this project's
    training wrote. The result loads with ``weights_only=True`` and is what a bundle ships.

    Parameters
    ----------
    src : pathlib.Path
        The training checkpoint.
    dst : pathlib.Path
        The checkpoint to write (its resolved config goes beside it, as in
        :func:`save_checkpoint`).
    config : pathlib.Path, str, mapping or mmengine ``Config``
        The config the checkpoint was trained with.

    Returns
    -------
    tuple of pathlib.Path
        (checkpoint, config) paths written.
    """
    cfg = load_config(config)
    model = _build(cfg, init_weights=False)
    load_checkpoint(model, src, weights_only=False)
    return save_checkpoint(model, dst, cfg)


def _read_checkpoint(
    path: Path, map_location: str | torch.device, weights_only: bool
) -> dict[str, Any]:
    if _URL.match(str(path)):  # Path() turns "https://" into "https:/"
        raise ValueError(f"checkpoints are read from local files only, not {path}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} is not a weights-only checkpoint (it pickles objects other than tensors "
            "and plain containers); convert a trusted training checkpoint with "
            "export_checkpoint()"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: a checkpoint must be a dict, got {type(checkpoint).__name__}")
    return checkpoint


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = Path(f.name)
        f.write(data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Inference


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
        if self.device.type == "cuda" and _mm().mmcv_cuda == "not available":
            raise ValueError(
                "mmcv was built without its CUDA ops (RoIAlign, NMS): rebuild it with "
                "FORCE_CUDA=1 against a CUDA toolkit to run the detector on a GPU"
            )
        self.max_detections = max_detections
        self.min_score = float(min_score)
        self.batch_size = batch_size
        if checkpoint is None:
            logger.warning("detector has random weights (no checkpoint): for tests only")
            self.model = _build(self.config, init_weights=True)
            self.meta: dict[str, Any] = {}
        else:
            # Weights come from the checkpoint: init_cfg (maybe a pretrained file from the
            # training machine) is not applied.
            self.model = _build(self.config, init_weights=False)
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
        mm = _mm()
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

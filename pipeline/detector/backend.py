"""MMDetection, imported on first use: the one module of ours that imports mm* for serving.

``mmdet``, ``mmcv`` and ``mmengine`` are imported by :func:`mmdetection`, once, on the first
call that needs them, so that importing :mod:`spinexr.pipeline.detector` costs no MMDetection
import (a test checks both).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from torch import nn


@functools.cache
def mmdetection() -> SimpleNamespace:
    """Import mmengine/mmdet once, register mmdet's modules, and return what we use.

    Returns
    -------
    types.SimpleNamespace
        ``mmdet_version``, ``MODELS``, ``DetDataSample``, ``get_box_tensor``, ``Config``,
        ``MMLogger``, ``DefaultScope`` and ``mmcv_cuda`` (``"not available"`` in a CPU-only
        build of mmcv).
    """
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
        # scope is set only around builds (see mmdet_scope), not for the whole process.
        register_all_modules(init_default_scope=False)
    return SimpleNamespace(
        mmdet_version=mmdet.__version__,
        MODELS=MODELS,
        DetDataSample=DetDataSample,
        get_box_tensor=get_box_tensor,
        Config=Config,
        MMLogger=MMLogger,
        DefaultScope=DefaultScope,
        mmcv_cuda=get_compiling_cuda_version(),
    )


@contextlib.contextmanager
def mmdet_scope() -> Iterator[None]:
    """Build inside mmdet's registry scope, with mmengine's INFO chatter silenced.

    mmengine's ``BaseModel`` builds its ``data_preprocessor`` from mmengine's root registry,
    which finds ``DetDataPreprocessor`` only while the default scope is ``mmdet``; and
    ``init_weights`` logs one INFO block per parameter to mmengine's own logger (which is not
    part of the :mod:`logging` hierarchy, so an application's logging setup does not reach it).
    """
    mm = mmdetection()
    mm_logger = mm.MMLogger.get_current_instance()
    level = mm_logger.level
    mm_logger.setLevel(logging.WARNING)
    try:
        with mm.DefaultScope.overwrite_default_scope("mmdet"):
            yield
    finally:
        mm_logger.setLevel(level)


def build_model(cfg: Any, init_weights: bool) -> nn.Module:
    """Build the model of a resolved, checked config through mmdet's registry.

    Parameters
    ----------
    cfg : mmengine.config.Config
        A resolved config that passed ``check_config``.
    init_weights : bool
        Apply the config's weight initialisation (mmengine's ``init_weights``).

    Returns
    -------
    torch.nn.Module
        An mmdet detector (an mmengine ``BaseModel``), in training mode on the CPU.
    """
    with mmdet_scope():
        model: nn.Module = mmdetection().MODELS.build(cfg.model)
        if init_weights:
            # Needed even for a throw-away model: with PyTorch's default initialisation the
            # deep heads overflow and Sparse R-CNN hands RoIAlign boxes of NaN size.
            model.init_weights()  # type: ignore[operator]
    return model

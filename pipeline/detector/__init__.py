"""Lesion detector: the one adapter between this project and MMDetection.

Everything it hands out is our own type: numpy arrays in original DICOM pixel coordinates,
class ids that are ``LesionClass`` values. Its modules, one concern each:

- :mod:`~spinexr.pipeline.detector.detections`: `Detections`, the result for one image;
- :mod:`~spinexr.pipeline.detector.config`: our configs by name (``configs/``), loading any
  config, refusing one that could download or has other classes;
- :mod:`~spinexr.pipeline.detector.checkpoint`: weights-only checkpoints with their resolved
  config beside them;
- :mod:`~spinexr.pipeline.detector.model`: building a model and running it (`Detector`);
- :mod:`~spinexr.pipeline.detector.backend`: the only module that imports ``mmdet``, ``mmcv``
  or ``mmengine`` (a test checks it), lazily, on the first call that needs them: importing
  this package, ``Detections`` and ``detector_config_path`` cost no MMDetection import.

Converting a training run's checkpoint is training's job
(``spinexr.training.detection.export``).
"""

from spinexr.pipeline.detector.checkpoint import (
    CHECKPOINT_FORMAT,
    dump_config,
    load_checkpoint,
    save_checkpoint,
)
from spinexr.pipeline.detector.config import (
    DEFAULT_CONFIG,
    ConfigSource,
    available_configs,
    check_config,
    config_class_names,
    config_dir,
    config_num_classes,
    detector_config_path,
    find_urls,
    load_config,
)
from spinexr.pipeline.detector.detections import Detections
from spinexr.pipeline.detector.model import Detector, build_detector_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_CONFIG",
    "ConfigSource",
    "Detections",
    "Detector",
    "available_configs",
    "build_detector_model",
    "check_config",
    "config_class_names",
    "config_dir",
    "config_num_classes",
    "detector_config_path",
    "dump_config",
    "find_urls",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]

"""Detector training through MMDetection's Runner (dataset, transforms, metric, config, CLI)."""

from spinexr.training.detection.config import DetectorTrainConfig, build_training_config
from spinexr.training.detection.train import DetectorTrainResult, train_detector, warm_cache

__all__ = [
    "DetectorTrainConfig",
    "DetectorTrainResult",
    "build_training_config",
    "train_detector",
    "warm_cache",
]

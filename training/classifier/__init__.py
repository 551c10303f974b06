"""Training of the image-level DenseNet classifier members (``method.md`` section 4).

`train_classifier` runs one member from a `ClassifierTrainConfig`; `predict_logits` gives a
model's logits on records through the serving pipeline's inference path (validation, test,
``evaluate``). The ``classifier`` click command lives in `spinexr.training.classifier.cli`.
"""

from spinexr.training.classifier.config import ClassifierTrainConfig, TrainingError
from spinexr.training.classifier.inputs import ClassifierInputs, predict_logits
from spinexr.training.classifier.train import (
    ClassifierTrainResult,
    TrainProgress,
    train_classifier,
)
from spinexr.training.classifier.weights import load_init_weights

__all__ = [
    "ClassifierInputs",
    "ClassifierTrainConfig",
    "ClassifierTrainResult",
    "TrainProgress",
    "TrainingError",
    "load_init_weights",
    "predict_logits",
    "train_classifier",
]

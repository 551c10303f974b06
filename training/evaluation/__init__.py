"""Evaluation of a bundle on a dataset split (the paper's Tables 3-5) and its building blocks."""

from spinexr.training.evaluation.evaluate import EvaluationResult, evaluate_bundle, render_markdown
from spinexr.training.evaluation.predict import ImagePrediction, predict_records

__all__ = [
    "EvaluationResult",
    "ImagePrediction",
    "evaluate_bundle",
    "predict_records",
    "render_markdown",
]

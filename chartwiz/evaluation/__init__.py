"""Scoring ChartWiz (or any image-text-to-text model) on a built dataset: the metrics, the scores by task and chart
type against blank and shuffled charts, the report and the comparison of runs."""

from .prediction import Prediction, predict_dataset
from .run import evaluate_model
from .scoring import read_predictions, score_predictions, score_run


__all__ = ["Prediction", "evaluate_model", "predict_dataset", "read_predictions", "score_predictions", "score_run"]

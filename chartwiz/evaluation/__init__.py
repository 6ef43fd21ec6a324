"""Scoring ChartWiz (or any image-text-to-text model) on a built dataset: the metrics, the scores by task and chart
type against blank and shuffled charts, the report and the comparison of runs."""

from .scoring import evaluate_model, predict_dataset, score_predictions, score_run


__all__ = ["evaluate_model", "predict_dataset", "score_predictions", "score_run"]

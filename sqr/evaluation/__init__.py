"""Evaluation: COCO box AP, the loop that runs a model over a dataset, stage-wise analysis."""

from sqr.evaluation.coco_evaluation import COCOEvaluator
from sqr.evaluation.evaluator import inference_on_dataset
from sqr.evaluation.stage_analysis import StageAnalyzer
from sqr.evaluation.stages import predict_stages, query_predictions, stage_predictions

__all__ = [
    "COCOEvaluator",
    "StageAnalyzer",
    "inference_on_dataset",
    "predict_stages",
    "query_predictions",
    "stage_predictions",
]

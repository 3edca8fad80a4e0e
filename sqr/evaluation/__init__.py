"""Evaluation: COCO box AP and the loop that runs a model over a dataset."""

from sqr.evaluation.coco_evaluation import COCOEvaluator
from sqr.evaluation.evaluator import inference_on_dataset

__all__ = ["COCOEvaluator", "inference_on_dataset"]

"""Evaluation: clean accuracy, worst-case-per-sample robustness, AutoAttack-style recipes and reports."""

from .accuracy import accuracy, predict_source
from .evaluate import evaluate, merge_reports, parse_shard
from .recipes import RECIPES, Stage, get_recipe

__all__ = ["accuracy", "predict_source", "evaluate", "merge_reports", "parse_shard", "RECIPES", "Stage", "get_recipe"]

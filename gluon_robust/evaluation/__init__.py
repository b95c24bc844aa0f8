"""Evaluation: clean accuracy and worst-case-per-sample robustness."""

from .accuracy import accuracy, predict_source

__all__ = ["accuracy", "predict_source"]

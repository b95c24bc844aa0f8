"""Training: plain supervised fitting of reference models (adversarial methods build on it)."""

from .standard import TrainResult, fit_classifier, save_trained, train_zoo_model

__all__ = ["TrainResult", "fit_classifier", "save_trained", "train_zoo_model"]

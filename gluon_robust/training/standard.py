"""Plain supervised training of a zoo network on pixel-space data.

Used to produce the bundled reference model (``scripts/train.py``). The
network is trained inside a :class:`~gluon_robust.model.Classifier`, so the
normalisation it learns with is exactly the one stored in its config.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from tqdm import tqdm

from ..config import ModelConfig, save_config
from ..data import DataSource
from ..evaluation.accuracy import accuracy
from ..io import atomic_save
from ..model import Classifier, check_trainable, trainable_classifier
from ..validation import check_int, check_positive
from .adversarial import TrainingMethod, cross_entropy

__all__ = ["Standard", "TrainResult", "fit_classifier", "save_trained", "train_zoo_model"]

logger = logging.getLogger(__name__)


class Standard(TrainingMethod):
    """Natural training as a training method: the cross-entropy of ``softmax(f(x) / T)``.

    With ``temperature > 1`` this trains the teacher of defensive
    distillation (Papernot et al. 2016, see :class:`~gluon_robust.training.distillation.Distillation`).

    Parameters
    ----------
    temperature : float
        Softmax temperature ``T`` of the loss (default 1, plain training).
    seed : int
        Unused (the method is deterministic).
    """

    name = "standard"

    def __init__(self, *, temperature: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.temperature = check_positive("temperature", temperature)

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        logits = model(x)
        return cross_entropy(logits / self.temperature if self.temperature != 1.0 else logits, y)


@dataclass
class TrainResult:
    """Per-epoch metrics of a training run."""

    epochs: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> Optional[float]:
        """Validation accuracy after the last epoch, if a validation split was given."""
        return self.epochs[-1].get("val_accuracy") if self.epochs else None


def fit_classifier(
    model: Classifier,
    train: DataSource,
    *,
    val: Optional[DataSource] = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    wd: float = 1e-4,
    lr_decay_epochs: Sequence[int] = (),
    lr_decay: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model.net`` with cross-entropy on a data source.

    Parameters
    ----------
    model : Classifier
        A wrapper around an initialised, unfolded network; its normalisation
        is applied during training.
    train, val : DataSource
        Training data and an optional validation split (accuracy per epoch).
    epochs, batch_size : int
        Passes over ``train`` and samples per step.
    lr, wd : float
        Learning rate and weight decay.
    optimizer : str
        Any ``mxnet.optimizer`` name (``"adam"``, ``"sgd"``, ...).
    lr_decay_epochs : sequence of int
        Epochs after which the learning rate is multiplied by ``lr_decay``.
    seed : int
        Seeds shuffling and MXNet's generator, for reproducible runs.
    progress : bool
        Show a tqdm bar per epoch.

    Returns
    -------
    TrainResult
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    wd = check_positive("wd", wd, allow_zero=True)
    check_trainable(model)
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    params = model.net.collect_params()
    params.setattr("grad_req", "write")
    trainer = gluon.Trainer(params, optimizer, {"learning_rate": lr, "wd": wd})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x_all, y_all = train.arrays()
    result = TrainResult()
    start = time.perf_counter()
    for epoch in range(epochs):
        if epoch in lr_decay_epochs:
            trainer.set_learning_rate(trainer.learning_rate * lr_decay)
        order = rng.permutation(len(x_all))
        total_loss, seen = 0.0, 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for first in bar:
            idx = order[first : first + batch_size]
            x = mx.nd.array(x_all[idx], ctx=model.ctx)
            y = mx.nd.array(y_all[idx], ctx=model.ctx)
            with autograd.record(train_mode=True):
                loss = loss_fn(model(x), y)
            loss.backward()
            trainer.step(len(idx))
            total_loss += float(loss.sum().asscalar())
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        metrics = {"epoch": epoch + 1, "train_loss": total_loss / seen}
        if val is not None:
            metrics["val_accuracy"] = accuracy(model, val, batch_size=256)
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        result.epochs.append(metrics)
    result.seconds = time.perf_counter() - start
    params.setattr("grad_req", "null")
    return result


def save_trained(model: Classifier, config: ModelConfig, directory: str | Path, name: str) -> Path:
    """Save ``model.net``'s parameters and a config YAML pointing at them, both atomically.

    Returns the config path, ``directory/name.yaml`` (params at ``directory/name.params``).
    """
    directory = Path(directory)
    params_path = directory / f"{name}.params"
    atomic_save(params_path, model.net.save_parameters, suffix=".params")
    config_path = directory / f"{name}.yaml"
    save_config(replace(config, params=str(params_path.resolve())), config_path)
    return config_path


def train_zoo_model(
    model_name: str,
    data: str,
    *,
    save_dir: str | Path,
    name: str,
    classes: int = 10,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    wd: float = 1e-4,
    optimizer: str = "adam",
    lr_decay_epochs: Sequence[int] = (),
    ctx: Optional[mx.Context] = None,
    seed: int = 0,
) -> Tuple[Path, TrainResult]:
    """Train a freshly initialised zoo network on a data source and save params plus config.

    The data's ``train`` split is used for training and its ``test`` split for
    validation. Returns the config path and the metrics.
    """
    from ..data import load_data
    ctx = ctx or mx.cpu()
    train = load_data(data, split="train")
    val = load_data(data, split="test")
    input_size = train.sample_shape
    config = ModelConfig(model=model_name, classes=classes, mean=tuple(mean), std=tuple(std), input_size=input_size)
    model = trainable_classifier(model_name, classes=classes, mean=config.mean, std=config.std,
                                 input_size=input_size, ctx=ctx, seed=seed)
    result = fit_classifier(
        model, train, val=val, epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, optimizer=optimizer,
        lr_decay_epochs=lr_decay_epochs, seed=seed,
    )
    path = save_trained(model, config, save_dir, name)
    logger.info("saved %s (validation accuracy %.4f) in %.0f s", path, result.final_accuracy or float("nan"), result.seconds)
    return path, result

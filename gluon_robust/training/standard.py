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
from mxnet import gluon, nd

from ..config import ModelConfig, save_config
from ..data import DataSource
from ..evaluation.accuracy import accuracy
from ..io import atomic_save
from ..model import Classifier, trainable_classifier
from ..validation import check_positive
from .adversarial import TrainingMethod, cross_entropy
from .options import TrainingConfig
from .runner import Loop, LoopParts
from .setup import check_run, prepare

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


class _SequentialSchedule:
    """:func:`fit_classifier`'s schedule: one generator shuffles every epoch in turn, the learning rate is
    multiplied by ``decay`` at the start of each decay epoch, and MXNet is seeded once, before training."""

    def __init__(self, seed: int, decay_epochs: Sequence[int], decay: float) -> None:
        self.rng = np.random.RandomState(seed)
        self.decay_epochs, self.decay = decay_epochs, decay

    def order(self, epoch: int, n: int) -> np.ndarray:
        return self.rng.permutation(n)

    def lr(self, epoch: int, current: float) -> float:
        return current * self.decay if epoch in self.decay_epochs else current

    def seed_step(self, epoch: int, step: int, replay: int) -> None:
        """Nothing: the generator was seeded once."""


class _FitLoop(Loop):
    """The training loop with :func:`fit_classifier`'s epoch ends: the loss and the plain validation accuracy
    of the (unfolded) model, no checkpoints, and the loss left unchecked."""

    stop_on_divergence = False

    def _end_epoch(self, epoch: int, order: np.ndarray) -> None:
        state = self.state
        metrics: Dict[str, float] = {"epoch": epoch + 1, "train_loss": state.loss_sum / state.seen}
        if self.parts.val is not None:
            metrics["val_accuracy"] = accuracy(self.model, self.parts.val, batch_size=256)
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        self.run.epochs.append(metrics)
        state.loss_sum, state.seen = 0.0, 0

    def _interrupted(self, err: KeyboardInterrupt) -> None:
        """Nothing to save: the run has no checkpoints."""


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

    It runs the training loop of :func:`~gluon_robust.training.loop.train_adversarial`
    with the :class:`Standard` method, its own schedule (one generator
    shuffling every epoch, MXNet seeded once, the learning rate decayed in
    place) and its own epoch reports.

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
        Any ``mxnet.optimizer`` name (``"adam"``, ``"sgd"``, ...), with its default momentum.
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
    config = TrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, optimizer=optimizer, momentum=0.0,
                            seed=seed, progress=progress)
    method = Standard()
    check_run(model, method, train, None, config, None)
    mx.random.seed(seed)
    schedule = _SequentialSchedule(seed, lr_decay_epochs, lr_decay)
    start = time.perf_counter()
    setup = prepare(model, train, config, None)
    parts = LoopParts(val=val, ctx=None, curriculum=None, guard=None, on_step=None, on_epoch=None, validate=accuracy)
    run = _FitLoop(model, method, train, config, parts, setup, schedule).execute()
    result = TrainResult(epochs=run.epochs, seconds=time.perf_counter() - start)
    model.net.collect_params().setattr("grad_req", "null")
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

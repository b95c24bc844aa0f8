"""A binary adversarial-example detector: a small CNN trained on clean against attacked inputs.

Metzen, Genewein, Fischer & Bischoff (2017), "On Detecting Adversarial
Perturbations", ICLR, https://arxiv.org/abs/1702.04267; Gong, Wang & Ku
(2017), "Adversarial and Clean Data Are Not Twins",
https://arxiv.org/abs/1704.04960; Grosse, Manoharan, Papernot, Backes &
McDaniel (2017), "On the (Statistical) Detection of Adversarial Examples",
https://arxiv.org/abs/1702.06280.

The training set is the clean fitting data (label 0) and adversarial examples
crafted from it against the classifier with a given attack (label 1). The
detector is a separate input-space CNN (as Gong et al.); its score is the
detector's logit, exactly differentiable. Strided convolutions replace max
pooling so that input gradients are exact in both recording modes.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..attacks.base import Attack
from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import Detector, move_to

__all__ = ["BinaryDetector", "BinaryCNN"]

logger = logging.getLogger(__name__)


class BinaryCNN(gluon.HybridBlock):
    """Three convolutions (the last two strided) and two dense layers to one logit."""

    def __init__(self, filters: int = 16) -> None:
        super().__init__()
        with self.name_scope():
            self.body = gluon.nn.HybridSequential()
            self.body.add(
                gluon.nn.Conv2D(filters, 3, padding=1, activation="relu"),
                gluon.nn.Conv2D(2 * filters, 3, strides=2, padding=1, activation="relu"),
                gluon.nn.Conv2D(2 * filters, 3, strides=2, padding=1, activation="relu"),
                gluon.nn.Dense(64, activation="relu"),
                gluon.nn.Dense(1),
            )

    def hybrid_forward(self, F: Any, x: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return F.reshape(self.body(x), (-1,))


class BinaryDetector(Detector):
    """A CNN trained to tell clean inputs from inputs attacked with a given attack.

    Parameters
    ----------
    attack : str or Attack
        The attack that makes the positive training examples: a registered
        name (built with ``attack_eps`` and ``attack_steps``) or an
        :class:`~gluon_robust.attacks.base.Attack` (default ``"pgd"``).
    attack_eps : float, optional
        ``eps`` of a named attack (default 0.3); None for attacks without one.
    attack_steps : int, optional
        ``steps`` of a named attack (default 10); None to use its default.
    max_samples : int
        Clean inputs used (each also attacked), default 1000.
    filters : int
        Filters of the first convolution (default 16).
    epochs, batch_size, lr : int, int, float
        Adam training schedule (defaults 10, 64, 1e-3).
    seed : int
        Seed of the initialisation and shuffling.

    Examples
    --------
    >>> det = BinaryDetector(attack="pgd", attack_eps=0.3).fit(model, load_data("mnist-sample", split="train"))
    """

    name = "binary"
    trainable = True

    def __init__(
        self,
        *,
        attack: Union[str, Attack] = "pgd",
        attack_eps: Optional[float] = 0.3,
        attack_steps: Optional[int] = 10,
        max_samples: int = 1000,
        filters: int = 16,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(attack, Attack):
            self.attack = attack
        elif isinstance(attack, str) and attack.strip():
            from ..attacks import make_attack

            options: Dict[str, Any] = {}
            if attack_eps is not None:
                options["eps"] = check_positive("attack_eps", attack_eps)
            if attack_steps is not None:
                options["steps"] = check_int("attack_steps", attack_steps)
            self.attack = make_attack(attack, options)
        else:
            raise ConfigError(f"attack must be an attack name or an Attack, got {attack!r}")
        self.max_samples = check_int("max_samples", max_samples, minimum=2)
        self.filters = check_int("filters", filters)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.lr = check_positive("lr", lr)
        self.seed = check_int("seed", seed, minimum=0)
        self.net: Optional[BinaryCNN] = None
        self.train_accuracy: Optional[float] = None

    def config(self) -> dict:
        return {"attack": repr(self.attack), "max_samples": self.max_samples, "filters": self.filters,
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed}

    def networks(self) -> Dict[str, gluon.Block]:
        return {"cnn": self.net} if self.net is not None else {}

    def _build(self, shape: tuple, ctx: mx.Context) -> None:
        mx.random.seed(self.seed)
        self.net = BinaryCNN(self.filters)
        self.net.initialize(mx.init.Xavier(), ctx=ctx)
        self.net(nd.zeros((1,) + tuple(int(s) for s in shape), ctx=ctx))
        self.net.hybridize(static_alloc=True)
        self._input_shape = tuple(int(s) for s in shape)

    @staticmethod
    def _unit(model: Any, x: nd.NDArray) -> nd.NDArray:
        low, high = getattr(model, "bounds", (0.0, 1.0))
        return (x - low) / (high - low)

    def fit_pairs(self, model: Any, clean: np.ndarray, adversarial: np.ndarray) -> "BinaryDetector":
        """Train on given clean (label 0) and adversarial (label 1) inputs; returns self."""
        ctx = getattr(model, "ctx", mx.cpu())
        low, high = getattr(model, "bounds", (0.0, 1.0))
        inputs = np.concatenate([clean, adversarial]).astype(np.float32)
        inputs = (inputs - low) / (high - low)
        labels = np.concatenate([np.zeros(len(clean)), np.ones(len(adversarial))]).astype(np.float32)
        self._build(clean.shape[1:], ctx)
        params = self.net.collect_params()
        params.setattr("grad_req", "write")
        trainer = gluon.Trainer(params, "adam", {"learning_rate": self.lr})
        loss_fn = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
        rng = np.random.default_rng(self.seed)
        for epoch in range(self.epochs):
            order = rng.permutation(len(inputs))
            total = 0.0
            for start in range(0, len(inputs), self.batch_size):
                pick = order[start : start + self.batch_size]
                xb, yb = nd.array(inputs[pick], ctx=ctx), nd.array(labels[pick], ctx=ctx)
                with autograd.record():
                    loss = loss_fn(self.net(xb), yb)
                loss.backward()
                trainer.step(len(pick))
                total += float(loss.sum().asscalar())
            logger.debug("binary detector epoch %d: loss %.4f", epoch + 1, total / len(inputs))
        params.setattr("grad_req", "null")
        self.fitted = True
        logits = np.concatenate([
            self.net(nd.array(inputs[i : i + 256], ctx=ctx)).asnumpy() for i in range(0, len(inputs), 256)
        ])
        self.train_accuracy = float(np.mean((logits > 0) == (labels > 0.5)))
        logger.info("binary detector: training accuracy %.3f on %d inputs", self.train_accuracy, len(inputs))
        return self

    def _fit(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x[: self.max_samples], y[: self.max_samples]
        logger.info("binary detector: attacking %d clean inputs with %r", len(x), self.attack)
        adversarial = np.concatenate([
            self.attack(model, x[i : i + 128], y[i : i + 128]).x_adv for i in range(0, len(x), 128)
        ])
        self.fit_pairs(model, x, adversarial)

    def _state(self) -> Dict[str, np.ndarray]:
        return {"input_shape": np.asarray(self._input_shape, dtype=np.int64)}

    def _load_state(self, state: Dict[str, np.ndarray]) -> None:
        self._build(tuple(state["input_shape"].tolist()), mx.cpu())
        self.net.collect_params().setattr("grad_req", "null")

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        self._require_fitted()
        move_to(self.net, x.context)
        return self.net(self._unit(model, x))

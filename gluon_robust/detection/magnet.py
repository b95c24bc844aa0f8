"""MagNet's reconstruction-error detector: a small autoencoder trained on clean data.

Meng & Chen (2017), "MagNet: a Two-Pronged Defense against Adversarial
Examples", CCS, https://arxiv.org/abs/1705.09064.

A convolutional autoencoder learns the manifold of clean inputs (trained to
reconstruct clean images from slightly noisy copies); inputs far from the
manifold reconstruct badly. The score is the mean reconstruction error
``mean_i |x_i - AE(x)_i|^p`` (``p = 1`` by default, as MagNet's MNIST
detector I), computed on inputs rescaled to ``[0, 1]``. It is exactly
differentiable, so an adaptive attack can minimise it.

The autoencoder follows MagNet's MNIST detector I: conv-sigmoid, 2x2 average
pooling, conv-sigmoid, nearest upsampling, conv-sigmoid, conv-sigmoid to the
input's channels; inputs of odd size are pooled with ceiling and cropped back.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from ..errors import ConfigError
from ..validation import check_int, check_positive
from .base import Detector, move_to

__all__ = ["MagNetDetector", "ConvAutoencoder"]

logger = logging.getLogger(__name__)


class ConvAutoencoder(gluon.HybridBlock):
    """MagNet-style conv autoencoder on ``(N, C, H, W)`` inputs in ``[0, 1]``, output in ``(0, 1)``.

    Parameters
    ----------
    channels : int
        Input (and output) channels.
    filters : int
        Filters of the hidden convolutions.
    """

    def __init__(self, channels: int, filters: int = 3) -> None:
        super().__init__()
        with self.name_scope():
            self.enc1 = gluon.nn.Conv2D(filters, 3, padding=1, activation="sigmoid")
            self.enc2 = gluon.nn.Conv2D(filters, 3, padding=1, activation="sigmoid")
            self.dec1 = gluon.nn.Conv2D(filters, 3, padding=1, activation="sigmoid")
            self.out = gluon.nn.Conv2D(channels, 3, padding=1, activation="sigmoid")

    def hybrid_forward(self, F: Any, x: Any) -> Any:  # noqa: N803 (Gluon's signature)
        h = self.enc1(x)
        h = F.Pooling(h, kernel=(2, 2), stride=(2, 2), pool_type="avg", pooling_convention="full")
        h = self.enc2(h)
        h = F.UpSampling(h, scale=2, sample_type="nearest")
        h = F.slice_like(h, x, axes=(2, 3))
        return self.out(self.dec1(h))


class MagNetDetector(Detector):
    """Meng & Chen (2017): flag inputs that the clean-data autoencoder reconstructs badly.

    Parameters
    ----------
    filters : int
        Hidden filters of the autoencoder (default 3, as MagNet).
    p : int
        Error norm: 1 (mean absolute error, default) or 2 (mean squared error).
    epochs : int
        Training epochs over the clean data (default 20).
    batch_size : int
        Training batch size (default 128).
    lr : float
        Adam learning rate (default 1e-2).
    noise : float
        Standard deviation of the Gaussian noise added to training inputs
        (default 0.1, MagNet's MNIST setting); the target is the clean input.
    weight_decay : float
        L2 regularisation of the weights (default 1e-9, as MagNet).
    seed : int
        Seed of the initialisation, shuffling and noise.

    Examples
    --------
    >>> det = MagNetDetector(epochs=10).fit(model, load_data("mnist-sample", split="train"))
    >>> det.calibrate(det.score(model, x_clean_heldout), fpr=0.05)
    """

    name = "magnet"
    trainable = True

    def __init__(
        self,
        *,
        filters: int = 3,
        p: int = 1,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-2,
        noise: float = 0.1,
        weight_decay: float = 1e-9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.filters = check_int("filters", filters)
        if p not in (1, 2) or isinstance(p, bool):
            raise ConfigError(f"p must be 1 or 2, got {p!r}")
        self.p = int(p)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.lr = check_positive("lr", lr)
        self.noise = check_positive("noise", noise, allow_zero=True)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.seed = check_int("seed", seed, minimum=0)
        self.autoencoder: Optional[ConvAutoencoder] = None
        self.loss_history: list = []

    def config(self) -> dict:
        return {"filters": self.filters, "p": self.p, "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "noise": self.noise, "weight_decay": self.weight_decay, "seed": self.seed}

    def networks(self) -> Dict[str, gluon.Block]:
        return {"autoencoder": self.autoencoder} if self.autoencoder is not None else {}

    def _build(self, shape: tuple, ctx: mx.Context) -> None:
        mx.random.seed(self.seed)
        self.autoencoder = ConvAutoencoder(int(shape[0]), self.filters)
        self.autoencoder.initialize(mx.init.Xavier(), ctx=ctx)
        self.autoencoder(nd.zeros((1,) + tuple(int(s) for s in shape), ctx=ctx))
        self.autoencoder.hybridize(static_alloc=True)
        self._input_shape = tuple(int(s) for s in shape)

    @staticmethod
    def _unit(model: Any, x: nd.NDArray) -> nd.NDArray:
        low, high = getattr(model, "bounds", (0.0, 1.0))
        return (x - low) / (high - low)

    def reconstruction_error(self, x_unit: nd.NDArray) -> nd.NDArray:
        """Per-sample mean ``|x - AE(x)|^p`` of inputs already in ``[0, 1]``."""
        diff = x_unit - self.autoencoder(x_unit)
        per_pixel = nd.abs(diff) if self.p == 1 else diff * diff
        return nd.mean(per_pixel.reshape((0, -1)), axis=1)

    def _fit(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        ctx = getattr(model, "ctx", mx.cpu())
        low, high = getattr(model, "bounds", (0.0, 1.0))
        unit = ((x - low) / (high - low)).astype(np.float32)
        self._build(x.shape[1:], ctx)
        params = self.autoencoder.collect_params()
        params.setattr("grad_req", "write")
        trainer = gluon.Trainer(params, "adam", {"learning_rate": self.lr, "wd": self.weight_decay})
        rng = np.random.default_rng(self.seed)
        self.loss_history = []
        for epoch in range(self.epochs):
            order = rng.permutation(len(unit))
            total = 0.0
            for start in range(0, len(unit), self.batch_size):
                clean = unit[order[start : start + self.batch_size]]
                noisy = np.clip(clean + self.noise * rng.standard_normal(clean.shape), 0.0, 1.0).astype(np.float32)
                target = nd.array(clean, ctx=ctx)
                with autograd.record():
                    loss = nd.mean(nd.square(self.autoencoder(nd.array(noisy, ctx=ctx)) - target))
                loss.backward()
                trainer.step(1)
                total += float(loss.asscalar()) * len(clean)
            self.loss_history.append(total / len(unit))
            logger.debug("magnet epoch %d: reconstruction MSE %.5f", epoch + 1, self.loss_history[-1])
        params.setattr("grad_req", "null")
        logger.info("magnet: trained %d epochs, final MSE %.5f", self.epochs, self.loss_history[-1])

    def _state(self) -> Dict[str, np.ndarray]:
        return {"input_shape": np.asarray(self._input_shape, dtype=np.int64)}

    def _load_state(self, state: Dict[str, np.ndarray]) -> None:
        self._build(tuple(state["input_shape"].tolist()), mx.cpu())
        self.autoencoder.collect_params().setattr("grad_req", "null")

    def score_nd(self, model: Any, x: nd.NDArray, logits: Optional[nd.NDArray] = None) -> nd.NDArray:
        self._require_fitted()
        move_to(self.autoencoder, x.context)
        return self.reconstruction_error(self._unit(model, x))

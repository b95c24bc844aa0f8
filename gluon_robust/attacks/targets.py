"""Target labels for targeted attacks: a fixed class, random, or least likely.

The common protocols of the literature: a fixed target class, a uniformly
random wrong class (Carlini & Wagner 2017, "Towards Evaluating the Robustness
of Neural Networks", https://arxiv.org/abs/1608.04644) and the least-likely
class of the clean input (Kurakin, Goodfellow & Bengio 2017, "Adversarial
examples in the physical world", https://arxiv.org/abs/1607.02533).
"""

from __future__ import annotations

import logging
from typing import Union

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import ConfigError
from .base import sample_generators

__all__ = ["choose_targets", "TARGET_MODES"]

logger = logging.getLogger(__name__)

#: The named modes; any class label is a mode too.
TARGET_MODES = ("random", "least-likely")

ArrayLike = Union[nd.NDArray, np.ndarray]
_CHUNK = 256  # samples per forward pass for the least-likely class


def choose_targets(
    model: mx.gluon.Block,
    x: ArrayLike,
    y: ArrayLike,
    mode: Union[int, str],
    seed: int = 0,
) -> np.ndarray:
    """Target labels for a batch.

    Parameters
    ----------
    model : Classifier
        The attacked model; ``num_classes`` and, for ``"least-likely"``, its
        clean logits are used.
    x : numpy.ndarray or NDArray
        Clean inputs (N, C, H, W).
    y : numpy.ndarray or NDArray
        True labels (N,).
    mode : int or str
        A class label (an int, or a string of digits such as ``"3"``) used for
        every sample; ``"random"``, a class drawn uniformly among those other
        than ``y``, from each sample's own generator (see
        :func:`~gluon_robust.attacks.base.sample_generators`), so a sample
        gets the same target alone or in any batch; or ``"least-likely"``,
        the class of lowest clean logit.
    seed : int
        Seed of the random targets.

    Returns
    -------
    numpy.ndarray of int64, shape (N,)

    Raises
    ------
    ConfigError
        For an unknown mode or a label outside ``[0, num_classes)``.

    Examples
    --------
    >>> t = choose_targets(model, x, y, "random", seed=1)
    >>> result = PGD(eps=0.1)(model, x, y, target=t)
    """
    x_np = x if isinstance(x, np.ndarray) else x.asnumpy()
    y_np = np.asarray(y if isinstance(y, np.ndarray) else y.asnumpy()).astype(np.int64).reshape(-1)
    num_classes = int(model.num_classes)
    choices = f"'random', 'least-likely' or a class label in [0, {num_classes - 1}]"

    label = _as_label(mode)
    if label is not None:
        if not 0 <= label < num_classes:
            raise ConfigError(f"target label {mode!r} is out of range; valid targets: {choices}")
        same = int(np.sum(y_np == label))
        if same:
            logger.warning("target label %d equals the true label of %d of %d samples; they are not attacked",
                           label, same, len(y_np))
        return np.full(len(y_np), label, dtype=np.int64)

    key = str(mode).strip().lower().replace("_", "-") if isinstance(mode, str) else None
    if key == "random":
        # An offset in 1..C-1 from y, mod C: uniform over the other classes.
        rngs = sample_generators(x_np, seed)
        offsets = np.array([rng.integers(1, num_classes) for rng in rngs], dtype=np.int64)
        return (y_np + offsets) % num_classes
    if key == "least-likely":
        ctx = getattr(model, "ctx", mx.cpu())
        out = []
        with autograd.pause(train_mode=False):
            for start in range(0, len(x_np), _CHUNK):
                logits = model(nd.array(x_np[start : start + _CHUNK], ctx=ctx, dtype="float32"))
                out.append(logits.argmin(axis=1).asnumpy().astype(np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    raise ConfigError(f"unknown target mode {mode!r}; valid targets: {choices}")


def _as_label(mode: object) -> int | None:
    """The class label a mode names, or None for a named mode."""
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        return int(mode)
    if isinstance(mode, str) and mode.strip().isdigit():
        return int(mode.strip())
    return None

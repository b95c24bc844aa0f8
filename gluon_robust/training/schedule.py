"""Where a training run stands and what it does there: seeds, data order, learning rate, steps per epoch.

Everything here is a pure function of the run's seed and its position, which is
what makes a resumed run end with the same weights as one never interrupted.
"""

from __future__ import annotations

from typing import Sequence

import mxnet as mx
import numpy as np

from ..errors import ConfigError

__all__ = ["PositionSchedule", "step_seed", "epoch_order", "lr_at", "steps_per_epoch", "position_text"]


def step_seed(seed: int, epoch: int, step: int, replay: int = 0) -> int:
    """The MXNet seed of one training step, derived from the run's seed and the position."""
    return int(np.random.SeedSequence([seed, epoch, step, replay]).generate_state(1)[0] % (2 ** 31 - 1))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of an epoch (a function of the seed and the epoch only)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def lr_at(epoch: int, lr: float, decay_epochs: Sequence[int], decay: float) -> float:
    """The learning rate of ``epoch``: ``lr`` times ``decay`` once per decay epoch already reached."""
    return lr * decay ** sum(1 for e in decay_epochs if epoch >= e)


def steps_per_epoch(n: int, batch_size: int, shards: int, drop_partial: bool) -> int:
    """Steps of an epoch over ``n`` samples.

    A trailing batch too small to give every one of ``shards`` devices a sample
    is dropped; with ``drop_partial`` (dist_async) every partial one is (the
    servers' optimizer keeps the 1/batch_size it was sent).
    """
    steps = -(-n // batch_size)
    if n % batch_size and (n % batch_size < shards or drop_partial):
        steps -= 1
    if steps < 1:
        raise ConfigError(f"the training data has {n} samples, too few for {shards} devices (batch_size {batch_size})")
    return steps


def position_text(epoch: int, step: int) -> str:
    """A loop position for the user: ``epoch 2, step 3`` (the steps done in that epoch), or ``the end of epoch 1``."""
    if step == 0:
        return f"the end of epoch {epoch}" if epoch > 0 else "the start of training"
    return f"epoch {epoch + 1}, step {step}"


class PositionSchedule:
    """The adversarial loop's schedule: data order, learning rate and MXNet seed of every step are functions
    of the run's seed and the position only (what exact resume needs).

    Parameters
    ----------
    seed : int
        The run's seed.
    lr : float
        The initial learning rate.
    decay_epochs : sequence of int
        Epochs from which the learning rate is multiplied by ``decay`` once more.
    decay : float
        The decay factor.
    """

    def __init__(self, seed: int, lr: float, decay_epochs: Sequence[int], decay: float) -> None:
        self.seed, self.base_lr, self.decay_epochs, self.decay = seed, lr, tuple(decay_epochs), decay

    def order(self, epoch: int, n: int) -> np.ndarray:
        """The sample order of ``epoch``."""
        return epoch_order(self.seed, epoch, n)

    def lr(self, epoch: int, current: float) -> float:
        """The learning rate of ``epoch`` (``current`` is the Trainer's now; unused here)."""
        return lr_at(epoch, self.base_lr, self.decay_epochs, self.decay)

    def seed_step(self, epoch: int, step: int, replay: int) -> None:
        """Reseed MXNet's generator for one replay of one step."""
        mx.random.seed(step_seed(self.seed, epoch, step, replay))

"""Gaussian data augmentation: train the base classifier of randomized smoothing.

Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via
Randomized Smoothing", ICML, https://arxiv.org/abs/1902.02918, Section 3.3:
the smoothed classifier ``g`` is only as good as the base classifier ``f`` is
under noise, so ``f`` is trained on ``x + e``, ``e ~ N(0, sigma^2 I)``, with
the ``sigma`` it will be smoothed with
(:class:`~gluon_robust.defenses.smoothing.SmoothedClassifier`).
"""

from __future__ import annotations

import numpy as np
from mxnet import autograd, gluon, nd

from ..errors import ConfigError
from ..validation import check_positive
from .adversarial import TrainingMethod, bounds_of, cross_entropy

__all__ = ["GaussianAugmentation"]


class GaussianAugmentation(TrainingMethod):
    """Cross-entropy on Gaussian-noise-augmented inputs, ``CE(f(x + e), y)``, ``e ~ N(0, sigma^2 I)``.

    Parameters
    ----------
    sigma : float
        Standard deviation of the noise in pixel units (default 0.25, one of
        Cohen et al.'s settings); use the ``sigma`` the model will be smoothed with.
    clip : bool
        Clip ``x + e`` to ``model.bounds``. Off by default: randomized
        smoothing, as in Cohen et al., feeds the base classifier *unclipped*
        noisy inputs, and training should see the same distribution. Turn it
        on only together with ``SmoothedClassifier(clip=True)``.
    seed : int
        Seed of the noise. Each sample draws from its own generator, seeded by
        ``seed``, the number of calls on its context and its bytes, so a
        sample gets the same noise in whichever shard it lands and a resumed
        run draws what an uninterrupted one would.

    Notes
    -----
    Parameters change only through the user's ``trainer.step``; the noise is
    a constant on the tape (no gradient flows into it). With
    ``gluon-robust train --method gaussian`` the default ``sigma`` is used
    (the command has no ``--sigma`` flag yet).

    Examples
    --------
    >>> method = GaussianAugmentation(sigma=0.25)
    >>> with autograd.record():
    ...     loss = method(model, x, y)
    >>> loss.backward()
    >>> trainer.step(len(x))
    """

    name = "gaussian"

    def __init__(self, *, sigma: float = 0.25, clip: bool = False, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.sigma = check_positive("sigma", sigma)
        if not isinstance(clip, (bool, np.bool_)):
            raise ConfigError(f"clip must be True or False, got {clip!r}")
        self.clip = bool(clip)

    def perturb(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        """The noisy batch the method trains on for this call (detached)."""
        noise = np.stack([rng.standard_normal(tuple(x.shape[1:]), dtype=np.float32) for rng in self._generators(x)])
        with autograd.pause():
            noisy = x.detach() + nd.array(noise, ctx=x.context, dtype="float32") * self.sigma
            if self.clip:
                noisy = nd.clip(noisy, *bounds_of(model))
        return noisy

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        return cross_entropy(model(self.perturb(model, x, y)), y)

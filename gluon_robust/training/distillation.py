"""Defensive distillation: a student trained at temperature T on a teacher's soft labels.

Papernot, McDaniel, Wu, Jha & Swami (2016), "Distillation as a Defense to
Adversarial Perturbations against Deep Neural Networks", IEEE S&P,
https://arxiv.org/abs/1511.04508 (distillation itself: Hinton, Vinyals & Dean
2015, https://arxiv.org/abs/1503.02531). A teacher trained at temperature
``T`` (``Standard(temperature=T)``) labels the training data with
``softmax(z_teacher / T)``; the student minimises the cross-entropy of
``softmax(z_student / T)`` against those soft labels, and is deployed at
temperature 1 (its raw logits), where its softmax saturates.

The defence flattens the gradients of the softmax output rather than making
the model robust: attacks on logits or margins (C&W, the ``"margin"`` and
``"dlr"`` losses) break it (Carlini & Wagner 2016, "Defensive Distillation
is Not Robust to Adversarial Examples", https://arxiv.org/abs/1607.04311).
Evaluate it with those, not with the cross-entropy alone.
"""

from __future__ import annotations

from mxnet import autograd, gluon, nd

from ..errors import ConfigError
from ..validation import check_positive
from .adversarial import TrainingMethod, cross_entropy

__all__ = ["Distillation"]


class Distillation(TrainingMethod):
    """Defensive distillation (Papernot et al. 2016).

    Per sample: ``-sum_k softmax(t / T)_k * log softmax(s / T)_k
    + hard_weight * CE(s, y)``, with ``t`` the teacher's and ``s`` the
    student's logits.

    Parameters
    ----------
    teacher : Block
        The teacher on pixel inputs (e.g. ``load_classifier(config)``); run in
        eval mode on its own context (``teacher.ctx``, else the shard's).
    temperature : float
        ``T`` (default 20; the paper used 20 to 100 on MNIST).
    hard_weight : float
        Weight of an extra cross-entropy on the true labels at temperature 1
        (Hinton et al. 2015); 0 (default) is the paper's recipe.
    seed : int
        Unused (the method is deterministic).

    Examples
    --------
    >>> teacher = load_classifier("runs/teacher/model.yaml")
    >>> method = Distillation(teacher=teacher, temperature=20)
    """

    name = "distill"

    def __init__(self, *, teacher: gluon.Block, temperature: float = 20.0, hard_weight: float = 0.0, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if not isinstance(teacher, gluon.Block):
            raise ConfigError(f"teacher must be a Gluon block (e.g. load_classifier(...)), got {type(teacher).__name__}")
        self.teacher = teacher
        self.temperature = check_positive("temperature", temperature)
        self.hard_weight = check_positive("hard_weight", hard_weight, allow_zero=True)

    def soft_labels(self, x: nd.NDArray) -> nd.NDArray:
        """The teacher's ``softmax(t / T)`` for ``x``, on ``x.context``, detached."""
        ctx = getattr(self.teacher, "ctx", x.context)
        with autograd.pause(train_mode=False):
            logits = self.teacher(x.as_in_context(ctx)).as_in_context(x.context)
            return nd.softmax(logits / self.temperature, axis=1).detach()

    def _loss(self, model: gluon.Block, x: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        soft = self.soft_labels(x)
        logits = model(x)
        loss = -nd.sum(soft * nd.log_softmax(logits / self.temperature, axis=1), axis=1)
        if self.hard_weight > 0:
            loss = loss + self.hard_weight * cross_entropy(logits, y)
        return loss

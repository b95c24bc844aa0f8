"""The complete adversarial fine-tuning loop behind ``gluon-robust train`` and ``scripts/train_adversarial.py``.

:func:`train_adversarial` is a plain Gluon loop around any training method
(``autograd.record`` -> ``backward`` -> ``trainer.step``, over a context list
with ``split_and_load``), with validation (clean and PGD accuracy of a folded
copy after each epoch), the curriculum, the overfitting guard, BatchNorm
recalibration and exact checkpoint/resume. Its options are one
:class:`~gluon_robust.training.options.TrainingConfig`. The pieces live beside
it: :mod:`.options` (the config), :mod:`.schedule` (seeds, data order,
learning rate), :mod:`.setup` (checks, store, Trainer), :mod:`.monitor`
(validation and checks) and :mod:`.resume` (checkpoint contents). The command
layer, :func:`~gluon_robust.commands.train.run_training` (which builds
everything from a :class:`~gluon_robust.training.options.TrainConfig` and
writes the outputs), lives in :mod:`gluon_robust.commands.train`.

Exact resume: a checkpoint holds the parameters (BatchNorm statistics of
every context), the optimizer state, the method's state and the loop
position. The data order of epoch ``e`` is a permutation drawn from
``default_rng([seed, e])``, MXNet's generator is reseeded from
``(seed, epoch, step, replay)`` before every step, and the methods draw their
random starts from per-sample generators keyed by their call count, so a run
resumed with the same seed ends with the same weights as one never
interrupted.

Distributed training (``kvstore='dist_sync'`` or ``'dist_async'``, one process
per worker started by ``gluon-robust launch``; see :mod:`gluon_robust.distributed`
and docs/distributed.md): ``batch_size`` stays the *global* batch. Every worker
draws the same epoch permutation, takes its slice of each global batch
(``numpy.array_split`` by rank) and calls ``trainer.step(global batch)``;
with ``dist_sync`` the servers sum the gradients of all workers, so a step is
the step a single process would take on the whole global batch (same learning
rate), and the optimizer runs on every worker (``update_on_kvstore=False``) so
checkpoints keep its state. Training loss and validation counts are summed
over the workers, BatchNorm running statistics are averaged across them after
every epoch and before every checkpoint, and only rank 0 writes.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any, Callable, Dict, Optional, Sequence

import mxnet as mx

from ..data import DataSource
from ..model import Classifier
from .adversarial import TrainingMethod
from .curriculum import Curriculum
from .guard import OverfittingGuard
from .monitor import validate as _validate
from .options import BN_STATS_MODES, TrainConfig, TrainingConfig, parse_contexts
from .runner import LoopParts, TrainingRun, run_loop
from .schedule import epoch_order, step_seed

__all__ = ["TrainConfig", "TrainingConfig", "TrainingRun", "train_adversarial", "run_training", "BN_STATS_MODES",
           "step_seed", "epoch_order", "parse_contexts"]

logger = logging.getLogger(__name__)
#: The per-epoch summary lines (the CLI shows them even without --verbose).
progress_logger = logging.getLogger("gluon_robust.training.progress")

_CONFIG_FIELDS = frozenset(f.name for f in fields(TrainingConfig))


def train_adversarial(
    model: Classifier,
    method: TrainingMethod,
    train: DataSource,
    config: Optional[TrainingConfig] = None,
    *,
    val: Optional[DataSource] = None,
    ctx: Optional[Sequence[mx.Context]] = None,
    curriculum: Optional[Curriculum] = None,
    guard: Optional[OverfittingGuard] = None,
    on_step: Optional[Callable[[int, int, int], None]] = None,
    on_epoch: Optional[Callable[[TrainingRun], None]] = None,
    **options: Any,
) -> TrainingRun:
    """Train ``model`` with a training method in an ordinary Gluon loop.

    Parameters
    ----------
    model : Classifier
        Around an initialised, *unfolded* network whose parameters (and the
        classifier's constants) live on every context of ``ctx``.
    method : TrainingMethod
        The helper that turns each shard into its loss; each batch is replayed
        ``method.replays`` times.
    train : DataSource
        Training data.
    config : TrainingConfig, optional
        The loop's options (epochs, batch size, optimizer, schedule,
        validation budget, checkpoints, store); see
        :class:`~gluon_robust.training.options.TrainingConfig` (its
        ``kvstore`` says how distributed runs behave). Instead of it, its
        fields may be given as keywords (``epochs=3, lr=0.01``), the older
        form of this function.
    val : DataSource, optional
        Validation data: clean and PGD accuracy after each epoch, on a folded
        eval-mode copy (PGD with ``config.val_eps``, in the method's norm).
    ctx : sequence of mxnet.Context
        Devices; batches are split over them with ``split_and_load``. Default
        ``[model.ctx]``. Gradients are summed over devices by the Trainer;
        BatchNorm statistics are per device (no synchronisation), as in any
        Gluon loop.
    curriculum : Curriculum, optional
        Sets ``method``'s budget before every step.
    guard : OverfittingGuard, optional
        Checked after every epoch with the validation PGD accuracy (needs
        ``val`` and ``val_eps``).
    on_step : callable, optional
        ``on_step(epoch, step, global_step)`` after every step (tests inject failures here).
    on_epoch : callable, optional
        ``on_epoch(run)`` after every epoch's checkpoint (the CLI writes metrics),
        on every worker (``run.rank`` says which).

    Returns
    -------
    TrainingRun
    """
    config = _config_of(config, options)
    
    parts = LoopParts(val=val, ctx=ctx, curriculum=curriculum, guard=guard, on_step=on_step, on_epoch=on_epoch,
                      validate=lambda *args, **kwargs: _validate(*args, **kwargs))
    return run_loop(model, method, train, config, parts)


def _config_of(config: Optional[TrainingConfig], options: Dict[str, Any]) -> TrainingConfig:
    """``config``, or the :class:`TrainingConfig` the keyword options describe (not both)."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"train_adversarial() got unexpected keyword arguments: {', '.join(unknown)}")
    if config is None:
        return TrainingConfig(**options)
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    if options:
        raise TypeError(f"give either config or the keywords {', '.join(sorted(options))}, not both")
    return config

"""Everything the training loop builds before its first step: the checks, the store, the Trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import mxnet as mx
from mxnet import gluon

from ..data import DataSource
from ..distributed import Reducer, WorkerInfo, create_kvstore
from ..errors import ConfigError
from ..model import Classifier, check_trainable
from ..validation import check_eps
from .adversarial import AdversarialMethod, TrainingMethod, bounds_of
from .checkpoint import init_trainer_store
from .guard import OverfittingGuard
from .options import TrainingConfig
from .schedule import steps_per_epoch

__all__ = ["LoopSetup", "check_run", "make_trainer", "prepare"]


def make_trainer(net: gluon.Block, optimizer: str, lr: float, wd: float, momentum: float,
                 store: Any = "device", info: Optional[WorkerInfo] = None) -> gluon.Trainer:
    """The Trainer; with ``dist_sync`` the optimizer runs on the workers (``update_on_kvstore=False``),
    so its state stays local and checkpointable; ``dist_async`` needs it on the servers."""
    options: Dict[str, Any] = {"learning_rate": lr, "wd": wd}
    if optimizer.lower() in ("sgd", "nag"):
        options["momentum"] = momentum
    kind = info.kvstore if info is not None else "device"
    update_on_kvstore = {"dist_sync": False, "dist_async": True}.get(kind)
    try:
        return gluon.Trainer(net.collect_params(), optimizer, options, kvstore=store,
                             update_on_kvstore=update_on_kvstore)
    except (ValueError, KeyError, mx.base.MXNetError) as err:
        raise ConfigError(f"cannot build optimizer {optimizer!r}: {str(err).splitlines()[0]}") from None


def settle_dist_trainer(trainer: gluon.Trainer) -> None:
    """Initialise a ``dist_sync`` Trainer's keys now and wait for the pulled weights.

    The Trainer broadcasts rank 0's weights lazily in its first ``step``;
    MXNet 1.9 does not order that pull before the same step's gradient push,
    so rank 0 could read the summed gradient instead of the weights. Doing
    the broadcast up front and waiting for it removes the race.
    """
    init_trainer_store(trainer)
    mx.nd.waitall()


def attack_norm(method: TrainingMethod) -> str:
    """The norm of the method's attack (L-inf for methods without one): the validation PGD uses it too."""
    return method.norm.name if isinstance(method, AdversarialMethod) else "linf"


def check_run(model: Classifier, method: TrainingMethod, train: DataSource, val: Optional[DataSource],
              config: TrainingConfig, guard: Optional[OverfittingGuard]) -> None:
    """Refuse a run that cannot work: a frozen model, dist_async options, a guard without a check, eps out of range."""
    check_trainable(model)
    if config.kvstore == "dist_async":
        given = (("lr_decay_epochs", bool(config.lr_decay_epochs)), ("guard", guard is not None),
                 ("checkpoint_every", bool(config.checkpoint_every)), ("resume", config.resume))
        refused = [name for name, flag in given if flag]
        if refused:
            raise ConfigError(f"kvstore dist_async runs the optimizer on the servers and cannot take "
                              f"{', '.join(refused)}; use dist_sync")
    if guard is not None and (val is None or not config.val_eps):
        raise ConfigError("the overfitting guard needs validation data and val_eps (a PGD check)")
    norm = attack_norm(method)
    for eps_name, eps_value in (("eps", getattr(method, "eps", None)), ("val_eps", config.val_eps)):
        check_eps(eps_name, eps_value, norm, bounds_of(model), train.sample_shape)  # e.g. 8 for 8/255


@dataclass
class LoopSetup:
    """What :func:`prepare` builds: contexts, the store and its workers, the Trainer and the epoch length."""

    ctx: List[mx.Context]
    info: WorkerInfo
    reducer: Reducer
    trainer: gluon.Trainer
    steps_per_epoch: int


def prepare(model: Classifier, train: DataSource, config: TrainingConfig,
            ctx: Optional[Sequence[mx.Context]]) -> LoopSetup:
    """The contexts, the store, the Trainer (parameters set to ``grad_req='write'``) and the epoch length."""
    contexts = list(ctx) if ctx else [model.ctx]
    if config.resume and config.checkpoint_dir is None:
        raise ConfigError("resume needs a checkpoint directory")
    store, info = create_kvstore(config.kvstore)
    shards = info.num_workers * len(contexts)  # devices over all workers: each gets at least one sample per step
    if config.batch_size < shards:
        raise ConfigError(f"batch_size (the global batch) must be at least the number of devices over all "
                          f"workers ({shards}), got {config.batch_size}")
    reducer = Reducer(store, info)
    net = model.net
    net.collect_params().setattr("grad_req", "write")  # non-differentiable BatchNorm statistics stay 'null'
    trainer = make_trainer(net, config.optimizer, config.lr, config.wd, config.momentum, store, info)
    steps = steps_per_epoch(len(train), config.batch_size, shards, config.kvstore == "dist_async")
    return LoopSetup(ctx=contexts, info=info, reducer=reducer, trainer=trainer, steps_per_epoch=steps)

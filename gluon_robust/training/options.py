"""The options of training as typed, frozen, validated objects.

:class:`TrainConfig` mirrors the flags of ``gluon-robust train`` (and
``scripts/train_adversarial.py``): model, data, method and loop; the command
builds it from its arguments and :meth:`TrainConfig.training` gives the
loop's own part. :class:`TrainingConfig` holds every plain option of
:func:`~gluon_robust.training.loop.train_adversarial` (the schedule, the
optimizer, validation, checkpointing, the store); the objects the loop works
with (data, contexts, the curriculum, the guard, callbacks) are passed beside
it. Its fields are checked once, in ``__post_init__``, and a bad value raises
:class:`~gluon_robust.validation.InvalidValue` naming the field and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx

from ..distributed import check_kvstore
from ..errors import ConfigError
from ..validation import (
    InvalidValue, check_choice, check_contexts, check_file_name, check_int, check_out_dir, check_positive, check_real,
)
from .batchnorm import ATTACK_BN_MODES
from .curriculum import CURRICULUM_KINDS
from .guard import GUARD_ACTIONS

__all__ = ["TrainConfig", "TrainingConfig", "BN_STATS_MODES", "parse_contexts"]

#: Values of ``bn_stats``: keep the statistics the training passes produce, or re-estimate them on clean data.
BN_STATS_MODES = ("train", "clean")


@dataclass(frozen=True)
class TrainingConfig:
    """Every plain option of the training loop.

    Attributes
    ----------
    epochs, batch_size : int
        Passes over the training data and samples per step (over all devices
        and workers). Trailing batches smaller than the number of devices are dropped.
    seed : int
        Seeds the data order and MXNet's generator per step.
    lr : float
        Learning rate.
    lr_decay_epochs, lr_decay : tuple of int, float
        The learning rate is multiplied by ``lr_decay`` at each of these epochs.
    optimizer : str
        Any ``mxnet.optimizer`` name.
    wd, momentum : float
        Weight decay and momentum (``sgd``/``nag`` only).
    val_eps, val_steps : float or None, int
        Budget of the per-epoch validation PGD; no PGD without ``val_eps``.
    bn_stats : str
        ``"train"``: keep the running statistics the training passes produced;
        ``"clean"``: re-estimate them on clean training batches after each epoch.
    checkpoint_dir : str or path, optional
        Where to checkpoint: after every epoch, and every ``checkpoint_every``
        steps when that is positive.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir``, if there is one.
    fingerprint : dict, optional
        Options that define the run, stored in the checkpoint and compared on resume.
    progress : bool
        Show a tqdm bar per epoch.
    kvstore : str
        ``device`` (default) or ``local``: MXNet's single-process stores.
        ``dist_sync``: this process is one worker of a synchronous
        parameter-server job (``gluon-robust launch``); ``batch_size`` is the
        global batch, each worker trains on its slice, gradients are summed
        by the servers, and the run equals a single-process run over the
        same global batch (up to float summation order and, with BatchNorm,
        per-worker batch statistics). Metrics are summed over the workers;
        only rank 0 writes checkpoints. ``dist_async``: workers update the
        servers' weights without waiting for each other; the optimizer runs
        on the servers, so there are no checkpoints, no learning-rate decay
        and no guard, and metrics are rank 0's (its shard, full validation).
    """

    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    lr: float = 1e-3
    lr_decay_epochs: Tuple[int, ...] = ()
    lr_decay: float = 0.1
    optimizer: str = "adam"
    wd: float = 1e-4
    momentum: float = 0.9
    val_eps: Optional[float] = None
    val_steps: int = 10
    bn_stats: str = "train"
    checkpoint_dir: Optional[str | Path] = None
    checkpoint_every: int = 0
    resume: bool = False
    fingerprint: Optional[Dict[str, Any]] = None
    progress: bool = True
    kvstore: str = "device"

    def __post_init__(self) -> None:
        self._set("epochs", check_int("epochs", self.epochs))
        self._set("batch_size", check_int("batch_size", self.batch_size))
        self._set("lr", check_positive("lr", self.lr))
        self._set("wd", check_positive("wd", self.wd, allow_zero=True))
        self._set("checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, minimum=0))
        self._set("val_steps", check_int("val_steps", self.val_steps))
        self._set("bn_stats", check_choice("bn_stats", self.bn_stats, BN_STATS_MODES))
        self._set("kvstore", check_kvstore(self.kvstore))
        self._set("lr_decay_epochs", tuple(self.lr_decay_epochs))

    def _set(self, name: str, value: Any) -> None:
        """Store a normalised value on the frozen instance (only during ``__post_init__``)."""
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``gluon-robust train`` (and ``scripts/train_adversarial.py``).

    Attributes mirror the command-line flags (``lr_decay_epoch`` is
    ``--lr-decay-epoch``); None means "the default of the method, the config
    or the data". See ``gluon-robust train --help``. Checked in full on
    construction (``__post_init__``), and frozen after.
    """

    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    pretrained: bool = False
    classes: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    bounds: Optional[Tuple[float, float]] = None
    data: str = "mnist-sample"
    limit: Optional[int] = None
    val_data: Optional[str] = None
    val_limit: int = 500
    method: str = "pgd-at"
    eps: float = 0.3
    norm: str = "linf"
    steps: int = 10
    step_size: Optional[float] = None
    no_random_start: bool = False
    beta: Optional[float] = None
    mix: Optional[float] = None
    replays: Optional[int] = None
    temperature: Optional[float] = None
    sigma: Optional[float] = None
    teacher: Optional[str] = None
    attack_bn: str = "train"
    attack_updates_stats: bool = False
    bn_stats: str = "train"
    curriculum: str = "none"
    warmup_epochs: Optional[float] = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    wd: float = 1e-4
    momentum: float = 0.9
    lr_decay: float = 0.1
    lr_decay_epoch: Tuple[int, ...] = ()
    val_eps: Optional[float] = None
    val_steps: int = 10
    guard: Optional[bool] = None
    guard_drop: float = 0.2
    on_collapse: str = "rollback"
    ctx: Tuple[str, ...] = ("cpu:0",)
    kvstore: str = "device"
    seed: int = 0
    save_dir: str = "runs/train"
    name: Optional[str] = None
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.model is None) == (self.config is None):
            raise ConfigError("give exactly one of model (a zoo name) and config (a model config YAML)")
        self._check_choices()
        self._check_numbers()
        if self.name is not None:
            check_file_name("name", self.name)
        check_out_dir("save_dir", self.save_dir)
        check_contexts("ctx", parse_contexts(self.ctx), multiple=True)

    def _check_choices(self) -> None:
        check_choice("curriculum", self.curriculum, ("none",) + CURRICULUM_KINDS)
        check_choice("attack_bn", self.attack_bn, ATTACK_BN_MODES)
        check_choice("bn_stats", self.bn_stats, BN_STATS_MODES)
        check_choice("on_collapse", self.on_collapse, GUARD_ACTIONS)
        check_choice("norm", self.norm, ("linf", "l2"))
        check_choice("optimizer", self.optimizer, tuple(sorted(set(mx.optimizer.Optimizer.opt_registry) - {"test"})))
        object.__setattr__(self, "kvstore", check_kvstore(self.kvstore))

    def _check_numbers(self) -> None:
        """Every number, before any data or model is loaded: NaN, infinities and out-of-range values are refused."""
        check_positive("eps", self.eps, allow_zero=True)
        check_positive("lr", self.lr)
        check_positive("wd", self.wd, allow_zero=True)
        check_real("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_positive("lr_decay", self.lr_decay)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("steps", self.steps)
        check_int("val_steps", self.val_steps)
        check_int("val_limit", self.val_limit, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("seed", self.seed, minimum=0, maximum=2 ** 32 - 1)
        check_real("guard_drop", self.guard_drop, 0.0, 1.0, low_open=True)
        for name in ("limit", "replays", "classes"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=2 if name == "classes" else 1)
        for name in ("step_size", "temperature", "sigma"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
        for name in ("beta", "val_eps", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value, allow_zero=True)
        if self.mix is not None:
            check_real("mix", self.mix, 0.0, 1.0)
        for value in self.lr_decay_epoch:
            check_int("lr_decay_epoch", value, minimum=0)
        for name in ("mean", "std"):
            for value in getattr(self, name) or ():
                check_positive(name, value, allow_zero=name == "mean")
        if self.bounds is not None:
            low, high = (check_real("bounds", v) for v in self.bounds)
            if not low < high:
                raise InvalidValue("bounds", tuple(self.bounds), "LO,HI with LO < HI")

    def fingerprint(self) -> Dict[str, Any]:
        """The JSON-ready options, for checkpoints and metrics."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @property
    def run_name(self) -> str:
        """Base name of the saved params and config."""
        if self.name:
            return self.name
        arch = self.model or Path(self.config or "model").stem
        return f"{arch}_{self.method}".replace("/", "_")

    def training(self, *, val_eps: Optional[float]) -> TrainingConfig:
        """The loop's options: this run's schedule and optimizer, ``val_eps`` (resolved by the caller),
        checkpoints in ``save_dir/checkpoint`` and this config as the fingerprint."""
        return TrainingConfig(
            epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr, wd=self.wd,
            momentum=self.momentum, lr_decay_epochs=self.lr_decay_epoch, lr_decay=self.lr_decay, val_eps=val_eps,
            val_steps=self.val_steps, bn_stats=self.bn_stats, seed=self.seed,
            checkpoint_dir=Path(self.save_dir) / "checkpoint", checkpoint_every=self.checkpoint_every,
            resume=self.resume, fingerprint=self.fingerprint(), progress=self.progress, kvstore=self.kvstore,
        )


def parse_contexts(ctx: Sequence[str]) -> List[mx.Context]:
    """``["cpu:0", "gpu:1"]`` into MXNet contexts."""
    out = []
    for text in ctx:
        kind, _, index = str(text).strip().lower().replace("(", ":").rstrip(")").partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise ConfigError(f"ctx must be cpu[:N] or gpu[:N], got {text!r}")
        out.append(mx.cpu(int(index or 0)) if kind == "cpu" else mx.gpu(int(index or 0)))
    return out

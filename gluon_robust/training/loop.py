"""The complete adversarial fine-tuning loop behind ``gluon-robust train`` and ``scripts/train_adversarial.py``.

Two layers:

* :func:`train_adversarial` is a plain Gluon loop around any training method
  (``autograd.record`` -> ``backward`` -> ``trainer.step``, over a context
  list with ``split_and_load``), with validation (clean and PGD accuracy of a
  folded copy after each epoch), the curriculum, the overfitting guard,
  BatchNorm recalibration and exact checkpoint/resume.
* :func:`run_training` builds everything from a :class:`TrainConfig` (a
  GluonCV zoo network, fresh, ``--pretrained`` or from ``--params``; data
  sources; the method) and writes the outputs: ``NAME.params``, ``NAME.yaml``
  (a model config that :func:`~gluon_robust.model.load_classifier` reads) and
  ``metrics.json``.

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

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from tqdm import tqdm

from ..attacks.pgd import PGD
from ..config import ModelConfig, family_defaults, load_config
from ..data import DataSource, load_data
from ..distributed import Reducer, WorkerInfo, check_kvstore, create_kvstore
from ..errors import ConfigError, ModelError, TrainingDiverged
from ..evaluation.robustness import evaluate_attacks
from ..interrupts import Interrupted, deferred, set_hint
from ..io import atomic_write_json
from ..model import Classifier, check_trainable, load_classifier, trainable_classifier
from ..reporting import record_outputs, versions
from ..validation import (
    InvalidValue, check_choice, check_contexts, check_eps, check_file_name, check_int, check_out_dir, check_positive,
    check_real,
)
from . import TRAINING_METHODS, make_method
from .adversarial import AdversarialMethod, TrainingMethod, bounds_of
from .batchnorm import ATTACK_BN_MODES, folded_copy, recalibrate_batchnorm
from .checkpoint import (
    CheckpointManager, init_trainer_store, join_arrays, restore_into, running_stats_arrays, split_arrays,
    structural_params,
)
from .curriculum import CURRICULUM_KINDS, Curriculum
from .guard import GUARD_ACTIONS, OverfittingGuard
from .standard import save_trained

__all__ = ["TrainConfig", "TrainingRun", "train_adversarial", "run_training", "BN_STATS_MODES", "step_seed"]

logger = logging.getLogger(__name__)
#: The per-epoch summary lines (the CLI shows them even without --verbose).
progress_logger = logging.getLogger("gluon_robust.training.progress")

#: Values of ``bn_stats``: keep the statistics the training passes produce, or re-estimate them on clean data.
BN_STATS_MODES = ("train", "clean")
_RECALIBRATION_BATCHES = 16
# Options a resumed run may change without changing the training itself.
# ``save_dir`` is where the checkpoint was found, so another spelling of it (or a moved directory) is the same run.
_RESUMABLE = frozenset({"resume", "progress", "epochs", "checkpoint_every", "kvstore", "save_dir"})


def step_seed(seed: int, epoch: int, step: int, replay: int = 0) -> int:
    """The MXNet seed of one training step, derived from the run's seed and the position."""
    return int(np.random.SeedSequence([seed, epoch, step, replay]).generate_state(1)[0] % (2 ** 31 - 1))


def _position(epoch: int, step: int) -> str:
    """A loop position for the user: ``epoch 2, step 3`` (the steps done in that epoch), or ``the end of epoch 1``."""
    if step == 0:
        return f"the end of epoch {epoch}" if epoch > 0 else "the start of training"
    return f"epoch {epoch + 1}, step {step}"


def _nonfinite_params(net: gluon.Block) -> List[str]:
    """Structural names of the parameters (any context's copy) holding NaN or infinite values."""
    bad = []
    for name, param in sorted(structural_params(net).items()):
        if param._data is None:  # noqa: SLF001 -- not initialised yet: nothing to save
            continue
        if not all(np.isfinite(param.data(c).asnumpy()).all() for c in param.list_ctx()):
            bad.append(name)
    return bad


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of an epoch (a function of the seed and the epoch only)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


@dataclass
class TrainingRun:
    """What :func:`train_adversarial` returns.

    Attributes
    ----------
    epochs : list of dict
        Per-epoch metrics: ``epoch``, ``train_loss``, ``eps`` and ``steps``
        (the training attack's budget), ``lr``, ``seconds`` and, with
        validation, ``clean_accuracy``, ``pgd_accuracy`` and ``pgd_iters``
        (the validation PGD's own steps, one start), plus ``guard`` when a
        guard runs.
    seconds : float
        Training time (resumed runs included), validation excluded.
    stopped_early : str or None
        Why training stopped before the last epoch (the guard), if it did.
    resumed_from : int or None
        The global step a resumed run started from.
    kvstore, num_workers, rank : str, int, int
        The store type and this process's place in the job (rank 0 of 1 unless distributed).
    """

    epochs: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    validation_seconds: float = 0.0
    stopped_early: Optional[str] = None
    resumed_from: Optional[int] = None
    global_step: int = 0
    kvstore: str = "device"
    num_workers: int = 1
    rank: int = 0


def _make_trainer(net: gluon.Block, optimizer: str, lr: float, wd: float, momentum: float,
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


def _settle_dist_trainer(trainer: gluon.Trainer) -> None:
    """Initialise a ``dist_sync`` Trainer's keys now and wait for the pulled weights.

    The Trainer broadcasts rank 0's weights lazily in its first ``step``;
    MXNet 1.9 does not order that pull before the same step's gradient push,
    so rank 0 could read the summed gradient instead of the weights. Doing
    the broadcast up front and waiting for it removes the race.
    """
    init_trainer_store(trainer)
    mx.nd.waitall()


def _running_stats(net: gluon.Block) -> List[gluon.Parameter]:
    return [p for name, p in sorted(structural_params(net).items())
            if p.grad_req == "null" and name.endswith(("running_mean", "running_var"))]


def _average_running_stats(net: gluon.Block, ctx: Sequence[mx.Context], reducer: Reducer) -> None:
    """Average every context's BatchNorm running statistics over the workers (no-op without workers)."""
    params = _running_stats(net)
    if not reducer.active or not params:
        return
    for c in ctx:
        mean = reducer.mean(np.concatenate([p.data(c).asnumpy().ravel() for p in params]))
        offset = 0
        for p in params:
            size = int(np.prod(p.shape))
            p.data(c)[:] = nd.array(mean[offset: offset + size].reshape(p.shape), ctx=c)
            offset += size


def _worker_shard(val: DataSource, info: WorkerInfo) -> Optional[DataSource]:
    """This worker's share of the validation data (every ``num_workers``-th sample); None if it is empty."""
    if info.num_workers == 1:
        return val
    indices = np.arange(info.rank, len(val), info.num_workers)
    return val.subset(indices) if indices.size else None


def _lr_at(epoch: int, lr: float, decay_epochs: Sequence[int], decay: float) -> float:
    return lr * decay ** sum(1 for e in decay_epochs if epoch >= e)


def _validate(
    model: Classifier, val: DataSource, ctx: mx.Context, *, eps: Optional[float], steps: int, norm: str,
    batch_size: int,
) -> Dict[str, float]:
    """Clean and PGD accuracy of a folded, eval-mode copy of the model."""
    shape = (1,) + tuple(model.input_size or val.sample_shape)
    copy = folded_copy(model, ctx, shape)
    if eps is None or eps == 0:
        from ..evaluation.accuracy import accuracy

        return {"clean_accuracy": accuracy(copy, val, batch_size=batch_size)}
    attack = PGD(eps=eps, steps=steps, norm=norm, restarts=1)
    result = evaluate_attacks(copy, val, [("pgd", attack)], batch_size=batch_size, cascade=False, progress=False)
    return {"clean_accuracy": result.clean_accuracy,
            "pgd_accuracy": result.outcomes[0].robust_accuracy(result.correct)}


def _validate_workers(
    model: Classifier, val: DataSource, ctx: mx.Context, info: WorkerInfo, reducer: Reducer, **options: Any,
) -> Dict[str, float]:
    """:func:`_validate` on this worker's share of ``val``, the accuracies summed over the workers."""
    if not reducer.active:
        return _validate(model, val, ctx, **options)
    shard = _worker_shard(val, info)
    local = _validate(model, shard, ctx, **options) if shard is not None else {}
    size = len(shard) if shard is not None else 0
    names = ["clean_accuracy"] + (["pgd_accuracy"] if options.get("eps") else [])
    totals = reducer.sum([size] + [round(local.get(k, 0.0) * size) for k in names])
    return {k: float(totals[i + 1] / max(totals[0], 1)) for i, k in enumerate(names)}


def train_adversarial(
    model: Classifier,
    method: TrainingMethod,
    train: DataSource,
    *,
    val: Optional[DataSource] = None,
    ctx: Optional[Sequence[mx.Context]] = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    wd: float = 1e-4,
    momentum: float = 0.9,
    lr_decay_epochs: Sequence[int] = (),
    lr_decay: float = 0.1,
    curriculum: Optional[Curriculum] = None,
    guard: Optional[OverfittingGuard] = None,
    val_eps: Optional[float] = None,
    val_steps: int = 10,
    bn_stats: str = "train",
    seed: int = 0,
    checkpoint_dir: Optional[str | Path] = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    fingerprint: Optional[Dict[str, Any]] = None,
    progress: bool = True,
    on_step: Optional[Callable[[int, int, int], None]] = None,
    on_epoch: Optional[Callable[[TrainingRun], None]] = None,
    kvstore: str = "device",
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
    train, val : DataSource
        Training data; optional validation data (clean and PGD accuracy after
        each epoch, on a folded eval-mode copy).
    ctx : sequence of mxnet.Context
        Devices; batches are split over them with ``split_and_load``. Default
        ``[model.ctx]``. Gradients are summed over devices by the Trainer;
        BatchNorm statistics are per device (no synchronisation), as in any
        Gluon loop.
    epochs, batch_size : int
        Passes over ``train`` and samples per step (over all devices).
        Trailing batches smaller than the number of devices are dropped.
    optimizer, lr, wd, momentum : str, float
        Any ``mxnet.optimizer`` name and its learning rate, weight decay and
        momentum (``sgd``/``nag`` only).
    lr_decay_epochs, lr_decay : sequence of int, float
        The learning rate is multiplied by ``lr_decay`` at each of these epochs.
    curriculum : Curriculum, optional
        Sets ``method``'s budget before every step.
    guard : OverfittingGuard, optional
        Checked after every epoch with the validation PGD accuracy (needs
        ``val`` and ``val_eps``).
    val_eps, val_steps : float, int
        Budget of the validation PGD (L-inf unless the method uses another
        norm); no PGD without ``val_eps``.
    bn_stats : str
        ``"train"``: keep the running statistics the training passes produced;
        ``"clean"``: re-estimate them on clean training batches after each
        epoch (:func:`~gluon_robust.training.batchnorm.recalibrate_batchnorm`).
    seed : int
        Seeds data order and MXNet's generator per step.
    checkpoint_dir : str or path, optional
        Where to checkpoint: after every epoch, and every ``checkpoint_every``
        steps when that is positive.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir``, if there is one.
    fingerprint : dict, optional
        Options that define the run, stored in the checkpoint and compared on
        resume (differences other than ``epochs`` are a ConfigError).
    progress : bool
        Show a tqdm bar per epoch.
    on_step : callable, optional
        ``on_step(epoch, step, global_step)`` after every step (tests inject failures here).
    on_epoch : callable, optional
        ``on_epoch(run)`` after every epoch's checkpoint (the CLI writes metrics),
        on every worker (``run.rank`` says which).
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

    Returns
    -------
    TrainingRun
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    wd = check_positive("wd", wd, allow_zero=True)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=0)
    val_steps = check_int("val_steps", val_steps)
    bn_stats = check_choice("bn_stats", bn_stats, BN_STATS_MODES)
    kvstore = check_kvstore(kvstore)
    check_trainable(model)
    if kvstore == "dist_async":
        refused = [name for name, given in (("lr_decay_epochs", bool(lr_decay_epochs)), ("guard", guard is not None),
                                            ("checkpoint_every", bool(checkpoint_every)), ("resume", resume)) if given]
        if refused:
            raise ConfigError(f"kvstore dist_async runs the optimizer on the servers and cannot take "
                              f"{', '.join(refused)}; use dist_sync")
    if guard is not None and (val is None or not val_eps):
        raise ConfigError("the overfitting guard needs validation data and val_eps (a PGD check)")
    attack_norm = method.norm.name if isinstance(method, AdversarialMethod) else "linf"
    for eps_name, eps_value in (("eps", getattr(method, "eps", None)), ("val_eps", val_eps)):
        check_eps(eps_name, eps_value, attack_norm, bounds_of(model), train.sample_shape)  # e.g. 8 for 8/255
    ctx = list(ctx) if ctx else [model.ctx]
    if resume and checkpoint_dir is None:
        raise ConfigError("resume needs a checkpoint directory")
    store, info = create_kvstore(kvstore)
    shards = info.num_workers * len(ctx)  # devices over all workers: each gets at least one sample per step
    if batch_size < shards:
        raise ConfigError(f"batch_size (the global batch) must be at least the number of devices over all "
                          f"workers ({shards}), got {batch_size}")
    reducer = Reducer(store, info)
    net = model.net
    net.collect_params().setattr("grad_req", "write")  # non-differentiable BatchNorm statistics stay 'null'
    trainer = _make_trainer(net, optimizer, lr, wd, momentum, store, info)
    norm = attack_norm
    n = len(train)
    steps_per_epoch = -(-n // batch_size)
    # A trailing batch too small to give every device a sample is dropped; with dist_async every partial
    # one is (the servers' optimizer keeps the 1/batch_size it was sent).
    if n % batch_size and (n % batch_size < shards or kvstore == "dist_async"):
        steps_per_epoch -= 1
    if steps_per_epoch < 1:
        raise ConfigError(f"the training data has {n} samples, too few for {shards} devices (batch_size {batch_size})")

    run = TrainingRun(kvstore=kvstore, num_workers=info.num_workers, rank=info.rank)
    if kvstore == "dist_async" and checkpoint_dir is not None:
        logger.warning("kvstore dist_async: no checkpoints (the optimizer state lives on the servers)")
        checkpoint_dir = None
    progress = progress and info.is_root
    manager = CheckpointManager(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, start_step, loss_sum, seen, elapsed = 0, 0, 0.0, 0, 0.0
    kept: Optional[Tuple[int, int]] = None  # (epoch, step) of this run's checkpoint on disk
    checkpoint = manager.load() if (manager is not None and resume) else None
    if checkpoint is not None:
        state = checkpoint.state
        if fingerprint is not None and state.get("fingerprint") is not None:
            stored = state["fingerprint"]
            changed = sorted(k for k in set(stored) | set(fingerprint)
                             if k not in _RESUMABLE and stored.get(k) != fingerprint.get(k))
            if changed:
                detail = ", ".join(f"{k}: {stored.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
                raise ConfigError(f"cannot resume: the checkpoint in {checkpoint_dir} was made with other options ({detail})")
        restore_into(checkpoint, net, trainer, ctx)
        arrays = checkpoint.arrays
        method.load_state_dict(join_arrays(state["method"], arrays))
        if guard is not None and state.get("guard") is not None:
            best = {k[len("guard/"):]: v for k, v in arrays.items() if k.startswith("guard/")}
            guard.load_state_dict(state["guard"], best or None)
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        kept = (start_epoch, start_step)
        loss_sum, seen = float(state["loss_sum"]), int(state["seen"])
        elapsed = float(state["seconds"])
        run.epochs = list(state["epochs"])
        run.validation_seconds = float(state.get("validation_seconds", 0.0))
        run.stopped_early = state.get("stopped_early")
        run.global_step = run.resumed_from = int(state["global_step"])
        logger.info("resumed from checkpoint %d: epoch %d, step %d (global step %d)",
                    checkpoint.generation, start_epoch + 1, start_step, run.global_step)
        if not info.is_root:  # the partial loss sums of the epoch were folded into rank 0's before saving
            loss_sum, seen = 0.0, 0
    elif resume:
        logger.info("no checkpoint in %s: starting from scratch", checkpoint_dir)
    elif manager is not None and info.is_root and manager.latest_generation() is not None:
        logger.warning("ignoring the existing checkpoint in %s (pass resume to continue it)", checkpoint_dir)
    if kvstore == "dist_sync":
        _settle_dist_trainer(trainer)
    if info.distributed:
        logger.info("worker %d of %d (%s): %d of every %d samples per step", info.rank, info.num_workers, kvstore,
                    len(np.array_split(np.arange(batch_size), info.num_workers)[info.rank]), batch_size)

    def kept_message() -> str:
        if manager is None:
            return "no checkpoint directory was given"
        if kept is None:
            return f"no checkpoint of this run was written to {checkpoint_dir}"
        return f"the checkpoint of {_position(*kept)} is kept in {checkpoint_dir}"

    def diverged(what: str, unsaved: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged: {what}; {unsaved} not saved and {kept_message()}; "
                                f"train again with a lower --lr (now {trainer.learning_rate:g})")

    def save(epoch: int, step: int) -> None:
        """Checkpoint (rank 0 writes; every worker must call it, as it synchronises them).

        Refuses (TrainingDiverged) to save parameters that are not all finite.
        """
        nonlocal loss_sum, seen, kept
        bad = _nonfinite_params(net)
        if bad:
            raise diverged(f"parameters {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} became NaN or infinite "
                           f"by {_position(epoch, step)}", "they were")
        if manager is None:
            return
        if reducer.active:
            _average_running_stats(net, ctx, reducer)
            total_loss, total_seen = reducer.sum([loss_sum, seen])
            loss_sum, seen = (float(total_loss), int(total_seen)) if info.is_root else (0.0, 0)
        if not info.is_root:
            return
        arrays: Dict[str, np.ndarray] = running_stats_arrays(net, ctx)
        method_state = split_arrays(method.state_dict(), "method", arrays)
        guard_state = None
        if guard is not None:
            guard_state = guard.state_dict()
            for name, value in (guard.best_params or {}).items():
                arrays[f"guard/{name}"] = value
        state = {
            "epoch": epoch, "step": step, "global_step": run.global_step, "loss_sum": loss_sum, "seen": seen,
            "seconds": elapsed, "validation_seconds": run.validation_seconds, "epochs": run.epochs,
            "method": method_state, "guard": guard_state, "stopped_early": run.stopped_early,
            "fingerprint": fingerprint,
        }
        manager.save(net, trainer, state, arrays)
        kept = (epoch, step)

    # The in-memory state equals the checkpoint save(*position) would write: steps, and an epoch's end with its
    # validation and guard, run with SIGINT/SIGTERM held (see gluon_robust.interrupts), so an interruption
    # lands between them and is saved there; BatchNorm recalibration is idempotent and validation changes nothing.
    position: Tuple[int, int] = (start_epoch, start_step)
    tic: Optional[float] = None
    try:
        for epoch in range(start_epoch, epochs):
            if run.stopped_early:
                break
            trainer.set_learning_rate(_lr_at(epoch, lr, lr_decay_epochs, lr_decay))
            order = epoch_order(seed, epoch, n)
            first_step = start_step if epoch == start_epoch else 0
            if first_step == 0:
                loss_sum, seen = 0.0, 0
            bar = tqdm(range(first_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                       leave=False, initial=first_step, total=steps_per_epoch)
            tic = time.perf_counter()
            for step in bar:
                with deferred():
                    if curriculum is not None:
                        eps, k = curriculum.at(epoch + step / steps_per_epoch)
                        method.set_budget(eps=eps, steps=k)
                    batch = order[step * batch_size: (step + 1) * batch_size]
                    if info.num_workers > 1:
                        batch_count, batch = len(batch), np.array_split(batch, info.num_workers)[info.rank]
                    else:
                        batch_count = len(batch)
                    x_np, y_np = train.subset(batch).arrays()
                    xs = gluon.utils.split_and_load(nd.array(x_np, dtype="float32"), ctx, even_split=False)
                    ys = gluon.utils.split_and_load(nd.array(y_np, dtype="float32"), ctx, even_split=False)
                    for replay in range(method.replays):
                        mx.random.seed(step_seed(seed, epoch, step, replay))
                        with autograd.record(train_mode=True):
                            losses = [method(model, xi, yi) for xi, yi in zip(xs, ys)]
                        autograd.backward(losses)
                        trainer.step(batch_count)  # the global batch: dist_sync sums the gradients of all workers
                    step_loss = sum(float(l.sum().asscalar()) for l in losses)  # the step's one sync
                    if not math.isfinite(step_loss):
                        raise diverged(f"the loss became {step_loss} at epoch {epoch + 1}, step {step + 1} "
                                       f"(global step {run.global_step + 1})", "the parameters were")
                    loss_sum += step_loss
                    seen += len(y_np)
                    run.global_step += 1
                    position = (epoch, step + 1)
                    postfix = {"loss": f"{loss_sum / seen:.4f}"}
                    if method.adversarial:
                        postfix["eps"] = f"{getattr(method, 'eps', 0.0):.3g}"
                    bar.set_postfix(**postfix)
                    if checkpoint_every and run.global_step % checkpoint_every == 0 and step + 1 < steps_per_epoch:
                        elapsed += time.perf_counter() - tic
                        tic = time.perf_counter()
                        save(epoch, step + 1)
                if on_step is not None:
                    on_step(epoch, step, run.global_step)
            bar.close()
            elapsed += time.perf_counter() - tic
            tic = None
            epoch_loss, epoch_seen = (reducer.sum([loss_sum, seen]) if reducer.active else (loss_sum, seen))
            _average_running_stats(net, ctx, reducer)
            metrics: Dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": float(epoch_loss) / max(epoch_seen, 1), "lr": trainer.learning_rate,
            }
            if method.adversarial:  # a method without an attack has no eps or steps to report
                metrics.update(eps=float(getattr(method, "eps", 0.0)), steps=int(getattr(method, "steps", 0)))
            metrics["seconds"] = round(elapsed, 3)
            if bn_stats == "clean":
                clean = [train.subset(order[i * batch_size: (i + 1) * batch_size]).arrays()[0]
                         for i in range(min(_RECALIBRATION_BATCHES, steps_per_epoch))]
                recalibrate_batchnorm(model, clean, ctx)
            validated = val is not None and (reducer.active or info.is_root)
            if validated:
                started = time.perf_counter()
                metrics.update(_validate_workers(model, val, ctx[0], info, reducer, eps=val_eps, steps=val_steps,
                                                 norm=norm, batch_size=batch_size))
                if "pgd_accuracy" in metrics:  # name the check's own budget: ``steps`` is the training attack's
                    metrics["pgd_iters"] = int(val_steps)
                validation_seconds = time.perf_counter() - started
            with deferred():
                if validated:
                    run.validation_seconds += validation_seconds
                if validated and guard is not None:
                    verdict = guard.update(epoch, metrics["pgd_accuracy"], params=structural_params(net))
                    metrics["guard"] = verdict
                    if verdict == "collapse" and guard.on_collapse != "warn":
                        if guard.on_collapse == "rollback":
                            guard.restore(structural_params(net))
                            metrics["rolled_back_to_epoch"] = guard.best_epoch + 1
                        run.stopped_early = (f"catastrophic overfitting after epoch {epoch + 1} "
                                             f"({guard.on_collapse}, best epoch {guard.best_epoch + 1})")
                (progress_logger.info if info.is_root else logger.debug)("epoch %d/%d: %s", epoch + 1, epochs, ", ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "epoch"))
                run.epochs.append(metrics)
                loss_sum, seen = 0.0, 0
                run.seconds = elapsed
                save(epoch + 1, 0)
                position = (epoch + 1, 0)
            if on_epoch is not None:
                on_epoch(run)
    except KeyboardInterrupt as err:
        # Save where the run stands, unless the signal cut a step short (a repeated signal, or a plain
        # KeyboardInterrupt without the CLI's handlers) or other workers would have to take part.
        if (isinstance(err, Interrupted) and not err.forced and manager is not None and info.is_root
                and not reducer.active and position != (kept or (0, 0))):
            if tic is not None:
                elapsed += time.perf_counter() - tic
            run.seconds = elapsed
            with deferred():
                save(*position)
            logger.info("interrupted: saved a checkpoint at %s", _position(*position))
        if manager is None:
            set_hint(err, "no checkpoint directory was given, so there is nothing to resume")
        elif kept is None:
            set_hint(err, f"no checkpoint was written to {checkpoint_dir} yet; run the command again")
        else:
            set_hint(err, f"the checkpoint of {_position(*kept)} is kept in {checkpoint_dir}; "
                          f"resume with the same command plus --resume")
        raise
    run.seconds = elapsed
    return run


# ---------------------------------------------------------------- the script's layer
@dataclass
class TrainConfig:
    """Every option of ``gluon-robust train`` (and ``scripts/train_adversarial.py``).

    Attributes mirror the command-line flags (``lr_decay_epoch`` is
    ``--lr-decay-epoch``); None means "the default of the method, the config
    or the data". See ``gluon-robust train --help``.
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
        self.kvstore = check_kvstore(self.kvstore)

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


def parse_contexts(ctx: Sequence[str]) -> List[mx.Context]:
    """``["cpu:0", "gpu:1"]`` into MXNet contexts."""
    out = []
    for text in ctx:
        kind, _, index = str(text).strip().lower().replace("(", ":").rstrip(")").partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise ConfigError(f"ctx must be cpu[:N] or gpu[:N], got {text!r}")
        out.append(mx.cpu(int(index or 0)) if kind == "cpu" else mx.gpu(int(index or 0)))
    return out


def _method_options(cfg: TrainConfig, teacher: Optional[Classifier]) -> Tuple[str, Dict[str, Any]]:
    """The method's name and options: common ones it takes, plus the specific ones the user gave."""
    name = TRAINING_METHODS.resolve(cfg.method)
    accepted = set(TRAINING_METHODS.parameters(name))
    common = {"eps": cfg.eps, "norm": cfg.norm, "steps": cfg.steps, "seed": cfg.seed,
              "attack_bn": cfg.attack_bn, "attack_updates_stats": cfg.attack_updates_stats}
    options = {k: v for k, v in common.items() if k in accepted}
    given = {"step_size": cfg.step_size, "mix": cfg.mix, "replays": cfg.replays, "temperature": cfg.temperature,
             "sigma": cfg.sigma,
             "teacher": teacher, "random_start": False if cfg.no_random_start else None,
             ("weight" if name == "input-grad" else "beta"): cfg.beta}
    flags = {"weight": "beta", "random_start": "no_random_start"}
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted:
            raise ConfigError(f"method {name} does not take {flags.get(key, key)}; it accepts "
                              f"{', '.join(sorted(accepted - {'seed'}))}")
        options[key] = value
    if name == "distill" and teacher is None:
        raise ConfigError("method distill needs a teacher (--teacher CONFIG)")
    return name, options


def _data_statistics(source: DataSource) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of (up to 2,048 samples of) a source."""
    x, _ = source.subset(slice(0, min(len(source), 2048))).arrays()
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    return tuple(float(v) for v in x.mean(axis=axes)), tuple(float(max(v, 1e-3)) for v in x.std(axis=axes))


def build_model(cfg: TrainConfig, ctx: List[mx.Context], train: DataSource) -> Tuple[Classifier, ModelConfig]:
    """The unfolded, hybridised training model on every context, and the config it will be saved with.

    The model comes from :func:`~gluon_robust.model.trainable_classifier`, like any trainable model.
    """
    size = tuple(train.sample_shape)
    if cfg.config:
        base = load_config(cfg.config)
        arch, classes, params = base.model, cfg.classes or base.classes, cfg.params or base.params
        mean, std = cfg.mean or base.mean, cfg.std or base.std
        bounds = cfg.bounds or base.bounds
        if tuple(base.input_size) != size:
            raise ConfigError(f"config {cfg.config} expects inputs {tuple(base.input_size)} but the data has {size}")
    else:
        arch, params, bounds = cfg.model, cfg.params, cfg.bounds or (0.0, 1.0)
        family = family_defaults(arch)
        names = train.classes
        classes = cfg.classes or (len(names) if names else None)
        if classes is None:
            _, labels = train.arrays() if len(train) <= 100_000 else train.subset(slice(0, 100_000)).arrays()
            classes = max(int(labels.max()) + 1, 2)
        mean, std = cfg.mean, cfg.std
        if mean is None or std is None:
            if len(family["mean"]) == size[0]:
                default_mean, default_std = family["mean"], family["std"]
            else:
                default_mean, default_std = _data_statistics(train)
                logger.info("normalisation from the training data: mean %s, std %s", default_mean, default_std)
            mean, std = mean or default_mean, std or default_std
    config = ModelConfig(model=arch, classes=int(classes), mean=tuple(mean), std=tuple(std), bounds=tuple(bounds),
                         input_size=size)
    pretrained = cfg.pretrained and not params
    options = dict(params=params, mean=config.mean, std=config.std, bounds=config.bounds, input_size=size, ctx=ctx,
                   seed=cfg.seed)
    try:
        model = trainable_classifier(arch, pretrained=pretrained, classes=config.classes, **options)
    except ModelError:
        if not pretrained:
            raise
        # the published weights have another number of classes: keep them and fine-tune a fresh output layer
        model = trainable_classifier(arch, pretrained=True, new_classes=config.classes, **options)
    return model, config


def _pretrained_class_table(cfg: TrainConfig) -> Optional[Any]:
    """The class table of a pretrained zoo net fine-tuned on its own classes (folders then map by name), or None."""
    from ..data import class_table_for

    if not (cfg.pretrained and cfg.model and not cfg.classes and not cfg.params and not cfg.config):
        return None
    return class_table_for(cfg.model, family_defaults(cfg.model)["classes"])


def run_training(cfg: TrainConfig, *, on_step: Optional[Callable[[int, int, int], None]] = None) -> Dict[str, Any]:
    """Fine-tune a zoo network as ``cfg`` says and write ``NAME.params``, ``NAME.yaml`` and ``metrics.json``.

    Returns the metrics dict written to ``metrics.json``.
    """
    ctx = parse_contexts(cfg.ctx)
    save_dir = Path(cfg.save_dir)
    table = _pretrained_class_table(cfg)
    train = load_data(cfg.data, split="train", limit=cfg.limit, class_table=table)
    val = None
    if cfg.val_limit > 0:
        val = load_data(cfg.val_data or cfg.data, split="test", limit=cfg.val_limit, class_table=table)
        if tuple(val.sample_shape) != tuple(train.sample_shape):
            raise ConfigError(f"validation samples {val.sample_shape} differ from training samples {train.sample_shape}")
        if val.name == train.name:
            logger.warning("%s has no separate test split: validating on training samples (pass val_data)", train.name)
    teacher = load_classifier(load_config(cfg.teacher), ctx=ctx[0]) if cfg.teacher else None
    name, options = _method_options(cfg, teacher)
    method = make_method(name, options)  # validates the hyperparameters before the model is built
    model, config = build_model(cfg, ctx, train)
    curriculum = None
    if cfg.curriculum != "none":
        warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else max(1, cfg.epochs // 3)
        curriculum = Curriculum(eps=cfg.eps, steps=cfg.steps, warmup_epochs=warmup, kind=cfg.curriculum)
    # PGD validation by default only for methods that train against an attack (--val-eps asks for it anyway)
    val_eps = cfg.val_eps if cfg.val_eps is not None else ((cfg.eps or None) if method.adversarial else None)
    checkable = val is not None and bool(val_eps)
    if cfg.guard and not checkable:
        raise ConfigError("the overfitting guard needs validation data (val_limit > 0) and a PGD eps")
    if cfg.guard is None and name == "fast-at" and not checkable:
        logger.warning("fast-at without validation: no guard against catastrophic overfitting")
    use_guard = cfg.guard if cfg.guard is not None else (name == "fast-at" and checkable)
    guard = OverfittingGuard(max_drop=cfg.guard_drop, on_collapse=cfg.on_collapse) if use_guard else None
    logger.info("training %s with %r on %s (%d samples), validation %s, ctx %s",
                config.model, method, train.name, len(train), val.name if val else "none", ctx)

    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def metrics_of(run: TrainingRun, final: bool) -> Dict[str, Any]:
        return {
            "config": cfg.fingerprint(), "method": repr(method), "model": config.to_dict(),
            "epochs": run.epochs, "train_seconds": round(run.seconds, 3),
            "validation_seconds": round(run.validation_seconds, 3), "stopped_early": run.stopped_early,
            "finished": final, "started": started, "versions": versions(),
            "final": run.epochs[-1] if run.epochs else None,
            "kvstore": run.kvstore, "num_workers": run.num_workers,
            "metrics_over": "all workers" if run.kvstore == "dist_sync" or run.num_workers == 1 else "rank 0",
        }

    def write_metrics(run: TrainingRun) -> None:
        if run.rank == 0:
            atomic_write_json(save_dir / "metrics.json", metrics_of(run, final=False))

    run = train_adversarial(
        model, method, train, val=val, ctx=ctx, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
        lr=cfg.lr, wd=cfg.wd, momentum=cfg.momentum, lr_decay_epochs=cfg.lr_decay_epoch, lr_decay=cfg.lr_decay,
        curriculum=curriculum, guard=guard, val_eps=val_eps, val_steps=cfg.val_steps, bn_stats=cfg.bn_stats,
        seed=cfg.seed, checkpoint_dir=save_dir / "checkpoint", checkpoint_every=cfg.checkpoint_every,
        resume=cfg.resume, fingerprint=cfg.fingerprint(), progress=cfg.progress, on_step=on_step,
        on_epoch=write_metrics, kvstore=cfg.kvstore,
    )
    config_path = save_dir / f"{cfg.run_name}.yaml"
    metrics = metrics_of(run, final=True)
    metrics["outputs"] = {"config": str(config_path), "params": str(config_path.with_suffix(".params"))}
    if run.rank == 0:  # the only writer of a distributed job; every epoch's end refused non-finite parameters
        config_path = save_trained(model, config, save_dir, cfg.run_name)
        atomic_write_json(save_dir / "metrics.json", metrics)
        # The run's outputs replace an earlier run's in --save-dir (another --name's weights, say).
        record_outputs(save_dir, [config_path.name, config_path.with_suffix(".params").name, "metrics.json"]
                       + (["checkpoint"] if (save_dir / "checkpoint").exists() else []))
        logger.info("saved %s and %s", config_path, save_dir / "metrics.json")
    return metrics

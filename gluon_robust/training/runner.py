"""The training loop itself: epochs of steps, each epoch's end, checkpoints and interruptions.

:func:`run_loop` is what :func:`~gluon_robust.training.loop.train_adversarial`
runs; see that function for the options and :mod:`.loop` for the guarantees
(exact resume, distributed workers).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from tqdm import tqdm

from ..data import DataSource
from ..errors import TrainingDiverged
from ..interrupts import Interrupted, deferred, set_hint
from ..model import Classifier
from .adversarial import TrainingMethod
from .batchnorm import recalibrate_batchnorm
from .checkpoint import CheckpointManager, structural_params
from .curriculum import Curriculum
from .guard import OverfittingGuard
from .monitor import average_running_stats, format_metrics, nonfinite_params, validate_workers
from .options import TrainingConfig
from .resume import LoopState, check_fingerprint, checkpoint_contents, load_start, restore_state
from .schedule import PositionSchedule, position_text
from .setup import LoopSetup, attack_norm, check_run, prepare, settle_dist_trainer

__all__ = ["Loop", "LoopParts", "TrainingRun", "run_loop"]

logger = logging.getLogger("gluon_robust.training.loop")
progress_logger = logging.getLogger("gluon_robust.training.progress")
_RECALIBRATION_BATCHES = 16


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


@dataclass
class LoopParts:
    """The objects a run works with beside its options: data, devices, schedule helpers and callbacks."""

    val: Optional[DataSource]
    ctx: Optional[Sequence[mx.Context]]
    curriculum: Optional[Curriculum]
    guard: Optional[OverfittingGuard]
    on_step: Optional[Callable[[int, int, int], None]]
    on_epoch: Optional[Callable[[TrainingRun], None]]
    validate: Callable[..., Dict[str, float]]


def run_loop(model: Classifier, method: TrainingMethod, train: DataSource, config: TrainingConfig,
             parts: LoopParts) -> TrainingRun:
    """Check, set up, resume if asked, and train."""
    check_run(model, method, train, parts.val, config, parts.guard)
    setup = prepare(model, train, config, parts.ctx)
    return Loop(model, method, train, config, parts, setup).execute()


class Loop:
    """One training run: its state, its steps, its epochs' ends and its checkpoints.

    ``schedule`` gives each epoch's data order and learning rate and seeds each step (default
    :class:`~gluon_robust.training.schedule.PositionSchedule`, which exact resume needs). A subclass may
    report its epochs its own way (override :meth:`_end_epoch`) or leave interruptions alone.
    """

    #: Raise TrainingDiverged when a step's loss is not finite.
    stop_on_divergence = True

    def __init__(self, model: Classifier, method: TrainingMethod, train: DataSource, config: TrainingConfig,
                 parts: LoopParts, setup: LoopSetup, schedule: Optional[Any] = None) -> None:
        self.model, self.method, self.train, self.config, self.parts = model, method, train, config, parts
        self.ctx, self.info, self.reducer = setup.ctx, setup.info, setup.reducer
        self.trainer, self.steps = setup.trainer, setup.steps_per_epoch
        self.net = model.net
        self.schedule = schedule or PositionSchedule(config.seed, config.lr, config.lr_decay_epochs, config.lr_decay)
        self.norm = attack_norm(method)
        kvstore = config.kvstore
        self.run = TrainingRun(kvstore=kvstore, num_workers=self.info.num_workers, rank=self.info.rank)
        self.checkpoint_dir = config.checkpoint_dir
        if kvstore == "dist_async" and self.checkpoint_dir is not None:
            logger.warning("kvstore dist_async: no checkpoints (the optimizer state lives on the servers)")
            self.checkpoint_dir = None
        self.progress = config.progress and self.info.is_root
        self.manager = CheckpointManager(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        self.state = self._start()
        self.tic: Optional[float] = None

    # ---------------------------------------------------------------- start
    def _start(self) -> LoopState:
        """The starting state: a checkpoint's when resuming from one, else the start of training."""
        checkpoint = load_start(self.manager, self.config.resume, self.info.is_root, self.checkpoint_dir)
        state = LoopState()
        if checkpoint is not None:
            check_fingerprint(checkpoint.state.get("fingerprint"), self.config.fingerprint, self.checkpoint_dir)
            state = restore_state(checkpoint, self.net, self.trainer, self.ctx, self.method, self.parts.guard,
                                  self.run, self.info.is_root)
        if self.config.kvstore == "dist_sync":
            settle_dist_trainer(self.trainer)
        if self.info.distributed:
            batch_size = self.config.batch_size
            logger.info("worker %d of %d (%s): %d of every %d samples per step", self.info.rank,
                        self.info.num_workers, self.config.kvstore,
                        len(np.array_split(np.arange(batch_size), self.info.num_workers)[self.info.rank]), batch_size)
        return state

    # ---------------------------------------------------------------- the run
    def execute(self) -> TrainingRun:
        """Every remaining epoch; an interruption saves where the run stands (see :meth:`_interrupted`).

        The in-memory state equals the checkpoint ``_save(*position)`` would write: steps, and an epoch's end
        with its validation and guard, run with SIGINT/SIGTERM held (see gluon_robust.interrupts), so an
        interruption lands between them and is saved there; BatchNorm recalibration is idempotent and
        validation changes nothing.
        """
        self.position = (self.state.epoch, self.state.step)
        try:
            for epoch in range(self.state.epoch, self.config.epochs):
                if self.run.stopped_early:
                    break
                self._epoch(epoch)
                if self.parts.on_epoch is not None:
                    self.parts.on_epoch(self.run)
        except KeyboardInterrupt as err:
            self._interrupted(err)
            raise
        self.run.seconds = self.state.elapsed
        return self.run

    def _epoch(self, epoch: int) -> None:
        """One epoch's steps (from the resumed step in the first), then its end."""
        config, state = self.config, self.state
        self.trainer.set_learning_rate(self.schedule.lr(epoch, self.trainer.learning_rate))
        order = self.schedule.order(epoch, len(self.train))
        first_step = state.step if epoch == state.epoch else 0
        if first_step == 0:
            state.loss_sum, state.seen = 0.0, 0
        bar = tqdm(range(first_step, self.steps), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not self.progress, leave=False, initial=first_step, total=self.steps)
        self.tic = time.perf_counter()
        for step in bar:
            with deferred():
                self._step(epoch, step, order, bar)
            if self.parts.on_step is not None:
                self.parts.on_step(epoch, step, self.run.global_step)
        bar.close()
        state.elapsed += time.perf_counter() - self.tic
        self.tic = None
        self._end_epoch(epoch, order)

    def _step(self, epoch: int, step: int, order: np.ndarray, bar: Any) -> None:
        """One step: the curriculum's budget, this worker's shards, the method's replays, the loss sums."""
        config, state, method = self.config, self.state, self.method
        if self.parts.curriculum is not None:
            eps, k = self.parts.curriculum.at(epoch + step / self.steps)
            method.set_budget(eps=eps, steps=k)
        batch = order[step * config.batch_size: (step + 1) * config.batch_size]
        batch_count = len(batch)
        if self.info.num_workers > 1:
            batch = np.array_split(batch, self.info.num_workers)[self.info.rank]
        x_np, y_np = self.train.subset(batch).arrays()
        xs = gluon.utils.split_and_load(nd.array(x_np, dtype="float32"), self.ctx, even_split=False)
        ys = gluon.utils.split_and_load(nd.array(y_np, dtype="float32"), self.ctx, even_split=False)
        for replay in range(method.replays):
            self.schedule.seed_step(epoch, step, replay)
            with autograd.record(train_mode=True):
                losses = [method(self.model, xi, yi) for xi, yi in zip(xs, ys)]
            autograd.backward(losses)
            self.trainer.step(batch_count)  # the global batch: dist_sync sums the gradients of all workers
        step_loss = sum(float(l.sum().asscalar()) for l in losses)  # the step's one sync
        if self.stop_on_divergence and not math.isfinite(step_loss):
            raise self._diverged(f"the loss became {step_loss} at epoch {epoch + 1}, step {step + 1} "
                                 f"(global step {self.run.global_step + 1})", "the parameters were")
        state.loss_sum += step_loss
        state.seen += len(y_np)
        self.run.global_step += 1
        self.position = (epoch, step + 1)
        postfix = {"loss": f"{state.loss_sum / state.seen:.4f}"}
        if method.adversarial:
            postfix["eps"] = f"{getattr(method, 'eps', 0.0):.3g}"
        bar.set_postfix(**postfix)
        every = config.checkpoint_every
        if every and self.run.global_step % every == 0 and step + 1 < self.steps:
            state.elapsed += time.perf_counter() - self.tic
            self.tic = time.perf_counter()
            self._save(epoch, step + 1)

    # ---------------------------------------------------------------- an epoch's end
    def _end_epoch(self, epoch: int, order: np.ndarray) -> None:
        """Metrics, BatchNorm recalibration, validation, the guard, the summary line and the checkpoint."""
        state, reducer = self.state, self.reducer
        epoch_loss, epoch_seen = (reducer.sum([state.loss_sum, state.seen]) if reducer.active
                                  else (state.loss_sum, state.seen))
        average_running_stats(self.net, self.ctx, reducer)
        metrics: Dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": float(epoch_loss) / max(epoch_seen, 1),
            "lr": self.trainer.learning_rate,
        }
        if self.method.adversarial:  # a method without an attack has no eps or steps to report
            metrics.update(eps=float(getattr(self.method, "eps", 0.0)), steps=int(getattr(self.method, "steps", 0)))
        metrics["seconds"] = round(state.elapsed, 3)
        if self.config.bn_stats == "clean":
            self._recalibrate(order)
        validation_seconds = self._validate(metrics)
        with deferred():
            if validation_seconds is not None:
                self.run.validation_seconds += validation_seconds
                if self.parts.guard is not None:
                    self._guard(epoch, metrics)
            (progress_logger.info if self.info.is_root else logger.debug)(
                "epoch %d/%d: %s", epoch + 1, self.config.epochs, format_metrics(metrics))
            self.run.epochs.append(metrics)
            state.loss_sum, state.seen = 0.0, 0
            self.run.seconds = state.elapsed
            self._save(epoch + 1, 0)
            self.position = (epoch + 1, 0)

    def _recalibrate(self, order: np.ndarray) -> None:
        """Re-estimate the BatchNorm running statistics on clean training batches of this epoch."""
        size = self.config.batch_size
        clean = [self.train.subset(order[i * size: (i + 1) * size]).arrays()[0]
                 for i in range(min(_RECALIBRATION_BATCHES, self.steps))]
        recalibrate_batchnorm(self.model, clean, self.ctx)

    def _validate(self, metrics: Dict[str, Any]) -> Optional[float]:
        """Add the validation accuracies to ``metrics``; the seconds it took, or None without validation here."""
        val = self.parts.val
        if val is None or not (self.reducer.active or self.info.is_root):
            return None
        started = time.perf_counter()
        metrics.update(validate_workers(self.parts.validate, self.model, val, self.ctx[0], self.info, self.reducer,
                                        eps=self.config.val_eps, steps=self.config.val_steps, norm=self.norm,
                                        batch_size=self.config.batch_size))
        if "pgd_accuracy" in metrics:  # name the check's own budget: ``steps`` is the training attack's
            metrics["pgd_iters"] = int(self.config.val_steps)
        return time.perf_counter() - started

    def _guard(self, epoch: int, metrics: Dict[str, Any]) -> None:
        """The guard's verdict on this epoch's PGD accuracy; a collapse rolls back and stops, or stops, or warns."""
        guard = self.parts.guard
        verdict = guard.update(epoch, metrics["pgd_accuracy"], params=structural_params(self.net))
        metrics["guard"] = verdict
        if verdict == "collapse" and guard.on_collapse != "warn":
            if guard.on_collapse == "rollback":
                guard.restore(structural_params(self.net))
                metrics["rolled_back_to_epoch"] = guard.best_epoch + 1
            self.run.stopped_early = (f"catastrophic overfitting after epoch {epoch + 1} "
                                      f"({guard.on_collapse}, best epoch {guard.best_epoch + 1})")

    # ---------------------------------------------------------------- checkpoints
    def _kept_message(self) -> str:
        if self.manager is None:
            return "no checkpoint directory was given"
        if self.state.kept is None:
            return f"no checkpoint of this run was written to {self.checkpoint_dir}"
        return f"the checkpoint of {position_text(*self.state.kept)} is kept in {self.checkpoint_dir}"

    def _diverged(self, what: str, unsaved: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged: {what}; {unsaved} not saved and {self._kept_message()}; "
                                f"train again with a lower --lr (now {self.trainer.learning_rate:g})")

    def _save(self, epoch: int, step: int) -> None:
        """Checkpoint (rank 0 writes; every worker must call it, as it synchronises them).

        Refuses (TrainingDiverged) to save parameters that are not all finite.
        """
        state, reducer = self.state, self.reducer
        bad = nonfinite_params(self.net)
        if bad:
            raise self._diverged(f"parameters {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} became NaN or "
                                 f"infinite by {position_text(epoch, step)}", "they were")
        if self.manager is None:
            return
        if reducer.active:
            average_running_stats(self.net, self.ctx, reducer)
            total_loss, total_seen = reducer.sum([state.loss_sum, state.seen])
            state.loss_sum, state.seen = (float(total_loss), int(total_seen)) if self.info.is_root else (0.0, 0)
        if not self.info.is_root:
            return
        contents, arrays = checkpoint_contents(self.net, self.ctx, self.method, self.parts.guard, self.run, state,
                                               epoch, step, self.config.fingerprint)
        self.manager.save(self.net, self.trainer, contents, arrays)
        state.kept = (epoch, step)

    def _interrupted(self, err: KeyboardInterrupt) -> None:
        """Save where the run stands, unless the signal cut a step short (a repeated signal, or a plain
        KeyboardInterrupt without the CLI's handlers) or other workers would have to take part; then
        tell the user how to continue."""
        state, where = self.state, self.checkpoint_dir
        if (isinstance(err, Interrupted) and not err.forced and self.manager is not None and self.info.is_root
                and not self.reducer.active and self.position != (state.kept or (0, 0))):
            if self.tic is not None:
                state.elapsed += time.perf_counter() - self.tic
            self.run.seconds = state.elapsed
            with deferred():
                self._save(*self.position)
            logger.info("interrupted: saved a checkpoint at %s", position_text(*self.position))
        if self.manager is None:
            set_hint(err, "no checkpoint directory was given, so there is nothing to resume")
        elif state.kept is None:
            set_hint(err, f"no checkpoint was written to {where} yet; run the command again")
        else:
            set_hint(err, f"the checkpoint of {position_text(*state.kept)} is kept in {where}; "
                          f"resume with the same command plus --resume")

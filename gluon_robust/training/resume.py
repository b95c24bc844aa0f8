"""Exact checkpoint and resume for the training loop: what a checkpoint holds and how a run continues from it.

A checkpoint holds the parameters (BatchNorm statistics of every context), the
optimizer state, the method's state, the guard's state and the loop position
with its partial loss sums; a resumed run restores all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..errors import ConfigError
from .adversarial import TrainingMethod
from .checkpoint import Checkpoint, CheckpointManager, join_arrays, restore_into, running_stats_arrays, split_arrays
from .guard import OverfittingGuard

__all__ = ["LoopState", "RESUMABLE", "check_fingerprint", "restore_state", "checkpoint_contents", "load_start"]

logger = logging.getLogger("gluon_robust.training.loop")

# Options a resumed run may change without changing the training itself.
# ``save_dir`` is where the checkpoint was found, so another spelling of it (or a moved directory) is the same run.
RESUMABLE = frozenset({"resume", "progress", "epochs", "checkpoint_every", "kvstore", "save_dir"})


@dataclass
class LoopState:
    """The loop's position and running sums: where it starts, and what a checkpoint of it would hold.

    ``kept`` is the (epoch, step) of this run's checkpoint on disk, None until one is written or restored.
    """

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    elapsed: float = 0.0
    kept: Optional[Tuple[int, int]] = None


def check_fingerprint(stored: Optional[Dict[str, Any]], given: Optional[Dict[str, Any]], where: Any) -> None:
    """Refuse to resume a checkpoint made with other options (those in ``RESUMABLE`` may change)."""
    if given is None or stored is None:
        return
    changed = sorted(k for k in set(stored) | set(given) if k not in RESUMABLE and stored.get(k) != given.get(k))
    if changed:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {given.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume: the checkpoint in {where} was made with other options ({detail})")


def restore_state(checkpoint: Checkpoint, net: gluon.Block, trainer: gluon.Trainer, ctx: List[mx.Context],
                  method: TrainingMethod, guard: Optional[OverfittingGuard], run: Any, is_root: bool) -> LoopState:
    """Put a checkpoint back into the network, the Trainer, the method, the guard and ``run``; the loop's state."""
    state, arrays = checkpoint.state, checkpoint.arrays
    restore_into(checkpoint, net, trainer, ctx)
    method.load_state_dict(join_arrays(state["method"], arrays))
    if guard is not None and state.get("guard") is not None:
        best = {k[len("guard/"):]: v for k, v in arrays.items() if k.startswith("guard/")}
        guard.load_state_dict(state["guard"], best or None)
    loop = LoopState(epoch=int(state["epoch"]), step=int(state["step"]), loss_sum=float(state["loss_sum"]),
                     seen=int(state["seen"]), elapsed=float(state["seconds"]))
    loop.kept = (loop.epoch, loop.step)
    run.epochs = list(state["epochs"])
    run.validation_seconds = float(state.get("validation_seconds", 0.0))
    run.stopped_early = state.get("stopped_early")
    run.global_step = run.resumed_from = int(state["global_step"])
    logger.info("resumed from checkpoint %d: epoch %d, step %d (global step %d)",
                checkpoint.generation, loop.epoch + 1, loop.step, run.global_step)
    if not is_root:  # the partial loss sums of the epoch were folded into rank 0's before saving
        loop.loss_sum, loop.seen = 0.0, 0
    return loop


def checkpoint_contents(net: gluon.Block, ctx: List[mx.Context], method: TrainingMethod,
                        guard: Optional[OverfittingGuard], run: Any, loop: LoopState, epoch: int, step: int,
                        fingerprint: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The JSON state and the arrays of a checkpoint at (``epoch``, ``step``)."""
    arrays: Dict[str, np.ndarray] = running_stats_arrays(net, ctx)
    method_state = split_arrays(method.state_dict(), "method", arrays)
    guard_state = None
    if guard is not None:
        guard_state = guard.state_dict()
        for name, value in (guard.best_params or {}).items():
            arrays[f"guard/{name}"] = value
    state = {
        "epoch": epoch, "step": step, "global_step": run.global_step, "loss_sum": loop.loss_sum, "seen": loop.seen,
        "seconds": loop.elapsed, "validation_seconds": run.validation_seconds, "epochs": run.epochs,
        "method": method_state, "guard": guard_state, "stopped_early": run.stopped_early,
        "fingerprint": fingerprint,
    }
    return state, arrays


def load_start(manager: Optional[CheckpointManager], resume: bool, is_root: bool, where: Any) -> Optional[Checkpoint]:
    """The checkpoint in ``where`` to resume from, if ``resume`` and there is one; says what happens otherwise."""
    checkpoint = manager.load() if (manager is not None and resume) else None
    if checkpoint is None and resume:
        logger.info("no checkpoint in %s: starting from scratch", where)
    elif checkpoint is None and manager is not None and is_root and manager.latest_generation() is not None:
        logger.warning("ignoring the existing checkpoint in %s (pass resume to continue it)", where)
    return checkpoint

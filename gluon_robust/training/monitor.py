"""What the training loop checks and measures: validation accuracy, finite parameters, shared BatchNorm statistics."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from ..attacks.pgd import PGD
from ..data import DataSource
from ..distributed import Reducer, WorkerInfo
from ..evaluation.robustness import evaluate_attacks
from ..model import Classifier
from .batchnorm import folded_copy
from .checkpoint import structural_params

__all__ = ["validate", "validate_workers", "nonfinite_params", "average_running_stats", "format_metrics"]


def nonfinite_params(net: gluon.Block) -> List[str]:
    """Structural names of the parameters (any context's copy) holding NaN or infinite values."""
    bad = []
    for name, param in sorted(structural_params(net).items()):
        if param._data is None:  # noqa: SLF001 -- not initialised yet: nothing to save
            continue
        if not all(np.isfinite(param.data(c).asnumpy()).all() for c in param.list_ctx()):
            bad.append(name)
    return bad


def _running_stats(net: gluon.Block) -> List[gluon.Parameter]:
    return [p for name, p in sorted(structural_params(net).items())
            if p.grad_req == "null" and name.endswith(("running_mean", "running_var"))]


def average_running_stats(net: gluon.Block, ctx: Sequence[mx.Context], reducer: Reducer) -> None:
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


def validate(
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


def validate_workers(
    check: Callable[..., Dict[str, float]], model: Classifier, val: DataSource, ctx: mx.Context, info: WorkerInfo,
    reducer: Reducer, **options: Any,
) -> Dict[str, float]:
    """``check`` (:func:`validate`) on this worker's share of ``val``, the accuracies summed over the workers."""
    if not reducer.active:
        return check(model, val, ctx, **options)
    shard = _worker_shard(val, info)
    local = check(model, shard, ctx, **options) if shard is not None else {}
    size = len(shard) if shard is not None else 0
    names = ["clean_accuracy"] + (["pgd_accuracy"] if options.get("eps") else [])
    totals = reducer.sum([size] + [round(local.get(k, 0.0) * size) for k in names])
    return {k: float(totals[i + 1] / max(totals[0], 1)) for i, k in enumerate(names)}


def format_metrics(metrics: Dict[str, Any]) -> str:
    """An epoch's metrics for its summary line: ``train_loss=0.1234, lr=0.001, ...`` (the epoch itself left out)."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "epoch")

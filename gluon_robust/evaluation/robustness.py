"""Run attacks over a data source and combine them worst case per sample.

Clean accuracy comes first; attacks only run on correctly classified points.
In ``cascade`` mode (AutoAttack's protocol, Croce & Hein 2020) each attack runs
only on the points every earlier attack of the same threat model failed to
break, which is the cheapest way to the worst case; otherwise each attack runs
on every correctly classified point, which also gives each attack's own
robust accuracy. Either way the worst case counts a point as robust only if no
attack of that threat model broke it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..attacks.base import Attack
from ..data import DataSource
from ..validation import check_source_labels
from .results import (
    AttackOutcome, BatchHook, Checkpoint, RobustnessResult, is_black_box, threat_key, threat_model,
)

__all__ = ["AttackOutcome", "RobustnessResult", "evaluate_attacks", "threat_model", "threat_key", "is_black_box", "Checkpoint"]

logger = logging.getLogger(__name__)


def evaluate_attacks(
    model,
    source: DataSource,
    attacks: Sequence[Tuple[str, Attack]],
    *,
    batch_size: int = 128,
    cascade: bool = True,
    targets: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    on_batch: Optional[BatchHook] = None,
    progress: bool = True,
    checkpoint: Optional[Checkpoint] = None,
    desc: str = "evaluate",
) -> RobustnessResult:
    """Attack every correctly classified point of ``source`` and combine the results.

    Parameters
    ----------
    model : Classifier
        The model under evaluation.
    source : DataSource
        Streamed one batch at a time, so memory stays flat in the dataset size.
    attacks : sequence of (name, Attack)
        Run in order.
    batch_size : int
        Samples per batch.
    cascade : bool
        Run each attack only on points still robust under its threat model.
    targets : callable, optional
        ``targets(x, y) -> t`` for targeted attacks.
    on_batch : callable, optional
        ``on_batch(k, batch, result, attacked)`` after attack ``k`` on each batch (e.g. to save
        adversarial examples); ``result`` is None and ``attacked`` all False when no sample of the
        batch was left to attack (none classified correctly, or every one already broken).
    progress : bool
        Show a progress bar counted in samples: a batch's misclassified samples count as done once the
        clean predictions are in, its attacked ones once the last attack of the batch ran on them;
        the running stage is its postfix.
    checkpoint : Checkpoint, optional
        Saved after every batch; a run whose checkpoint holds progress skips
        the batches already done (``batch_size`` must be the same).
    desc : str
        Label of the progress bar (e.g. ``"attack pgd"``).

    Returns
    -------
    RobustnessResult
    """
    check_source_labels(source, getattr(model, "num_classes", None))
    n = len(source)
    result = _new_result(n, attacks, cascade)
    pos = 0
    previous = 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        pos, done = saved
        _restore(result, done, pos)
        previous = done.seconds
        logger.info("resuming after %d of %d samples", pos, n)
    start = time.perf_counter()
    bar = tqdm(total=n, initial=pos, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        remaining = source.subset(slice(pos, None)) if pos else source
        for batch in remaining.batches(batch_size):
            rows = slice(pos, pos + len(batch.y))
            result.index[rows], result.labels[rows] = batch.index, batch.y
            result.clean_pred[rows] = model.predict(batch.x, batch_size=batch_size).argmax(axis=1)
            correct = result.clean_pred[rows] == batch.y
            bar.update(int((~correct).sum()))  # nothing to attack on these: done
            _attack_batch(model, batch, pos, attacks, result, correct, targets=targets, on_batch=on_batch, bar=bar)
            pos += len(batch.y)
            bar.update(int(correct.sum()))
            result.seconds = previous + time.perf_counter() - start
            if checkpoint is not None:
                checkpoint.save(pos, result)
    finally:
        bar.close()
    result.seconds = previous + time.perf_counter() - start
    _log_outcomes(result)
    return result


def _new_result(n: int, attacks: Sequence[Tuple[str, Attack]], cascade: bool) -> RobustnessResult:
    """An empty result for ``n`` samples and ``attacks``, to fill batch by batch."""
    outcomes = [
        AttackOutcome(
            name=name, norm=attack.norm.name, eps=attack.eps, broken=np.zeros(n, bool), attacked=np.zeros(n, bool),
            distance=np.full(n, np.nan), queries=np.zeros(n, np.int64), black_box=is_black_box(attack),
        )
        for name, attack in attacks
    ]
    return RobustnessResult(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), outcomes, cascade)


def _attack_batch(
    model: Any, batch: Any, pos: int, attacks: Sequence[Tuple[str, Attack]], result: RobustnessResult,
    correct: np.ndarray, *, targets: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]],
    on_batch: Optional[BatchHook], bar: Any,
) -> None:
    """Run every attack on the points of ``batch`` (at ``pos`` in the source) still to attack; record the outcomes."""
    still: Dict[Tuple[str, Optional[float]], np.ndarray] = {}
    for k, (name, attack) in enumerate(attacks):
        tm = threat_model(attack)
        todo = still.setdefault(tm, correct.copy()) if result.cascade else correct
        sel = np.flatnonzero(todo)
        if sel.size == 0:
            _nothing_attacked(on_batch, k, batch)
            continue
        bar.set_postfix_str(f"{name} {threat_key(*tm)} ({sel.size} pts)")
        t0 = time.perf_counter()
        target = targets(batch.x[sel], batch.y[sel]) if targets is not None else None
        if target is not None and (target == batch.y[sel]).any():
            keep = target != batch.y[sel]  # a target equal to the label is no attack: leave it out
            sel, target = sel[keep], target[keep]
            if sel.size == 0:
                _nothing_attacked(on_batch, k, batch)
                continue
        attack_result = attack(model, batch.x[sel], batch.y[sel], target=target)
        broken = _record(result.outcomes[k], attack, model, batch, sel, pos, attack_result, t0)
        if result.cascade:
            still[tm][sel[broken]] = False
        if on_batch is not None:
            mask = np.zeros(len(batch.y), bool)
            mask[sel] = True
            on_batch(k, batch, attack_result, mask)


def _record(outcome: AttackOutcome, attack: Attack, model: Any, batch: Any, sel: np.ndarray, pos: int,
            attack_result: Any, t0: float) -> np.ndarray:
    """Store one attack's result on the batch rows ``sel`` in ``outcome``; which of them it broke."""
    outcome.seconds += time.perf_counter() - t0
    absolute = sel + pos
    outcome.attacked[absolute] = True
    outcome.broken[absolute] = attack_result.predictions != batch.y[sel]
    outcome.distance[absolute] = attack_result.distance
    outcome.queries[absolute] = attack_result.queries
    outcome.invalid[absolute] = _invalid(attack, model, batch.x[sel], attack_result)
    return outcome.broken[absolute]


def _log_outcomes(result: RobustnessResult) -> None:
    """One log line per attack: the robust accuracy after it and what it broke."""
    for o, accuracy in zip(result.outcomes, result.cumulative_robust_accuracy()):
        logger.info(
            "%-10s %s eps=%s: robust accuracy after it %.2f%% of all %d samples (%d of %d attacked points broken, "
            "%.1f s)", o.name, o.norm, "-" if o.eps is None else f"{o.eps:g}", 100 * accuracy, result.n,
            int(o.broken.sum()), int(o.attacked.sum()), o.seconds,
        )


def _nothing_attacked(on_batch: Optional[BatchHook], k: int, batch: Any) -> None:
    """Tell ``on_batch`` that attack ``k`` had nothing to attack in ``batch``."""
    if on_batch is not None:
        on_batch(k, batch, None, np.zeros(len(batch.y), bool))


def _restore(result: RobustnessResult, done: RobustnessResult, pos: int) -> None:
    """Copy the first ``pos`` samples of a saved partial result into ``result``."""
    if [(o.name, o.norm, o.eps) for o in done.outcomes] != [(o.name, o.norm, o.eps) for o in result.outcomes]:
        raise ValueError("the checkpoint ran different attacks")
    rows = slice(0, pos)
    result.index[rows], result.labels[rows], result.clean_pred[rows] = done.index[rows], done.labels[rows], done.clean_pred[rows]
    for mine, theirs in zip(result.outcomes, done.outcomes):
        for name in ("broken", "attacked", "distance", "queries", "invalid"):
            getattr(mine, name)[rows] = getattr(theirs, name)[rows]
        mine.seconds = theirs.seconds


def _invalid(attack: Attack, model, x: np.ndarray, result) -> np.ndarray:
    """Per sample: the returned point lies outside the bounds or, for a fixed-eps attack, the eps-ball."""
    low, high = getattr(model, "bounds", (0.0, 1.0))
    adv = result.x_adv if isinstance(result.x_adv, np.ndarray) else result.x_adv.asnumpy()
    flat = adv.reshape(len(adv), -1)
    tol = 1e-5 * max(1.0, high - low)
    bad = (flat.min(axis=1) < low - tol) | (flat.max(axis=1) > high + tol) | ~np.isfinite(flat).all(axis=1)
    if attack.eps is not None:
        bad |= np.asarray(result.distance) > attack.eps * (1 + 1e-4) + 1e-6
    return bad

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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..attacks.base import Attack
from ..data import DataSource

__all__ = ["AttackOutcome", "RobustnessResult", "evaluate_attacks", "threat_model"]

logger = logging.getLogger(__name__)

#: Called with (attack index, batch, result, attacked mask) after each attack on each batch.
BatchHook = Callable[[int, object, object, np.ndarray], None]


def threat_model(attack: Attack) -> Tuple[str, Optional[float]]:
    """The ``(norm, eps)`` an attack's result counts towards."""
    return attack.norm.name, attack.eps


@dataclass
class AttackOutcome:
    """Per-sample outcome of one attack over a source."""

    name: str
    norm: str
    eps: Optional[float]
    broken: np.ndarray  # bool (N,): the attack made a correctly classified point wrong
    attacked: np.ndarray  # bool (N,): the attack ran on the point
    distance: np.ndarray  # float (N,), NaN where not attacked
    queries: np.ndarray  # int (N,)
    seconds: float = 0.0

    def robust_accuracy(self, correct: np.ndarray) -> float:
        """Fraction of all points still correct after this attack (on the points it ran on)."""
        return float((correct & ~self.broken).mean()) if len(correct) else 0.0


@dataclass
class RobustnessResult:
    """Everything an evaluation measured, per sample and aggregated."""

    index: np.ndarray
    labels: np.ndarray
    clean_pred: np.ndarray
    outcomes: List[AttackOutcome]
    cascade: bool
    seconds: float = 0.0
    extras: Dict[str, object] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @property
    def correct(self) -> np.ndarray:
        return self.clean_pred == self.labels

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else 0.0

    def threat_models(self) -> List[Tuple[str, Optional[float]]]:
        return list(OrderedDict.fromkeys((o.norm, o.eps) for o in self.outcomes))

    def robust_mask(self, norm: str, eps: Optional[float]) -> np.ndarray:
        """Points correct and unbroken by every attack of the threat model ``(norm, eps)``."""
        mask = self.correct.copy()
        for outcome in self.outcomes:
            if (outcome.norm, outcome.eps) == (norm, eps):
                mask &= ~outcome.broken
        return mask

    def broken_by(self, norm: str, eps: Optional[float]) -> List[Optional[str]]:
        """Per sample, the first attack of the threat model that broke it (None if robust or misclassified)."""
        names: List[Optional[str]] = [None] * self.n
        for outcome in self.outcomes:
            if (outcome.norm, outcome.eps) != (norm, eps):
                continue
            for i in np.flatnonzero(outcome.broken):
                names[i] = names[i] or outcome.name
        return names

    def to_report(self) -> Dict[str, object]:
        """The JSON-ready summary: n, clean accuracy, per-attack and worst-case robust accuracy, per sample."""
        attacks = [
            {
                "name": o.name,
                "norm": o.norm,
                "eps": o.eps,
                "robust_accuracy": o.robust_accuracy(self.correct),
                "attacked": int(o.attacked.sum()),
                "broken": int(o.broken.sum()),
                "seconds": round(o.seconds, 3),
                "median_distance": float(np.nanmedian(o.distance[o.broken])) if o.broken.any() else None,
                "max_distance": float(np.nanmax(o.distance[o.broken])) if o.broken.any() else None,
                "mean_queries": float(o.queries[o.attacked].mean()) if o.attacked.any() else 0.0,
            }
            for o in self.outcomes
        ]
        worst = [
            {"norm": norm, "eps": eps, "robust_accuracy": float(self.robust_mask(norm, eps).mean()) if self.n else 0.0}
            for norm, eps in self.threat_models()
        ]
        per_sample = []
        for i in range(self.n):
            entry: Dict[str, object] = {
                "index": int(self.index[i]),
                "label": int(self.labels[i]),
                "clean_prediction": int(self.clean_pred[i]),
                "robust": {},
                "broken_by": {},
            }
            per_sample.append(entry)
        for norm, eps in self.threat_models():
            key = f"{norm}@{eps:g}" if eps is not None else norm
            mask = self.robust_mask(norm, eps)
            by = self.broken_by(norm, eps)
            for i, entry in enumerate(per_sample):
                entry["robust"][key] = bool(mask[i])
                entry["broken_by"][key] = by[i]
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "mode": "cascade" if self.cascade else "individual",
            "attacks": attacks,
            "worst_case": worst,
            "seconds": round(self.seconds, 3),
            "per_sample": per_sample,
        }


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
        Called after each attack on each batch (e.g. to save adversarial examples).
    progress : bool
        Show a progress bar.

    Returns
    -------
    RobustnessResult
    """
    n = len(source)
    index = np.zeros(n, np.int64)
    labels = np.zeros(n, np.int64)
    clean_pred = np.zeros(n, np.int64)
    outcomes = [
        AttackOutcome(
            name=name, norm=attack.norm.name, eps=attack.eps, broken=np.zeros(n, bool), attacked=np.zeros(n, bool),
            distance=np.full(n, np.nan), queries=np.zeros(n, np.int64),
        )
        for name, attack in attacks
    ]
    start = time.perf_counter()
    pos = 0
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=not progress, leave=False)
    try:
        for batch in source.batches(batch_size):
            rows = slice(pos, pos + len(batch.y))
            index[rows], labels[rows] = batch.index, batch.y
            clean_pred[rows] = model.predict(batch.x, batch_size=batch_size).argmax(axis=1)
            correct = clean_pred[rows] == batch.y
            still: Dict[Tuple[str, Optional[float]], np.ndarray] = {}
            for k, (name, attack) in enumerate(attacks):
                tm = threat_model(attack)
                todo = still.setdefault(tm, correct.copy()) if cascade else correct
                sel = np.flatnonzero(todo)
                outcome = outcomes[k]
                if sel.size == 0:
                    continue
                t0 = time.perf_counter()
                target = targets(batch.x[sel], batch.y[sel]) if targets is not None else None
                result = attack(model, batch.x[sel], batch.y[sel], target=target)
                outcome.seconds += time.perf_counter() - t0
                absolute = sel + pos
                outcome.attacked[absolute] = True
                outcome.broken[absolute] = result.predictions != batch.y[sel]
                outcome.distance[absolute] = result.distance
                outcome.queries[absolute] = result.queries
                if cascade:
                    still[tm][sel[outcome.broken[absolute]]] = False
                if on_batch is not None:
                    mask = np.zeros(len(batch.y), bool)
                    mask[sel] = True
                    on_batch(k, batch, result, mask)
            pos += len(batch.y)
            bar.update(len(batch.y))
    finally:
        bar.close()
    result = RobustnessResult(index, labels, clean_pred, outcomes, cascade, seconds=time.perf_counter() - start)
    for o in outcomes:
        logger.info(
            "%-10s %s eps=%s: robust accuracy %.2f%% (%d of %d attacked points broken, %.1f s)",
            o.name, o.norm, "-" if o.eps is None else f"{o.eps:g}", 100 * o.robust_accuracy(result.correct),
            int(o.broken.sum()), int(o.attacked.sum()), o.seconds,
        )
    return result

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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..attacks.base import Attack
from ..data import DataSource
from ..validation import check_source_labels

__all__ = ["AttackOutcome", "RobustnessResult", "evaluate_attacks", "threat_model", "threat_key", "is_black_box", "Checkpoint"]

logger = logging.getLogger(__name__)

#: Called with (attack index, batch, result, attacked mask) after each attack on each batch.
BatchHook = Callable[[int, object, object, np.ndarray], None]


def threat_model(attack: Attack) -> Tuple[str, Optional[float]]:
    """The ``(norm, eps)`` an attack's result counts towards."""
    return attack.norm.name, attack.eps


def is_black_box(attack: Attack) -> bool:
    """Whether an attack only queries the model (a subclass of the black-box base, when that module exists)."""
    try:
        from ..attacks.blackbox import BlackBoxAttack
    except ImportError:  # the black-box attacks are optional
        return False
    return isinstance(attack, BlackBoxAttack)


def threat_key(norm: str, eps: Optional[float]) -> str:
    """The report key of a threat model, e.g. ``"linf@0.1"`` (just the norm for unbounded attacks)."""
    return f"{norm}@{eps:g}" if eps is not None else norm


class Checkpoint:
    """Where :func:`evaluate_attacks` keeps its progress, to resume an interrupted run.

    Subclasses persist ``(pos, result)`` after every batch; ``result`` holds
    the arrays of the first ``pos`` samples (the rest is unset).
    """

    def load(self) -> Optional[Tuple[int, "RobustnessResult"]]:
        """The saved progress, or None to start from the beginning."""
        return None

    def save(self, pos: int, result: "RobustnessResult") -> None:
        """Persist the progress after a batch."""


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
    #: bool (N,): the returned point left the bounds or the eps-ball (the base class prevents it; a sanity check)
    invalid: Optional[np.ndarray] = None
    #: whether the attack only queried the model (black-box)
    black_box: bool = False

    def __post_init__(self) -> None:
        if self.invalid is None:
            self.invalid = np.zeros(len(self.broken), bool)

    def robust_accuracy(self, correct: np.ndarray) -> float:
        """Fraction of all points still correct after this attack *alone* (it broke only the points it ran on).

        In a cascade a later stage only runs on the points earlier stages left
        robust, so this is not the robust accuracy after the stage: use
        :meth:`RobustnessResult.cumulative_robust_accuracy` there.
        """
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

    def cumulative_robust_accuracy(self) -> List[float]:
        """Per attack, the fraction of *all* ``n`` samples still robust after it and every earlier attack of its threat model.

        Every stage has the same denominator (all evaluated samples), so in the
        cascade the value after the last stage of a threat model equals its
        worst-case robust accuracy, and the values of one threat model never rise.
        """
        out = []
        running: Dict[Tuple[str, Optional[float]], np.ndarray] = {}
        for o in self.outcomes:
            mask = running.setdefault((o.norm, o.eps), self.correct.copy())
            mask &= ~o.broken
            out.append(float(mask.mean()) if self.n else 0.0)
        return out

    def to_report(self) -> Dict[str, object]:
        """The JSON-ready summary: n, clean accuracy, per-attack and worst-case robust accuracy, per sample.

        Each attack's ``cumulative_robust_accuracy`` is over all ``n`` samples
        (see :meth:`cumulative_robust_accuracy`); reports written before it held
        a per-stage ``robust_accuracy`` (what the stage alone broke) and
        ``robust_accuracy_after``, which :func:`~gluon_robust.evaluation.report.stage_accuracies` still reads.
        """
        attacks = [
            {
                "name": o.name,
                "norm": o.norm,
                "eps": o.eps,
                "attacked": int(o.attacked.sum()),
                "broken": int(o.broken.sum()),
                "seconds": round(o.seconds, 3),
                "median_distance": float(np.nanmedian(o.distance[o.broken])) if o.broken.any() else None,
                "max_distance": float(np.nanmax(o.distance[o.broken])) if o.broken.any() else None,
                "mean_queries": float(o.queries[o.attacked].mean()) if o.attacked.any() else 0.0,
                "queries": int(o.queries.sum()),
                "invalid": int(o.invalid.sum()),
                "black_box": bool(o.black_box),
            }
            for o in self.outcomes
        ]
        for entry, value in zip(attacks, self.cumulative_robust_accuracy()):
            entry["cumulative_robust_accuracy"] = value
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
                "outcomes": [
                    {
                        "attacked": bool(o.attacked[i]),
                        "broken": bool(o.broken[i]),
                        "distance": None if np.isnan(o.distance[i]) else float(o.distance[i]),
                        "queries": int(o.queries[i]),
                        "invalid": bool(o.invalid[i]),
                    }
                    for o in self.outcomes
                ],
            }
            per_sample.append(entry)
        for norm, eps in self.threat_models():
            key = threat_key(norm, eps)
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

    @classmethod
    def from_report(cls, report: Dict[str, object]) -> "RobustnessResult":
        """Rebuild the per-sample result from :meth:`to_report`'s output (the inverse, up to timing)."""
        samples = list(report["per_sample"])  # type: ignore[arg-type]
        n = len(samples)
        outcomes = []
        for k, a in enumerate(report["attacks"]):  # type: ignore[arg-type]
            rows = [s["outcomes"][k] for s in samples]
            outcomes.append(AttackOutcome(
                name=a["name"], norm=a["norm"], eps=a["eps"],
                broken=np.array([r["broken"] for r in rows], bool).reshape(n),
                attacked=np.array([r["attacked"] for r in rows], bool).reshape(n),
                distance=np.array([np.nan if r["distance"] is None else r["distance"] for r in rows],
                                  np.float64).reshape(n),
                queries=np.array([r["queries"] for r in rows], np.int64).reshape(n),
                seconds=float(a.get("seconds", 0.0)),
                invalid=np.array([r.get("invalid", False) for r in rows], bool).reshape(n),
                black_box=bool(a.get("black_box", False)),
            ))
        return cls(
            index=np.array([s["index"] for s in samples], np.int64).reshape(n),
            labels=np.array([s["label"] for s in samples], np.int64).reshape(n),
            clean_pred=np.array([s["clean_prediction"] for s in samples], np.int64).reshape(n),
            outcomes=outcomes,
            cascade=report.get("mode", "cascade") == "cascade",
            seconds=float(report.get("seconds", 0.0)),  # type: ignore[arg-type]
        )

    @classmethod
    def concatenate(cls, parts: Sequence["RobustnessResult"]) -> "RobustnessResult":
        """Join results of disjoint slices of one source (shards), in the given order."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        signature = [(o.name, o.norm, o.eps) for o in first.outcomes]
        for part in parts[1:]:
            if [(o.name, o.norm, o.eps) for o in part.outcomes] != signature or part.cascade != first.cascade:
                raise ValueError("the results ran different attacks and cannot be joined")
        outcomes = [
            AttackOutcome(
                name=o.name, norm=o.norm, eps=o.eps,
                broken=np.concatenate([p.outcomes[k].broken for p in parts]),
                attacked=np.concatenate([p.outcomes[k].attacked for p in parts]),
                distance=np.concatenate([p.outcomes[k].distance for p in parts]),
                queries=np.concatenate([p.outcomes[k].queries for p in parts]),
                seconds=sum(p.outcomes[k].seconds for p in parts),
                invalid=np.concatenate([p.outcomes[k].invalid for p in parts]),
                black_box=o.black_box,
            )
            for k, o in enumerate(first.outcomes)
        ]
        return cls(
            index=np.concatenate([p.index for p in parts]), labels=np.concatenate([p.labels for p in parts]),
            clean_pred=np.concatenate([p.clean_pred for p in parts]), outcomes=outcomes, cascade=first.cascade,
            seconds=sum(p.seconds for p in parts),
        )


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
    index = np.zeros(n, np.int64)
    labels = np.zeros(n, np.int64)
    clean_pred = np.zeros(n, np.int64)
    outcomes = [
        AttackOutcome(
            name=name, norm=attack.norm.name, eps=attack.eps, broken=np.zeros(n, bool), attacked=np.zeros(n, bool),
            distance=np.full(n, np.nan), queries=np.zeros(n, np.int64), black_box=is_black_box(attack),
        )
        for name, attack in attacks
    ]
    result = RobustnessResult(index, labels, clean_pred, outcomes, cascade)
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
            index[rows], labels[rows] = batch.index, batch.y
            clean_pred[rows] = model.predict(batch.x, batch_size=batch_size).argmax(axis=1)
            correct = clean_pred[rows] == batch.y
            bar.update(int((~correct).sum()))  # nothing to attack on these: done
            still: Dict[Tuple[str, Optional[float]], np.ndarray] = {}
            for k, (name, attack) in enumerate(attacks):
                tm = threat_model(attack)
                todo = still.setdefault(tm, correct.copy()) if cascade else correct
                sel = np.flatnonzero(todo)
                outcome = outcomes[k]
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
                outcome.seconds += time.perf_counter() - t0
                absolute = sel + pos
                outcome.attacked[absolute] = True
                outcome.broken[absolute] = attack_result.predictions != batch.y[sel]
                outcome.distance[absolute] = attack_result.distance
                outcome.queries[absolute] = attack_result.queries
                outcome.invalid[absolute] = _invalid(attack, model, batch.x[sel], attack_result)
                if cascade:
                    still[tm][sel[outcome.broken[absolute]]] = False
                if on_batch is not None:
                    mask = np.zeros(len(batch.y), bool)
                    mask[sel] = True
                    on_batch(k, batch, attack_result, mask)
            pos += len(batch.y)
            bar.update(int(correct.sum()))
            result.seconds = previous + time.perf_counter() - start
            if checkpoint is not None:
                checkpoint.save(pos, result)
    finally:
        bar.close()
    result.seconds = previous + time.perf_counter() - start
    for o, accuracy in zip(outcomes, result.cumulative_robust_accuracy()):
        logger.info(
            "%-10s %s eps=%s: robust accuracy after it %.2f%% of all %d samples (%d of %d attacked points broken, "
            "%.1f s)", o.name, o.norm, "-" if o.eps is None else f"{o.eps:g}", 100 * accuracy, result.n,
            int(o.broken.sum()), int(o.attacked.sum()), o.seconds,
        )
    return result


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

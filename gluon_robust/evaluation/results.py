"""The per-sample outcome of an evaluation: clean predictions and, per attack, what it attacked and broke.

A :class:`RobustnessResult` combines its attacks worst case per sample: a point
counts as robust under a threat model ``(norm, eps)`` only if no attack of that
threat model broke it (Croce & Hein 2020, https://arxiv.org/abs/2003.01690).
It converts to and from the rows of ``report.json``, and the results of shards
concatenate into the result of the whole run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..attacks.base import Attack

__all__ = ["AttackOutcome", "RobustnessResult", "threat_model", "threat_key", "is_black_box", "Checkpoint",
           "BatchHook"]


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

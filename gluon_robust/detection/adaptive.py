"""Adaptive attacks on a classifier protected by a detector: misclassify *and* stay unflagged.

Carlini & Wagner (2017), "Adversarial Examples Are Not Easily Detected:
Bypassing Ten Detection Methods", AISec, https://arxiv.org/abs/1705.07263;
Tramer, Carlini, Brendel & Madry (2020), "On Adaptive Attacks to Adversarial
Example Defenses", NeurIPS, https://arxiv.org/abs/2002.08347; Bryniarski,
Hingun, Pachuca, Wang & Carlini (2021), "Evading Adversarial Example
Detection Defenses with Orthogonal Projected Gradient Descent",
https://arxiv.org/abs/2106.15023 (the selective objective).

:class:`AdaptiveAttack` attacks ``z = model(x)`` (``K`` logits) and a
calibrated detector score ``s(x)`` (threshold ``tau``, clean spread
``sigma``) together. It is the per-sample worst case over several candidates:

1. *naive* examples (a classifier-only PGD, and any examples the caller
   passes in), so it never reports less evasion than the naive attack;
2. *selective* PGD: per sample and step, ascend the classification margin
   while the input is still classified correctly (with margin ``confidence``),
   and descend the detector score once it is misclassified;
3. *weighted* PGD for each weight ``c``: minimise
   ``max(z_y - max_{j != y} z_j, -confidence) + c * relu((s - tau) / sigma + score_margin)``
   (C&W 2017, section 3.1, with the detector as a penalty);

the first restart of 2 and 3 starts, where there is one, from a naive
example that is misclassified but flagged (the two-stage scheme: first
misclassify, then move off the detector while staying misclassified). Every
PGD run keeps, per sample, its best iterate over all steps (misclassified and
unflagged with the largest slack), not the last one, and each stage only
attacks the points no earlier candidate got through. Success is recomputed
at the end from real forward passes of the classifier and the detector.

:class:`~.combined.DetectorAwareClassifier` (in :mod:`.combined`) is the
pair as one network with ``K + 1`` logits (C&W 2017, section 3.1); see
there why this attack does not use it. It stays public API, tested, for
running any registered attack on the combined network.

Gradients through the detector are exact where its score is differentiable
and BPDA (identity through the squeezer) for feature squeezing, see
:meth:`gluon_robust.detection.base.Detector.score_nd`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mxnet import nd

from ..attacks.base import Attack, _padded, _pad_rows, sample_generators
from ..attacks.norms import Norm, get_norm
from ..attacks.pgd import PGD
from ..errors import ConfigError, DataError
from ..validation import check_int, check_positive
from .base import Detector
from .combined import DetectorAwareClassifier, detector_aware_loss
from .evasion import evasion_objective, evasion_pgd

__all__ = [
    "DetectorAwareClassifier", "detector_aware_loss", "AdaptiveAttack", "AdaptiveResult", "evasion_objective",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the attack
@dataclass
class AdaptiveResult:
    """What :class:`AdaptiveAttack` returns; every field is recomputed by real forward passes.

    Attributes
    ----------
    x_adv : numpy.ndarray
        The adversarial batch (per sample, the winning candidate).
    misclassified : numpy.ndarray of bool
        The classifier's prediction differs from the label.
    flagged : numpy.ndarray of bool
        The detector flags the input.
    success : numpy.ndarray of bool
        Misclassified and not flagged.
    scores : numpy.ndarray of float
        The detector's scores.
    distance : numpy.ndarray of float
        Perturbation size in the attack's norm.
    source : numpy.ndarray of str
        Which candidate each sample's ``x_adv`` came from: a name passed in
        ``candidates``, ``"naive"`` (classifier-only PGD), ``"selective"`` or
        ``"weighted c=..."`` (with ``" r<k>"`` for restart ``k > 0``), or
        ``"none"`` where no candidate misclassified it.
    """

    x_adv: np.ndarray
    misclassified: np.ndarray
    flagged: np.ndarray
    success: np.ndarray
    scores: np.ndarray
    distance: np.ndarray
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    @property
    def success_rate(self) -> float:
        """Fraction misclassified and not flagged."""
        return float(self.success.mean()) if len(self.success) else 0.0

    def wins(self) -> Dict[str, int]:
        """How many successful samples each candidate won, ``{source: count}``."""
        names, counts = np.unique(self.source[self.success].astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(names, counts)}


class AdaptiveAttack(Attack):
    """Worst case over naive and detector-aware PGD; success = misclassified and not flagged.

    Carlini & Wagner (2017), https://arxiv.org/abs/1705.07263; Tramer et al.
    (2020), https://arxiv.org/abs/2002.08347; the selective objective of
    Bryniarski et al. (2021), https://arxiv.org/abs/2106.15023. See the
    module docstring for the candidates and :func:`evasion_objective` for the
    objectives.

    Parameters
    ----------
    eps : float
        Radius of the threat model, pixel units.
    norm : str
        ``"linf"`` (default), ``"l2"`` or ``"l1"``.
    steps : int
        PGD steps per run (default 40).
    step_size : float, optional
        Default ``2.5 * eps / steps``.
    restarts : int
        Runs per objective; restart 0 starts from a misclassified-but-flagged
        naive example where there is one (``warm_start``), every other run
        from a uniform random point of the ball (seed ``seed + restart``).
    c : sequence of float
        Weights of the detector term, one weighted run each (default ``(1, 10)``).
    selective : bool
        Run the selective objective first (default True).
    confidence : float
        Logit margin by which to misclassify (default 0).
    score_margin : float
        Target of the weighted term below the threshold, in clean score spreads (default 0.1).
    naive : bool
        Also run a classifier-only PGD (cross-entropy, same budget) as a candidate (default True).
    warm_start : bool
        Start restart 0 from a misclassified but flagged candidate (default True).
    seed : int
        Seed of the random starts.

    Examples
    --------
    >>> detector.calibrate(detector.score(model, x_heldout), fpr=0.05)
    >>> naive = PGD(eps=0.3)(model, x, y)
    >>> result = AdaptiveAttack(eps=0.3)(model, detector, x, y, candidates={"pgd": naive.x_adv})
    >>> result.success.mean(), result.wins()   # misclassified and not detected; which candidate won
    """

    name = "adaptive"
    norms = ("linf", "l2", "l1")
    supports_targeted = False

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        steps: int = 40,
        step_size: Optional[float] = None,
        restarts: int = 1,
        c: Sequence[float] = (1.0, 10.0),
        selective: bool = True,
        confidence: float = 0.0,
        score_margin: float = 0.1,
        naive: bool = True,
        warm_start: bool = True,
        seed: int = 0,
    ) -> None:
        eps = check_positive("eps", eps)
        if get_norm(norm).name not in self.norms:
            raise ConfigError(f"norm must be one of {', '.join(self.norms)}; got {norm!r}")
        seed = check_int("seed", seed, minimum=0)
        super().__init__(norm=norm, eps=eps, seed=seed)
        self.steps = check_int("steps", steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else check_positive("step_size", step_size)
        self.restarts = check_int("restarts", restarts)
        weights = [c] if isinstance(c, (int, float)) else list(c)
        self.c = tuple(check_positive("c", w) for w in weights)
        self.selective = bool(selective)
        if not self.selective and not self.c:
            raise ConfigError("c must list at least one weight when selective=False, got an empty sequence")
        self.confidence = check_positive("confidence", confidence, allow_zero=True)
        self.score_margin = check_positive("score_margin", score_margin, allow_zero=True)
        self.naive = bool(naive)
        self.warm_start = bool(warm_start)

    def __repr__(self) -> str:
        return (f"AdaptiveAttack(eps={self.eps}, norm={self.norm.name!r}, steps={self.steps}, "
                f"restarts={self.restarts}, c={self.c}, selective={self.selective}, confidence={self.confidence}, "
                f"naive={self.naive})")

    def stages(self) -> List[Tuple[str, Dict[str, Any], int]]:
        """The detector-aware runs in order: ``(name, evasion_objective keywords, restart)``."""
        objectives: List[Tuple[str, Dict[str, Any]]] = []
        if self.selective:
            objectives.append(("selective", {"objective": "selective", "confidence": self.confidence}))
        for w in self.c:
            objectives.append((f"weighted c={w:g}", {"objective": "weighted", "c": w, "confidence": self.confidence,
                                                     "score_margin": self.score_margin}))
        return [(name if r == 0 else f"{name} r{r}", kw, r) for r in range(self.restarts) for name, kw in objectives]

    def _extended_call(self, model: Any, detector: Detector, x: np.ndarray, y: np.ndarray,
                       **options: Any) -> AdaptiveResult:
        """``attack(model, detector, x, y, **options)``: the sealed call hands over here, since the attack
        needs the detector too; see :meth:`evade` (``options``: ``candidates``, ``batch_size``)."""
        return self.evade(model, detector, x, y, **options)

    def _run(self, model: Any, x: nd.NDArray, y: nd.NDArray, target: Optional[nd.NDArray],
             rngs: Sequence[np.random.Generator]) -> Tuple[nd.NDArray, int]:
        """Not used: the attack needs a detector, so it runs through :meth:`evade`."""
        raise ConfigError("AdaptiveAttack needs a detector: call attack(model, detector, x, y) or attack.evade(...)")

    def evade(
        self,
        model: Any,
        detector: Detector,
        x: np.ndarray,
        y: np.ndarray,
        *,
        candidates: Optional[Mapping[str, np.ndarray]] = None,
        batch_size: int = 128,
    ) -> AdaptiveResult:
        """Attack ``x`` (true labels ``y``) against ``model`` guarded by the calibrated ``detector``.

        Parameters
        ----------
        candidates : mapping of str to numpy.ndarray, optional
            Adversarial examples found elsewhere (a naive attack's), by name;
            each is projected into the eps-ball around ``x`` and clipped to
            bounds, then counts like any other candidate.
        batch_size : int
            Samples per PGD batch.
        """
        if detector.threshold is None:
            raise ConfigError(f"detector {detector.name} is not calibrated: call calibrate(clean_scores, fpr) first")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        if x.ndim != 4 or len(x) == 0 or y.shape != (len(x),):
            raise DataError(f"x must be a non-empty (N, C, H, W) batch with labels y of shape (N,); got {x.shape} "
                            f"and {y.shape}")
        batch_size = check_int("batch_size", batch_size)
        state = _Best(model, detector, x, y, self.norm, self.eps)
        for name, cand in (candidates or {}).items():
            state.offer(str(name), np.asarray(cand, dtype=np.float32))
        if self.naive and not state.success.all():
            naive = PGD(eps=self.eps, norm=self.norm.name, steps=self.steps, step_size=self.step_size, seed=self.seed)
            state.offer("naive", naive(model, x, y).x_adv)
        for name, objective, restart in self.stages():
            todo = np.flatnonzero(~state.success)
            if todo.size == 0:
                break
            out = np.empty((todo.size,) + x.shape[1:], np.float32)
            for start in range(0, todo.size, batch_size):
                idx = todo[start : start + batch_size]
                warm = state.warm[idx] if restart == 0 and self.warm_start else None
                out[start : start + idx.size] = self._run_batch(model, detector, x[idx], y[idx], objective, warm,
                                                                restart)
            state.offer(name, out, todo)
            logger.info("adaptive %s: %d of %d evade", name, int(state.success.sum()), len(x))
        return state.result()

    def _run_batch(self, model: Any, detector: Detector, x: np.ndarray, y: np.ndarray, objective: Dict[str, Any],
             warm: Optional[np.ndarray], restart: int) -> np.ndarray:
        """One PGD run on a batch (padded to a bucketed size), from ``warm`` where given, else a random start."""
        n = len(x)
        pad = _padded(n)
        x_pad = _pad_rows(x, pad)
        start = self.norm.random_start(sample_generators(x_pad, self.seed + restart), x.shape[1:], self.eps)
        if warm is not None:
            warm_pad = _pad_rows(warm, pad)
            has = ~np.isnan(warm_pad).reshape(pad, -1).any(axis=1)
            start[has] = warm_pad[has] - x_pad[has]
        ctx = model.ctx
        x_nd = nd.array(x_pad, ctx=ctx, dtype="float32")
        y_nd = nd.array(_pad_rows(y, pad), ctx=ctx, dtype="float32")
        best = evasion_pgd(model, detector, x_nd, y_nd, nd.array(start, ctx=ctx, dtype="float32"), norm=self.norm,
                            eps=self.eps, steps=self.steps, step_size=self.step_size, objective=objective)
        return best.asnumpy()[:n]


class _Best:
    """Per sample, the best candidate so far, judged by real forward passes of the classifier and the detector.

    A candidate replaces the current one where it ranks higher: misclassified
    and unflagged (2) over misclassified (1) over neither (0); ties keep the
    earlier one. :attr:`warm` holds, per sample, the misclassified but flagged
    candidate with the lowest score (NaN where there is none), the start of
    the two-stage runs.
    """

    def __init__(self, model: Any, detector: Detector, x: np.ndarray, y: np.ndarray, norm: Norm, eps: float) -> None:
        self.model, self.detector, self.x, self.y, self.norm, self.eps = model, detector, x, y, norm, eps
        n = len(x)
        self.x_adv = x.copy()
        self.rank = np.zeros(n, np.int64)
        self.misclassified = np.zeros(n, bool)
        self.flagged = np.zeros(n, bool)
        self.scores = np.full(n, np.nan)
        self.source = np.full(n, "none", dtype=object)
        self.warm = np.full_like(x, np.nan)
        self.warm_score = np.full(n, np.inf)
        self.offered = False

    @property
    def success(self) -> np.ndarray:
        return self.rank == 2

    def _enforce(self, x: np.ndarray, cand: np.ndarray) -> np.ndarray:
        low, high = self.model.bounds
        delta = self.norm.project(nd.array(cand - x, dtype="float32"), self.eps).asnumpy()
        return np.clip(x + delta, low, high).astype(np.float32)

    def offer(self, name: str, cand: np.ndarray, idx: Optional[np.ndarray] = None) -> None:
        """Compare candidate ``cand`` for the samples ``idx`` (default all) with the best so far."""
        idx = np.arange(len(self.x)) if idx is None else idx
        if cand.shape != (idx.size,) + self.x.shape[1:]:
            raise DataError(f"candidate {name!r} has shape {cand.shape}, expected {(idx.size,) + self.x.shape[1:]}")
        cand = self._enforce(self.x[idx], cand)
        misclassified = self.model.predict(cand).argmax(axis=1) != self.y[idx]
        scores = self.detector.score(self.model, cand)
        flagged = self.detector.is_flagged(scores)
        rank = np.where(misclassified & ~flagged, 2, np.where(misclassified, 1, 0))
        take = (rank > self.rank[idx]) | (not self.offered)
        sel = idx[take]
        self.x_adv[sel] = cand[take]
        self.rank[sel] = rank[take]
        self.misclassified[sel] = misclassified[take]
        self.flagged[sel] = flagged[take]
        self.scores[sel] = scores[take]
        self.source[sel] = np.where(rank[take] > 0, name, "none")
        warm = misclassified & flagged & (scores < self.warm_score[idx])
        self.warm[idx[warm]] = cand[warm]
        self.warm_score[idx[warm]] = scores[warm]
        self.offered = True

    def result(self) -> AdaptiveResult:
        distance = self.norm.distance(nd.array(self.x_adv - self.x, dtype="float32")).asnumpy().astype(np.float64)
        return AdaptiveResult(
            x_adv=self.x_adv, misclassified=self.misclassified.copy(), flagged=self.flagged.copy(),
            success=self.success.copy(), scores=self.scores.copy(), distance=distance, source=self.source.copy(),
        )

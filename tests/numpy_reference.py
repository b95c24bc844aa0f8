"""Independent float64 NumPy implementations of APGD and Square on a softmax-linear model.

Written from the papers (Croce & Hein 2020, https://arxiv.org/abs/2003.01690,
Algorithm 1; Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049,
Algorithms 1 to 3) and from the decisions of the authors' reference code that
``gluon_robust.attacks.apgd.APGD`` and ``gluon_robust.attacks.square.SquareAttack``
document, one sample at a time with scalar control flow: nothing here imports
or calls the attack classes. The model is ``logits = W x + b`` with
closed-form input gradients, so every iterate can be checked against the
MXNet attacks running the same model in float32.

The random draws follow the order the attacks' docstrings describe, from one
generator per sample seeded by ``(seed, crc32 of the sample's float32 bytes)``
(re-derived here, not imported).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

TINY = 1e-12


def generator(sample: np.ndarray, seed: int) -> np.random.Generator:
    """The per-sample generator the project documents: seeded by ``seed`` and the sample's float32 bytes."""
    data = np.ascontiguousarray(sample, dtype=np.float32).tobytes()
    return np.random.default_rng([seed, zlib.crc32(data)])


# ---------------------------------------------------------------------------- model
class SoftmaxLinear:
    """``logits = W x + b`` on (C, H, W) inputs in ``bounds``, float64, with closed-form input gradients."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, shape: Tuple[int, int, int],
                 bounds: Tuple[float, float] = (0.0, 1.0)) -> None:
        self.weight = np.asarray(weight, np.float64)
        self.bias = np.asarray(bias, np.float64)
        self.shape = tuple(shape)
        self.bounds = bounds
        self.centre = np.zeros(len(self.bias))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.weight @ np.asarray(x, np.float64).reshape(-1) + self.bias

    def loss_grad(self, x: np.ndarray, y: int, loss: str, target: Optional[int] = None) -> Tuple[float, np.ndarray, np.ndarray]:
        """The loss to ascend, its input gradient and the logits at ``x``.

        ``ce``: cross-entropy of ``y`` (targeted: log-probability of ``target``);
        ``dlr``: the DLR loss of the APGD paper (targeted: its targeted form);
        ``quadratic``: ``-||z - centre||^2`` for the attribute ``centre`` (K,), a
        concave objective with an interior maximum when ``centre`` is reachable.
        """
        z = self.logits(x)
        k = len(z)
        e = np.eye(k)
        if loss == "ce":
            p = np.exp(z - z.max())
            p /= p.sum()
            log_sum = z.max() + math.log(np.exp(z - z.max()).sum())
            if target is None:
                value, dz = log_sum - z[y], p - e[y]
            else:
                value, dz = z[target] - log_sum, e[target] - p
        elif loss == "dlr":
            order = np.argsort(-z, kind="stable")
            if target is None:
                other = max((j for j in range(k) if j != y), key=lambda j: z[j])
                num = z[y] - z[other]
                den = z[order[0]] - z[order[2]] + TINY
                value = -num / den
                dz = -(e[y] - e[other]) / den + num / den**2 * (e[order[0]] - e[order[2]])
            else:
                num = z[y] - z[target]
                den = z[order[0]] - 0.5 * (z[order[2]] + z[order[3]]) + TINY
                value = -num / den
                dz = -(e[y] - e[target]) / den + num / den**2 * (e[order[0]] - 0.5 * e[order[2]] - 0.5 * e[order[3]])
        elif loss == "quadratic":
            value, dz = -float(((z - self.centre) ** 2).sum()), -2.0 * (z - self.centre)
        else:
            raise ValueError(f"unknown loss {loss!r}")
        return float(value), (self.weight.T @ dz).reshape(self.shape), z

    def gluon(self) -> gluon.HybridBlock:
        """The same model as a float32 Gluon Dense layer (flattening its input)."""
        k, d = self.weight.shape
        dense = gluon.nn.Dense(k, in_units=d)
        dense.initialize()
        dense.weight.set_data(mx.nd.array(self.weight.astype(np.float32)))
        dense.bias.set_data(mx.nd.array(self.bias.astype(np.float32)))
        return dense


def random_softmax_linear(classes: int, shape: Tuple[int, int, int], seed: int, scale: float = 1.0) -> SoftmaxLinear:
    """A softmax-linear model with float32-representable Gaussian weights."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    weight = (scale * rng.normal(size=(classes, d)) / math.sqrt(d)).astype(np.float32)
    bias = (0.1 * rng.normal(size=classes)).astype(np.float32)
    return SoftmaxLinear(weight, bias, shape)


# ----------------------------------------------------------------------------- APGD
@dataclass
class APGDRun:
    """One run of one sample: its iterates, the step size after each step, and its results."""

    xs: List[np.ndarray] = field(default_factory=list)  # x^(0), x^(1), ... before any checkpoint reset
    etas: List[float] = field(default_factory=list)  # eta before step 1, then after each step's checkpoint
    x_best: Optional[np.ndarray] = None
    loss_best: float = -math.inf
    x_found: Optional[np.ndarray] = None
    #: |difference| of every loss comparison that decided something, and the smallest |gradient| / max |gradient|.
    gaps: List[float] = field(default_factory=list)
    sign_margin: float = math.inf
    #: Checkpoints whose count of increasing steps equals ``rho * gap`` exactly (where ``<=`` and ``<`` differ).
    boundary_checks: int = 0
    #: First checkpoints where the best loss had not improved but the loss had risen often enough: only the
    #: "not halved at the previous checkpoint" state (set at the start) keeps the step size there.
    first_check_unimproved: int = 0


def checkpoint_gaps(steps: int) -> List[int]:
    """The reference's gaps between checkpoints: floor(0.22 N), shrinking by floor(0.03 N), at least floor(0.06 N)."""
    gap = max(22 * steps // 100, 1)
    shrink = max(3 * steps // 100, 1)
    least = max(6 * steps // 100, 1)
    gaps = []
    total = 0
    while total + gap <= steps:
        gaps.append(gap)
        total += gap
        gap = max(gap - shrink, least)
    return gaps


def _apgd_run(model: SoftmaxLinear, x0: np.ndarray, y: int, aim: Optional[int], loss: str, eps: float, norm: str,
              steps: int, rho: float, alpha: float, rng: np.random.Generator, random_start: bool,
              targeted_success: bool) -> APGDRun:
    low, high = model.bounds
    out = APGDRun()

    def project(z: np.ndarray) -> np.ndarray:
        if norm == "linf":
            return np.clip(np.minimum(np.maximum(z, x0 - eps), x0 + eps), low, high)
        d = z - x0
        size = math.sqrt(float((d**2).sum()))
        return np.clip(x0 + d / (size + TINY) * min(eps, size), low, high)

    def direction(g: np.ndarray) -> np.ndarray:
        if norm == "linf":
            return np.sign(g)
        return g / (math.sqrt(float((g**2).sum())) + TINY)

    def succeeded(z: np.ndarray) -> bool:
        label = int(np.argmax(z))
        return label == aim if targeted_success else label != y

    x = x0.copy()
    if random_start:
        if norm == "linf":
            t = rng.uniform(-1.0, 1.0, size=x0.shape)
            delta = eps * t / (np.abs(t).max() + TINY)
        else:
            t = rng.standard_normal(x0.shape)
            delta = eps * t / (math.sqrt(float((t**2).sum())) + TINY)
        x = np.clip(x0 + delta, low, high)
    f, g, z = model.loss_grad(x, y, loss, aim)
    out.sign_margin = min(out.sign_margin, float(np.abs(g).min() / (np.abs(g).max() + TINY)))
    x_prev = x
    best, f_best, g_best = x, f, g
    if succeeded(z):
        out.x_found = x
    eta = 2.0 * eps
    out.xs.append(x)
    out.etas.append(eta)

    gaps = checkpoint_gaps(steps)
    gap_index, since_check, increases = 0, 0, 0
    reduced_at_check, best_at_check = True, f_best
    f_history = 0.0  # the reference's loss history is zero before the first step
    for i in range(steps):
        a = alpha if i > 0 else 1.0
        z1 = project(x + eta * direction(g))
        z2 = project(x + a * (z1 - x) + (1.0 - a) * (x - x_prev))
        x_prev, x = x, z2
        f, g, z = model.loss_grad(x, y, loss, aim)
        out.sign_margin = min(out.sign_margin, float(np.abs(g).min() / (np.abs(g).max() + TINY)))
        if succeeded(z):
            out.x_found = x
        previous = f if steps == 1 else f_history
        out.gaps.append(abs(f - previous))
        increases += f > previous
        f_history = f
        out.gaps.append(abs(f - f_best))
        if f > f_best:
            best, f_best, g_best = x, f, g
        seen = x
        since_check += 1
        if gap_index < len(gaps) and since_check == gaps[gap_index]:
            window = gaps[gap_index]
            oscillating = increases <= rho * window
            out.boundary_checks += increases == rho * window
            out.first_check_unimproved += gap_index == 0 and best_at_check >= f_best and not oscillating
            no_improvement = (not reduced_at_check) and best_at_check >= f_best
            halve = oscillating or no_improvement
            reduced_at_check, best_at_check = halve, f_best
            if halve:
                eta /= 2.0
                x, g = best, g_best
            gap_index += 1
            increases = 0
            since_check = 0
        out.xs.append(seen)
        out.etas.append(eta)
    out.x_best, out.loss_best = best, f_best
    return out


def apgd_reference(model: SoftmaxLinear, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "linf",
                   steps: int = 100, restarts: int = 1, loss: str = "ce", rho: float = 0.75, alpha: float = 0.75,
                   seed: int = 0, target: Optional[np.ndarray] = None, n_target_classes: Optional[int] = None,
                   random_start: bool = True) -> Tuple[np.ndarray, List[List[APGDRun]]]:
    """APGD (or, with ``n_target_classes``, APGD-T) on each sample; returns ``(x_adv, runs per sample)``.

    Per sample: runs (restarts, or targets then restarts) until one succeeds;
    the result is the last successful iterate of that run, else the point of
    strictly highest loss over the runs (the first run's on ties).
    """
    x_adv = []
    all_runs = []
    for i in range(len(x)):
        x0 = x[i].astype(np.float64)
        label = int(y[i])
        rng = generator(x[i], seed)
        if n_target_classes is None:
            aims = [None if target is None else int(target[i])] * restarts
        else:
            z = model.logits(x0)
            ranked = [j for j in np.argsort(-z, kind="stable") if j != label]
            aims = [int(ranked[j]) for j in range(min(n_target_classes, len(z) - 1)) for _ in range(restarts)]
        result, best_loss, runs = x0, -math.inf, []
        for aim in aims:
            run = _apgd_run(model, x0, label, aim, loss, eps, norm, steps, rho, alpha, rng, random_start,
                            targeted_success=target is not None)
            runs.append(run)
            if run.x_found is not None:
                result = run.x_found
                break
            if run.loss_best > best_loss:
                result, best_loss = run.x_best, run.loss_best
        x_adv.append(result)
        all_runs.append(runs)
    return np.stack(x_adv), all_runs


# --------------------------------------------------------------------------- Square
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(p_init: float, i: int, iterations: Optional[int]) -> float:
    """p at 0-based iteration ``i``: halved after raw iterations 10, 50, ..., 8000 (rescaled to ``iterations`` if given)."""
    it = int(i / iterations * 10000) if iterations is not None else i
    p = p_init
    for t in _HALVINGS:
        if it > t:
            p /= 2
    return p


def _eta_rectangle(rows: int, cols: int) -> np.ndarray:
    """Nested squares around (rows // 2, cols // 2): ring r gains 1 / (r + 1)^2 for every r' >= r, unit norm."""
    out = np.zeros((rows, cols))
    cr, cc = rows // 2, cols // 2
    for r in range(max(rows // 2 + 1, cols // 2 + 1)):
        out[max(cr - r, 0) : cr + r + 1, max(cc - r, 0) : cc + r + 1] += 1.0 / (r + 1) ** 2
    return out / np.sqrt((out**2).sum())


def _eta(s: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((s, s))
    out[: s // 2] = _eta_rectangle(s // 2, s)
    out[s // 2 :] = -_eta_rectangle(s - s // 2, s)
    out /= np.sqrt((out**2).sum())
    if rng.random() > 0.5:
        out = out.T
    return out


@dataclass
class SquareRun:
    """One sample's Square search: the candidate and the best point at every iteration."""

    candidates: List[np.ndarray] = field(default_factory=list)
    bests: List[np.ndarray] = field(default_factory=list)
    margins: List[float] = field(default_factory=list)
    gaps: List[float] = field(default_factory=list)  # |loss difference| of every acceptance test


def square_reference(model: SoftmaxLinear, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "linf",
                     max_queries: int = 1000, p_init: float = 0.8, rescale_schedule: bool = False, seed: int = 0,
                     target: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[SquareRun]]:
    """Square Attack on each sample, ``max_queries - 1`` iterations at most; returns ``(x_best, runs)``."""
    low, high = model.bounds
    c, h, w = model.shape
    iterations = max_queries - 1
    results, runs = [], []
    for i in range(len(x)):
        x0 = x[i].astype(np.float64)
        label = int(y[i]) if target is None else int(target[i])
        rng = generator(x[i], seed)

        def margin_loss(point: np.ndarray) -> Tuple[float, float]:
            z = model.logits(point)
            others = max(z[j] for j in range(len(z)) if j != label)
            if target is None:
                m = z[label] - others
                return m, m
            top = z.max()
            ce = top + math.log(np.exp(z - top).sum()) - z[label]
            return others - z[label], ce

        run = SquareRun()
        if norm == "linf":
            best = np.clip(x0 + eps * rng.choice([-1.0, 1.0], size=(c, 1, w)), low, high)
        else:
            s = max(h // 5, 1)
            first = max((h - 5 * s) // 2, 0)
            delta = np.zeros((c, h, w))
            for a in range(h // s):
                for b in range(w // s):
                    r, q = first + a * s, first + b * s
                    tile = _eta(s, rng)[None] * rng.choice([-1.0, 1.0], size=(c, 1, 1))
                    block = delta[:, r : r + s, q : q + s]
                    block += tile[:, : block.shape[1], : block.shape[2]]
            best = np.clip(x0 + eps * delta / (np.sqrt((delta**2).sum()) + TINY), low, high)
        m_best, l_best = margin_loss(best)
        run.candidates.append(best)
        run.bests.append(best)
        run.margins.append(m_best)
        for it in range(iterations):
            if m_best <= 0:
                break
            p = square_p(p_init, it, iterations if rescale_schedule else None)
            s = int(round(math.sqrt(p * h * w)))
            if norm == "linf":
                s = min(max(s, 1), min(h, w))
                r, q = rng.integers(0, max(h - s, 1)), rng.integers(0, max(w - s, 1))
                step = np.zeros((c, h, w))
                step[:, r : r + s, q : q + s] = 2.0 * eps * rng.choice([-1.0, 1.0], size=(c, 1, 1))
                cand = np.clip(np.minimum(np.maximum(best + step, x0 - eps), x0 + eps), low, high)
            else:
                s = max(s, 3)
                if s % 2 == 0:
                    s += 1
                s = min(s, min(h, w))
                r1, q1 = rng.integers(0, max(h - s, 1)), rng.integers(0, max(w - s, 1))
                r2, q2 = rng.integers(0, max(h - s, 1)), rng.integers(0, max(w - s, 1))
                delta = best - x0
                mask = np.zeros((c, h, w))
                mask[:, r1 : r1 + s, q1 : q1 + s] = 1.0
                mask[:, r2 : r2 + s, q2 : q2 + s] = 1.0
                window_energy = ((delta * mask) ** 2).sum(axis=(1, 2), keepdims=True)
                old = delta[:, r1 : r1 + s, q1 : q1 + s]
                old = old / (TINY + np.sqrt((old**2).sum(axis=(1, 2), keepdims=True)))
                new = _eta(s, rng)[None] * rng.choice([-1.0, 1.0], size=(c, 1, 1)) + old
                budget = max(eps**2 - float((delta**2).sum()), 0.0) / c
                new = new / (TINY + np.sqrt((new**2).sum(axis=(1, 2), keepdims=True))) * np.sqrt(budget + window_energy)
                delta = delta.copy()
                delta[:, r2 : r2 + s, q2 : q2 + s] = 0.0
                delta[:, r1 : r1 + s, q1 : q1 + s] = new
                cand = np.clip(x0 + eps * delta / (np.sqrt((delta**2).sum()) + TINY), low, high)
            m, l_new = margin_loss(cand)
            if np.abs(cand - best).max() > 1e-9:  # a real change (not rounding) is decided on its loss
                run.gaps.append(abs(l_new - l_best))
                run.gaps.append(abs(m))
            improved = l_new < l_best
            if improved:
                l_best = l_new
            if improved or m <= 0:
                m_best, best = m, cand
            run.candidates.append(cand)
            run.bests.append(best)
            run.margins.append(m_best)
        results.append(best)
        runs.append(run)
    return np.stack(results), runs

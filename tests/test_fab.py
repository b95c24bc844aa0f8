"""FAB and FAB-T: exact box projections, closed-form optima, the contract on a small conv net."""

from __future__ import annotations

import logging
from typing import Tuple

import numpy as np
import pytest
from mxnet import nd
from scipy.optimize import linprog, minimize

from conftest import linear_classifier
from gluon_robust.attacks.fab import FAB, FABT, box_projection
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier

Batch = Tuple[np.ndarray, np.ndarray]  # inputs and labels

logger = logging.getLogger(__name__)


def _dual(norm: str, w: np.ndarray) -> float:
    return float(np.linalg.norm(w.ravel())) if norm == "l2" else float(np.abs(w).sum())


def _norm(norm: str, delta: np.ndarray) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


# ------------------------------------------------------------ the projection
def _reference_projection(norm: str, x: np.ndarray, w: np.ndarray, c: float) -> float:
    """min ||delta|| s.t. <w, delta> = c and 0 <= x + delta <= 1, by a generic solver (LP for L-inf, SLSQP for L2)."""
    d = len(x)
    box = list(zip(-x, 1 - x))
    if norm == "linf":  # variables (delta, t): minimise t with -t <= delta <= t
        a_ub = np.vstack([np.hstack([np.eye(d), -np.ones((d, 1))]), np.hstack([-np.eye(d), -np.ones((d, 1))])])
        res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                      bounds=box + [(0, None)])
        return float(res.fun)
    res = minimize(lambda z: z @ z, np.zeros(d), jac=lambda z: 2 * z, method="SLSQP", bounds=box,
                   constraints=[{"type": "eq", "fun": lambda z: w @ z - c, "jac": lambda z: w}],
                   options={"ftol": 1e-14, "maxiter": 500})
    return float(np.sqrt(res.fun))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_box_projection_is_the_exact_constrained_minimum(norm: str) -> None:
    rng = np.random.RandomState(0)
    n, d = 40, 6
    x = rng.rand(n, d)
    x[rng.rand(n, d) < 0.2] = 1.0  # some coordinates on the box faces
    w = rng.randn(n, d)
    w[rng.rand(n, d) < 0.1] = 0.0
    c = rng.randn(n) * rng.choice([0.1, 1.0, 3.0], n)
    delta = box_projection(nd.array(x), nd.array(w), nd.array(c), 0.0, 1.0, norm).asnumpy().astype(np.float64)
    assert (x + delta >= -1e-6).all() and (x + delta <= 1 + 1e-6).all()
    reach_hi = np.maximum(w * -x, w * (1 - x)).sum(axis=1)  # the largest <w, delta> inside the box
    reach_lo = np.minimum(w * -x, w * (1 - x)).sum(axis=1)
    feasible = (reach_lo <= c) & (c <= reach_hi)
    assert 5 <= feasible.sum() < n, "the draw must cover both feasible and infeasible hyperplanes"
    gaps = []
    for i in range(n):
        reached = w[i] @ delta[i]
        if not feasible[i]:  # the box corner closest to the hyperplane
            assert reached == pytest.approx(reach_hi[i] if c[i] > reach_hi[i] else reach_lo[i], abs=1e-5)
            continue
        assert reached == pytest.approx(c[i], abs=1e-5)
        got = _norm(norm, delta[i:i + 1])[0]
        gaps.append(got - _reference_projection(norm, x[i], w[i], c[i]))
    logger.info("box projection %s: gap to the reference solver in [%.2e, %.2e]", norm, min(gaps), max(gaps))
    assert np.abs(gaps).max() <= 1e-5


def test_box_projection_rejects_other_norms() -> None:
    with pytest.raises(ConfigError, match="l1"):
        box_projection(nd.zeros((1, 2)), nd.ones((1, 2)), nd.ones((1,)), 0.0, 1.0, "l1")


# ------------------------------------------------------------ closed forms
def _linear_problem(seed: int, n: int = 24) -> Tuple[Classifier, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A linear model on an unclipped domain, points with |f(x)| >= 0.1, labels, f(x) and w."""
    rng = np.random.RandomState(seed)
    w = rng.randn(3, 5).astype(np.float32)
    b = float(rng.randn())
    x = rng.uniform(-2, 2, (4 * n, 1, 3, 5)).astype(np.float32)
    f = x.reshape(len(x), -1).astype(np.float64) @ w.ravel().astype(np.float64) + b
    keep = np.flatnonzero(np.abs(f) >= 0.1)[:n]
    return linear_classifier(w, b), x[keep], (f[keep] > 0).astype(np.int64), f[keep], w


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_matches_closed_form_optimum_on_linear_model(norm: str) -> None:
    model, x, y, f, w = _linear_problem(seed=0)
    optimum = np.abs(f) / _dual(norm, w)
    result = FAB(norm=norm, steps=30)(model, x, y)
    ratio = result.distance / optimum
    logger.info("fab %s: distance / optimum in [%.6f, %.6f]", norm, ratio.min(), ratio.max())
    assert result.success.all()
    assert ratio.min() >= 1 - 1e-4, "FAB beat the closed-form optimum: the distance is wrong"
    assert ratio.max() <= 1.05


def _box_optimum(x: np.ndarray, w: np.ndarray, norm: str) -> float:
    """The minimal perturbation of ``x`` in [0, 1] that crosses ``<w, z> = 0``: by bisection along clip(x + t s d).

    By KKT the optimum has this form with d = w (L2) or sign(w) (L-inf); f along it is monotone in t.
    """
    f0 = float(x @ w)
    toward = -np.sign(f0) * (w if norm == "l2" else np.sign(w))

    def crossed(t: float) -> bool:
        return float(np.clip(x + t * toward, 0, 1) @ w) * np.sign(f0) <= 0

    lo, hi = 0.0, 1.0
    while not crossed(hi):
        hi *= 2
    for _ in range(100):
        lo, hi = (lo, (lo + hi) / 2) if crossed((lo + hi) / 2) else ((lo + hi) / 2, hi)
    return float(_norm(norm, (np.clip(x + hi * toward, 0, 1) - x)[None])[0])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_matches_box_constrained_optimum_on_bounded_linear_model(norm: str) -> None:
    """In [0, 1] with half the pixels saturated, the unconstrained projection would leave the box."""
    rng = np.random.RandomState(4)
    w = rng.randn(4, 4).astype(np.float32)
    x = rng.rand(40, 16).astype(np.float32)
    saturated = rng.rand(40, 16) < 0.5
    x[saturated] = (rng.rand(int(saturated.sum())) < 0.5).astype(np.float32)
    f = x.astype(np.float64) @ w.ravel().astype(np.float64)
    keep = np.abs(f) > 0.2
    x, f = x[keep], f[keep]
    model = linear_classifier(w, 0.0, bounds=(0.0, 1.0))
    result = FAB(norm=norm, steps=30)(model, x.reshape(-1, 1, 4, 4), (f > 0).astype(np.int64))
    optimum = np.array([_box_optimum(xi, w.ravel().astype(np.float64), norm) for xi in x.astype(np.float64)])
    ratio = result.distance / optimum
    logger.info("fab %s in [0, 1]: distance / box optimum in [%.6f, %.6f]", norm, ratio.min(), ratio.max())
    assert result.success.all()
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.05


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_t_matches_closed_form_optimum_on_linear_model(norm: str) -> None:
    """With two classes the only target's boundary z_t = z_y is the decision boundary."""
    model, x, y, f, w = _linear_problem(seed=1, n=12)
    result = FABT(norm=norm, steps=20)(model, x, y)
    ratio = result.distance / (np.abs(f) / _dual(norm, w))
    assert result.success.all() and (result.iterations == 20).all()
    assert 1 - 1e-4 <= ratio.min() and ratio.max() <= 1.05


# ------------------------------------------------------------ conv net
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fools_every_point_of_tiny_model_inside_bounds(tiny_model: Classifier, tiny_batch: Batch, norm: str) -> None:
    x, y = tiny_batch
    result = FAB(norm=norm, steps=30)(tiny_model, x, y)
    assert result.success.all()
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert np.allclose(result.distance, _norm(norm, result.x_adv - x), atol=1e-5)
    assert (result.iterations == 30).all()
    # Minimal: a perturbation much smaller than the one found does not fool the model (here: halving it).
    halfway = x + 0.5 * (result.x_adv - x)
    assert (tiny_model.predict(halfway).argmax(axis=1) == y).mean() >= 0.9


def test_deterministic_and_batch_independent(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    attack = FAB(norm="linf", steps=15, restarts=2, restart_eps=0.1, seed=3)
    first = attack(tiny_model, x, y)
    again = attack(tiny_model, x, y)
    np.testing.assert_array_equal(first.x_adv, again.x_adv)
    for i in (0, 5):
        alone = attack(tiny_model, x[i:i + 1], y[i:i + 1])
        np.testing.assert_allclose(alone.x_adv[0], first.x_adv[i], atol=1e-4)


def test_restarts_never_hurt(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    one = FAB(norm="l2", steps=10)(tiny_model, x, y)
    three = FAB(norm="l2", steps=10, restarts=3, restart_eps=0.5)(tiny_model, x, y)
    assert three.success.all() and (three.iterations == 30).all()
    assert (three.distance <= one.distance + 1e-5).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.18)])
def test_fixed_eps_cuts_to_the_ball_and_fab_t_is_at_least_as_strong(
    tiny_model: Classifier, tiny_batch: Batch, norm: str, eps: float
) -> None:
    x, y = tiny_batch
    free = FAB(norm=norm, steps=30)(tiny_model, x, y)
    cut = FAB(norm=norm, steps=30, eps=eps)(tiny_model, x, y)
    targeted = FABT(norm=norm, steps=30, eps=eps, n_target_classes=3)(tiny_model, x, y)
    assert 0 < cut.success.mean() < 1, "eps must split the batch for the test to mean anything"
    for result in (cut, targeted):
        assert (result.distance <= eps * (1 + 1e-5)).all()
    # Every point whose minimal perturbation fits in the ball stays fooled.
    assert cut.success[free.distance <= eps].all()
    logger.info("fab %s eps=%g: FAB %.3f, FAB-T %.3f", norm, eps, cut.success.mean(), targeted.success.mean())
    assert targeted.success.mean() >= cut.success.mean()
    assert (targeted.iterations == 90).all()


# ------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"alpha_max": 1.5}, "alpha_max"),
        ({"alpha_max": -0.1}, "alpha_max"),
        ({"eta": 0.9}, "eta"),
        ({"beta": 0.0}, "beta"),
        ({"beta": 1.2}, "beta"),
        ({"eps": -1.0}, "eps"),
        ({"restart_eps": 0.0}, "restart_eps"),
        ({"restarts": 2}, "restart_eps"),
        ({"norm": "l1"}, "norm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FAB(**kwargs)


def test_fab_t_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="n_target_classes"):
        FABT(n_target_classes=0)
    with pytest.raises(ConfigError, match="steps"):
        FABT(steps=1.5)


@pytest.mark.parametrize("cls", [FAB, FABT])
def test_has_no_targeted_mode(cls: type, tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="targeted"):
        cls(steps=1)(tiny_model, x, y, target=(y + 1) % 10)

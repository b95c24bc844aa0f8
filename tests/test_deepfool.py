"""DeepFool: closed-form optima on linear models, and the contract on a small conv net."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Tuple

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from gluon_robust.attacks.deepfool import DeepFool
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier, load_classifier

from conftest import linear_classifier

Batch = Tuple[np.ndarray, np.ndarray]  # inputs and labels

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


def _linear_problem(seed: int, n: int = 24) -> Tuple[Classifier, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A linear model, points with |f(x)| >= 0.1 and their labels, and f(x)."""
    rng = np.random.RandomState(seed)
    w = rng.randn(3, 5).astype(np.float32)
    b = float(rng.randn())
    x = rng.uniform(-2, 2, (4 * n, 1, 3, 5)).astype(np.float32)
    f = x.reshape(len(x), -1).astype(np.float64) @ w.reshape(-1).astype(np.float64) + b
    keep = np.flatnonzero(np.abs(f) >= 0.1)[:n]
    return linear_classifier(w, b), x[keep], (f[keep] > 0).astype(np.int64), f[keep], w


def _snapshot(model: Classifier) -> Dict[str, np.ndarray]:
    return {name: p.data().asnumpy().copy() for name, p in model.collect_params().items()}


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("overshoot", [0.02, 0.0])
def test_matches_closed_form_optimum_on_linear_model(norm: str, overshoot: float) -> None:
    model, x, y, f, w = _linear_problem(seed=0)
    dual = np.linalg.norm(w.ravel()) if norm == "l2" else np.abs(w).sum()
    optimum = np.abs(f) / dual
    result = DeepFool(norm=norm, overshoot=overshoot)(model, x, y)
    ratio = result.distance / optimum
    logger.info(
        "deepfool %s overshoot=%g: distance / optimum in [%.6f, %.6f]", norm, overshoot, ratio.min(), ratio.max()
    )
    assert result.success.all()
    assert ratio.min() >= 1 - 1e-4, "DeepFool beat the closed-form optimum: the distance is wrong"
    # Exactly 1 + overshoot, plus the 1e-4 crossing slack relative to |f| >= 0.1.
    assert ratio.min() >= (1 + overshoot) * (1 - 1e-4)
    assert ratio.max() <= min(1.05, (1 + overshoot) * 1.002)
    # On an affine model one linearisation step is exact.
    assert (result.iterations == 1).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_finds_the_nearest_boundary_of_a_multiclass_affine_model(norm: str) -> None:
    """Misclassification is the union of the half-spaces z_k > z_y.

    So the optimum is min_k |z_k - z_y| / ||w_k - w_y||_* (dual norm), reached in one step.
    """
    rng = np.random.RandomState(2)
    classes, shape = 5, (1, 2, 4)
    weight = rng.randn(classes, int(np.prod(shape))).astype(np.float32)
    bias = rng.randn(classes).astype(np.float32)
    dense = gluon.nn.Dense(classes, in_units=weight.shape[1])
    dense.initialize()
    dense.weight.set_data(nd.array(weight))
    dense.bias.set_data(nd.array(bias))
    model = load_classifier(dense, input_size=shape, bounds=(-1e4, 1e4))
    x = rng.uniform(-2, 2, (32,) + shape).astype(np.float32)
    logits = x.reshape(len(x), -1).astype(np.float64) @ weight.T.astype(np.float64) + bias
    y = logits.argmax(axis=1)
    gaps = logits[np.arange(len(x)), y][:, None] - logits  # (N, classes), >= 0
    diffs = weight[None, :, :] - weight[y][:, None, :]  # w_k - w_y
    dual = np.linalg.norm(diffs, axis=2) if norm == "l2" else np.abs(diffs).sum(axis=2)
    others = np.arange(classes)[None, :] != y[:, None]
    optimum = np.where(others, gaps / np.where(others, dual, 1.0), np.inf).min(axis=1)
    keep = np.sort(gaps, axis=1)[:, 1] >= 0.1  # runner-up margin >= 0.1 keeps the crossing slack small
    result = DeepFool(norm=norm, overshoot=0.0)(model, x[keep], y[keep])
    ratio = result.distance / optimum[keep]
    logger.info("deepfool %s, 5-class affine: distance / optimum in [%.6f, %.6f]", norm, ratio.min(), ratio.max())
    assert result.success.all()
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.002


def _box_optimum(x: np.ndarray, w: np.ndarray, b: float, direction: np.ndarray) -> np.ndarray:
    """The perturbation ``clip(x + t * s * direction) - x`` (``s`` towards the boundary) with the smallest crossing t.

    In [0, 1], the minimal L2 (``direction = w``) and L-inf (``direction = sign(w)``)
    perturbations of a linear model have this form (KKT), and f along it is monotone in t.
    """
    f0 = float(x @ w + b)
    toward = -np.sign(f0) * direction

    def still_correct(t: float) -> bool:
        return float(np.clip(x + t * toward, 0, 1) @ w + b) * np.sign(f0) > 0

    lo, hi = 0.0, 1.0
    while still_correct(hi):
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if still_correct(mid) else (lo, mid)
    return np.clip(x + hi * toward, 0, 1) - x


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_box_constrained_optimum_and_real_margin_on_bounded_linear_model(norm: str) -> None:
    """In [0, 1] with half the pixels saturated, clipping absorbs part of every step.

    The steps are all multiples of w (L2) or sign(w) (L-inf), so DeepFool's
    iterates follow the optimal path ``clip(x + t * direction)``. The overshoot,
    applied to the final sum, must leave a real margin: about 2% of |f(x)|
    (measured >= 1.4%), where linearising at the overshot point creeps up to
    the boundary and leaves about 1e-4 of |f(x)|.
    """
    rng = np.random.RandomState(4)
    w = rng.randn(4, 4).astype(np.float32)
    x = rng.rand(40, 16).astype(np.float32)
    saturated = rng.rand(40, 16) < 0.5
    x[saturated] = (rng.rand(int(saturated.sum())) < 0.5).astype(np.float32)
    f = x.astype(np.float64) @ w.ravel().astype(np.float64)
    keep = np.abs(f) > 0.2
    x, f = x[keep], f[keep]
    model = linear_classifier(w, 0.0, bounds=(0.0, 1.0))
    result = DeepFool(norm=norm)(model, x.reshape(-1, 1, 4, 4), (f > 0).astype(np.int64))
    wf = w.ravel().astype(np.float64)
    direction = wf if norm == "l2" else np.sign(wf)
    optimum = np.array([np.linalg.norm(_box_optimum(xi, wf, 0.0, direction), ord=2 if norm == "l2" else np.inf)
                        for xi in x.astype(np.float64)])
    ratio = result.distance / optimum
    margin = -(result.x_adv.reshape(len(x), -1).astype(np.float64) @ wf) * np.sign(f) / np.abs(f)
    logger.info("deepfool %s in [0, 1]: distance / box optimum in [%.6f, %.6f], margin / |f| >= %.4f",
                norm, ratio.min(), ratio.max(), margin.min())
    assert result.success.all()
    assert ratio.min() >= 1 - 1e-4
    assert ratio.max() <= 1.02 * 1.002
    assert margin.min() >= 0.005


def test_linf_perturbation_is_a_signed_box_corner_on_linear_model() -> None:
    model, x, y, f, w = _linear_problem(seed=1)
    result = DeepFool(norm="linf")(model, x, y)
    delta = (result.x_adv - x).reshape(len(x), -1)
    towards = np.where(y == 0, 1.0, -1.0)[:, None] * np.sign(w.reshape(1, -1))
    np.testing.assert_allclose(delta, towards * result.distance[:, None], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_succeeds_on_every_point_within_bounds(norm: str, tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    result = DeepFool(norm=norm)(tiny_model, x, y)
    assert result.success.all()
    assert (result.x_adv >= 0).all() and (result.x_adv <= 1).all()
    assert (result.distance > 0).all()
    assert ((result.iterations >= 1) & (result.iterations <= 50)).all()
    np.testing.assert_array_equal(result.queries, result.iterations * 9)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_sample_alone_equals_sample_in_batch(norm: str, tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    attack = DeepFool(norm=norm)
    batch = attack(tiny_model, x, y)
    for i in (0, 7):
        alone = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], batch.x_adv[i], atol=1e-5)


def test_deterministic_and_leaves_parameters_alone(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    before = _snapshot(tiny_model)
    first = DeepFool(norm="l2", seed=0)(tiny_model, x, y)
    second = DeepFool(norm="l2", seed=3)(tiny_model, nd.array(x), nd.array(y))
    np.testing.assert_array_equal(first.x_adv, second.x_adv.asnumpy())
    after = _snapshot(tiny_model)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    assert all(p.grad_req == "null" for p in tiny_model.collect_params().values())


def test_misclassified_samples_do_not_move(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    wrong = (y + 1) % 10
    result = DeepFool()(tiny_model, x[:4], wrong[:4])
    np.testing.assert_array_equal(result.x_adv, x[:4])
    assert result.success.all()
    assert (result.distance == 0).all() and (result.iterations == 0).all()


def test_runner_up_candidate_alone_succeeds(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    result = DeepFool(candidates=2)(tiny_model, x, y)
    assert result.success.all()
    np.testing.assert_array_equal(result.queries, result.iterations)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"candidates": 1}, "candidates"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"overshoot": float("nan")}, "overshoot"),
        ({"norm": "l1"}, "norm='l1'"),
        ({"norm": "l0"}, "norm='l0'"),
        ({"seed": -1}, "seed"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DeepFool(**kwargs)


def test_has_no_targeted_mode(tiny_model: Classifier, tiny_batch: Batch) -> None:
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="no targeted mode"):
        DeepFool()(tiny_model, x, y, target=(y + 1) % 10)


@pytest.mark.slow
def test_succeeds_on_every_mnist_digit(mnist_test: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (REPO / "model_configs" / "mnist_resnet20.params").is_file():
        pytest.skip("model_configs/mnist_resnet20.params not found (train it first)")
    monkeypatch.chdir(REPO)
    model = load_classifier("model_configs/mnist_resnet20.yaml", ctx=mx.cpu())
    x, y = mnist_test[0][:100], mnist_test[1][:100]
    result = DeepFool(norm="l2")(model, x, y)
    logger.info("deepfool l2 on 100 MNIST digits: median distance %.4f", float(np.median(result.distance)))
    assert result.success.all()

"""Auto-PGD and APGD-T: schedule, algorithm, threat model, strength, determinism, cost."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import pytest
from mxnet import gluon, nd

from conftest import linear_classifier
from gluon_robust.attacks.apgd import APGD, apgd_checkpoints
from gluon_robust.attacks.apgdt import APGDT
from gluon_robust.attacks.fgsm import FGSM
from gluon_robust.attacks.pgd import PGD
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier, load_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def batch64(tiny_model: Classifier) -> Tuple[np.ndarray, np.ndarray]:
    """Sixty-four random inputs with the tiny model's own predictions as labels."""
    x = np.random.RandomState(1).rand(64, 1, 8, 8).astype(np.float32)
    return x, tiny_model.predict(x).argmax(axis=1)


def _distance(norm: str, delta: np.ndarray) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


# ------------------------------------------------------------------ schedule
def _reference_checkpoints(steps: int) -> List[int]:
    """The reference code's schedule: a step counter that fires after a gap of k steps, k shrinking.

    k starts at floor(0.22 N), shrinks by floor(0.03 N) after each check and never goes below
    floor(0.06 N) (each at least 1), all from exact fractions.
    """
    k = max(math.floor(Fraction(22, 100) * steps), 1)
    shrink = max(math.floor(Fraction(3, 100) * steps), 1)
    floor = max(math.floor(Fraction(6, 100) * steps), 1)
    out, counter = [], 0
    for step in range(1, steps + 1):
        counter += 1
        if counter == k:
            out.append(step)
            k, counter = max(k - shrink, floor), 0
    return out


def _paper_checkpoints(steps: int) -> List[int]:
    """ceil(p_j * steps) for p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in exact fractions."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(pj * steps) for pj in p[1:]} & set(range(1, steps)))


@pytest.mark.parametrize("steps", [100, 10, 37, 50, 250, 1000, 1, 2, 3])
def test_checkpoints_follow_the_reference_counter(steps: int) -> None:
    assert apgd_checkpoints(steps) == _reference_checkpoints(steps)


def test_checkpoints_equal_the_paper_formula_at_100_steps_only_where_the_floors_agree() -> None:
    assert apgd_checkpoints(100) == _paper_checkpoints(100)
    assert apgd_checkpoints(50)[:3] == [11, 21, 30] != _paper_checkpoints(50)[:3]  # floors against ceil(p_j * N)


def test_checkpoints_for_100_steps() -> None:
    # The first check after 22 steps; the gaps shrink by 3 steps, from 19, down to a floor of 6.
    checkpoints = apgd_checkpoints(100)
    assert checkpoints[0] == 22
    assert np.diff(checkpoints).tolist() == [max(19 - 3 * j, 6) for j in range(len(checkpoints) - 1)]
    assert checkpoints[-1] + 6 >= 100 > checkpoints[-1]


# ------------------------------------------------------------ threat model
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
@pytest.mark.parametrize("loss", ["ce", "dlr", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_stays_in_ball_and_bounds(tiny_model: Classifier, tiny_batch: Any, norm: str, eps: float, loss: str,
                                  targeted: bool) -> None:
    x, y = tiny_batch
    target = (y + 1) % 10 if targeted else None
    result = APGD(eps=eps, norm=norm, loss=loss, steps=10)(tiny_model, x, y, target=target)
    assert np.all(_distance(norm, result.x_adv - x) <= eps + 1e-5)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert result.x_adv.dtype == x.dtype and result.x_adv.shape == x.shape


def test_apgdt_stays_in_ball_and_bounds(tiny_model: Classifier, tiny_batch: Any) -> None:
    x, y = tiny_batch
    result = APGDT(eps=0.4, norm="l2", steps=5, n_target_classes=2)(tiny_model, x, y)
    assert np.all(_distance("l2", result.x_adv - x) <= 0.4 + 1e-5)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_success_exactly_when_boundary_inside_ball(norm: str) -> None:
    # f(x) = w.x + b; the boundary is |f| / ||w||_1 away in L-inf and |f| / ||w||_2 in L2.
    rng = np.random.RandomState(0)
    w = rng.randn(4, 4).astype(np.float32)
    model = linear_classifier(w, 0.0)  # inputs (N, 1, 4, 4)
    dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
    eps = 0.05  # small logits: CE's float32 gradient does not vanish
    ratios = np.array([0.3, 0.8, 0.95, 1.05, 1.3, 2.0] * 2)
    signs = np.repeat([1.0, -1.0], 6)
    # Points on the normal line with f(x) = sign * ratio * eps * dual: ratio * eps away from the boundary.
    x = np.stack([s * r * eps * dual * w[None] / np.vdot(w, w) for r, s in zip(ratios, signs)]).astype(np.float32)
    y = (signs > 0).astype(np.int64)
    result = APGD(eps=eps, norm=norm, steps=20)(model, x, y)
    np.testing.assert_array_equal(result.success, ratios < 1.0)


# ---------------------------------------------------------------- algorithm
def _identity_model(d: int) -> Classifier:
    """Logits equal to the input pixels: a (N, 1, 1, d) input has d classes."""
    dense = gluon.nn.Dense(d, in_units=d, use_bias=False)
    dense.initialize()
    dense.weight.set_data(nd.array(np.eye(d, dtype=np.float32)))
    return load_classifier(dense, input_size=(1, 1, d))


def _reference_apgd(x: np.ndarray, y: np.ndarray, c: np.ndarray, eps: float, steps: int, rho: float) -> np.ndarray:
    """Algorithm 1 of Croce & Hein (2020) with the reference code's decisions, one sample at a time.

    For f(z) = -||z - c||^2, L-inf, no random start. The reference's decisions: the count of increasing steps
    is compared with <=, each step with the raw loss of the step before (the first with 0), and the
    no-improvement test is off at the first checkpoint.
    """
    alpha = 0.75
    checks = set(_reference_checkpoints(steps))
    out = []
    for x0, label in zip(x, y):
        f = lambda z: -np.sum((z - c) ** 2)  # noqa: E731
        proj = lambda z: np.clip(np.clip(z, x0 - eps, x0 + eps), 0.0, 1.0)  # noqa: E731
        eta, prev, cur = 2 * eps, x0, x0
        f_cur = f(cur)
        best, f_best = cur, f_cur
        found = cur if np.argmax(cur) != label else None
        increases, last, f_at_check, halved, f_prev = 0, 0, f_best, True, 0.0
        for k in range(1, steps + 1):
            a = 1.0 if k == 1 else alpha
            z = proj(cur + eta * np.sign(-2 * (cur - c)))
            prev, cur = cur, proj(cur + a * (z - cur) + (1 - a) * (cur - prev))
            f_cur = f(cur)
            increases += f_cur > f_prev
            f_prev = f_cur
            if f_cur > f_best:
                best, f_best = cur, f_cur
            if np.argmax(cur) != label:
                found = cur
            if k in checks:
                halve = increases <= rho * (k - last) or (not halved and f_at_check >= f_best)
                if halve:
                    eta, cur = eta / 2, best
                halved, f_at_check, increases, last = halve, f_best, 0, k
        out.append(best if found is None else found)
    return np.stack(out)


def _quadratic(c: np.ndarray) -> Any:
    centre = nd.array(c[None])

    def loss(logits: nd.NDArray, y: nd.NDArray, target: Any) -> nd.NDArray:
        return -nd.sum(nd.square(nd.broadcast_sub(logits, centre)), axis=1)

    return loss


@pytest.mark.parametrize("rho", [0.75, 0.1])
def test_trajectory_matches_a_per_sample_reference_of_algorithm_1(rho: float) -> None:
    # Momentum, both checkpoint conditions, halving and the restart from the best point, against plain NumPy.
    n, d, eps, steps = 16, 6, 0.3, 40
    rng = np.random.RandomState(0)
    x = rng.uniform(0.2, 0.8, size=(n, d)).astype(np.float32)
    c = rng.uniform(0.0, 1.0, size=d).astype(np.float32)
    y = x.argmax(axis=1)
    attack = APGD(eps=eps, steps=steps, loss=_quadratic(c), rho=rho, random_start=False)
    result = attack(_identity_model(d), x.reshape(n, 1, 1, d), y)
    expected = _reference_apgd(x, y, c, eps, steps, rho)
    np.testing.assert_allclose(result.x_adv.reshape(n, d), expected, atol=1e-5)


def test_step_halving_converges_to_an_interior_maximum() -> None:
    # A fixed L-inf step of 2 * eps would bounce across the ball; halving homes in on the centre c.
    d, eps = 6, 0.3
    x = np.array([[0.5] * (d - 1) + [0.9]], np.float32)
    c = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.9], np.float32)
    y = np.array([d - 1])  # the last pixel stays the largest logit: never "fooled", the best point is returned
    attack = APGD(eps=eps, steps=100, loss=_quadratic(c), random_start=False)
    result = attack(_identity_model(d), x.reshape(1, 1, 1, d), y)
    assert not result.success[0]
    assert np.abs(result.x_adv.reshape(d) - c).max() < 0.01


# ----------------------------------------------------------------- strength
@pytest.mark.parametrize(
    "norm,eps,loss",
    [("linf", 0.01, "ce"), ("linf", 0.02, "ce"), ("linf", 0.05, "ce"), ("l2", 0.08, "ce"), ("l2", 0.24, "ce"),
     ("linf", 0.05, "dlr"), ("linf", 0.05, "margin")],
)
def test_fools_at_least_as_many_as_pgd_with_same_budget(tiny_model: Classifier, batch64: Any, norm: str, eps: float,
                                                         loss: str) -> None:
    # Same loss, same 100 gradient steps, one random start each (PGD with its default 2.5 * eps / steps step):
    # APGD fools at least as many of the 64 inputs.
    x, y = batch64
    pgd = PGD(eps=eps, norm=norm, steps=100, loss=loss)(tiny_model, x, y)
    apgd = APGD(eps=eps, norm=norm, steps=100, loss=loss)(tiny_model, x, y)
    assert apgd.success.sum() >= pgd.success.sum()
    assert 0 < apgd.success.sum()


def test_restarts_only_add_successes_and_skip_fooled_samples(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    one = APGD(eps=0.015, steps=20, restarts=1)(tiny_model, x, y)
    three = APGD(eps=0.015, steps=20, restarts=3)(tiny_model, x, y)
    assert 0 < one.success.sum() < len(x)
    assert np.all(three.success[one.success])  # the first run is identical
    np.testing.assert_array_equal(three.x_adv[one.success], one.x_adv[one.success])
    np.testing.assert_array_equal(three.iterations[one.success], 20)
    assert np.all(three.iterations[~one.success] > 20) and three.iterations.max() == 60
    np.testing.assert_array_equal(three.queries, three.iterations // 20 * 21)


def test_targeted_reaches_the_target_with_large_eps(tiny_model: Classifier, batch64: Any) -> None:
    # eps = 1 is the whole [0, 1] box: every class the tiny model can output is reachable.
    x, y = batch64[0][:16], batch64[1][:16]
    for shift in (1, 5, 7):
        target = (y + shift) % 10
        result = APGD(eps=1.0, steps=50)(tiny_model, x, y, target=target)
        np.testing.assert_array_equal(result.predictions, target)
        assert result.success.all()


@pytest.mark.parametrize("loss", ["ce", "dlr", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_never_worse_than_the_start(tiny_model: Classifier, batch64: Any, loss: str, targeted: bool) -> None:
    # Without a random start x_0 = x: a sample is fooled, or returned at its best point, above its clean loss.
    x, y = batch64
    target = (y + 3) % 10 if targeted else None
    attack = APGD(eps=0.02, steps=20, loss=loss, random_start=False)
    result = attack(tiny_model, x, y, target=target)
    t_nd = None if target is None else nd.array(target)
    clean = attack.loss(tiny_model(nd.array(x)), nd.array(y), t_nd).asnumpy()
    final = attack.loss(tiny_model(nd.array(result.x_adv)), nd.array(y), t_nd).asnumpy()
    assert not result.success.all()
    assert np.all(final[~result.success] > clean[~result.success])


def test_apgdt_at_least_as_strong_as_apgd_dlr(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    dlr = APGD(eps=0.02, steps=20, loss="dlr")(tiny_model, x, y)
    apgdt = APGDT(eps=0.02, steps=20, n_target_classes=3)(tiny_model, x, y)
    assert apgdt.success.sum() >= dlr.success.sum() > 0
    assert np.all(apgdt.predictions[apgdt.success] != y[apgdt.success])
    # A sample fooled with the j-th target is not attacked again: 20, 40 or 60 steps.
    assert set(np.unique(apgdt.iterations)) <= {20, 40, 60}
    np.testing.assert_array_equal(apgdt.iterations[~apgdt.success], 60)
    assert apgdt.targets is None


def test_apgdt_caps_targets_at_the_number_of_other_classes(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64[0][:4], batch64[1][:4]
    result = APGDT(eps=1e-4, steps=2, n_target_classes=50)(tiny_model, x, y)
    assert not result.success.any()
    np.testing.assert_array_equal(result.iterations, 9 * 2)


# ------------------------------------------------------------- determinism
def test_same_seed_same_result_other_seed_other_start(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    a = APGD(eps=0.01, steps=10, seed=3)(tiny_model, x, y)
    b = APGD(eps=0.01, steps=10, seed=3)(tiny_model, x, y)
    c = APGD(eps=0.01, steps=10, seed=4)(tiny_model, x, y)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("attack", [APGD(eps=0.015, steps=10, restarts=2), APGDT(eps=0.015, steps=5, n_target_classes=2)])
def test_sample_alone_equals_sample_in_batch(tiny_model: Classifier, batch64: Any, attack: APGD) -> None:
    x, y = batch64[0][:8], batch64[1][:8]
    batch = attack(tiny_model, x, y)
    for i in range(len(x)):
        alone = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], batch.x_adv[i], atol=1e-6)
        assert alone.iterations[0] == batch.iterations[i]


def test_eot_on_a_deterministic_model_changes_nothing_but_cost(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64[0][:8], batch64[1][:8]
    one = APGD(eps=0.02, steps=5)(tiny_model, x, y)
    two = APGD(eps=0.02, steps=5, eot_samples=2)(tiny_model, x, y)
    np.testing.assert_allclose(one.x_adv, two.x_adv, atol=1e-6)
    np.testing.assert_array_equal(two.queries, 2 * one.queries)


# --------------------------------------------------------------------- cost
class _CountingModel:
    """Forwards to a classifier and counts its forward passes."""

    def __init__(self, model: Classifier) -> None:
        self.model, self.calls = model, 0
        self.bounds, self.num_classes, self.ctx = model.bounds, model.num_classes, model.ctx
        self.mode_free = getattr(model, "mode_free", False)

    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        self.calls += 1
        return self.model(x)


def test_one_forward_backward_per_step(tiny_model: Classifier, tiny_batch: Any) -> None:
    x, y = tiny_batch
    counting = _CountingModel(tiny_model)
    APGD(eps=0.05, steps=12)(counting, x, y)
    assert counting.calls == 12 + 1 + 1  # start point, each step, the framework's final check


@pytest.mark.parametrize("attack_cls", [APGD, APGDT])
def test_no_device_sync_inside_the_step_loop(tiny_model: Classifier, tiny_batch: Any, monkeypatch: pytest.MonkeyPatch,
                                             attack_cls: type) -> None:
    x, y = tiny_batch
    syncs: List[int] = []
    real = nd.NDArray.asnumpy

    def counting(self: nd.NDArray) -> np.ndarray:
        syncs.append(1)
        return real(self)

    monkeypatch.setattr(nd.NDArray, "asnumpy", counting)
    counts = []
    for steps in (3, 30):
        syncs.clear()
        kwargs = {"n_target_classes": 2} if attack_cls is APGDT else {"restarts": 2}
        attack_cls(eps=0.001, steps=steps, **kwargs)(tiny_model, x, y)
        counts.append(len(syncs))
    assert counts[0] == counts[1]


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"alpha": 2.0}, "alpha"),
        ({"eot_samples": 0}, "eot_samples"),
        ({"loss": "hinge"}, "hinge"),
        ({"norm": "l1"}, "l1"),
        ({"eps": -0.1}, "eps"),
        ({"steps": 2.5}, "steps"),
    ],
)
def test_bad_hyperparameters_raise_config_error(kwargs: dict, match: str) -> None:
    params = {"eps": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        APGD(**params)


def test_apgdt_validates_targets_and_has_no_targeted_mode(tiny_model: Classifier, tiny_batch: Any) -> None:
    with pytest.raises(ConfigError, match="n_target_classes"):
        APGDT(eps=0.1, n_target_classes=0)
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="targeted"):
        APGDT(eps=0.1, steps=2)(tiny_model, x, y, target=(y + 1) % 10)


def test_checkpoints_reject_bad_steps() -> None:
    with pytest.raises(ConfigError, match="steps"):
        apgd_checkpoints(0)


# ----------------------------------------------------------- reference model
@pytest.mark.slow
def test_reference_mnist_model_ordering(mnist_test: Tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    if not (REPO / "model_configs" / "mnist_resnet20.params").is_file():
        pytest.skip("model_configs/mnist_resnet20.params is not bundled")
    monkeypatch.chdir(REPO)
    model = load_classifier("model_configs/mnist_resnet20.yaml")
    x, y = mnist_test[0][:500], mnist_test[1][:500]
    for eps in (0.1, 0.3):
        acc_fgsm = 1.0 - FGSM(eps=eps)(model, x, y).success.mean()
        acc_pgd = 1.0 - PGD(eps=eps, steps=40)(model, x, y).success.mean()
        acc_apgd = 1.0 - APGD(eps=eps, loss="ce")(model, x, y).success.mean()
        assert acc_pgd <= acc_fgsm + 0.01, (eps, acc_fgsm, acc_pgd)
        assert acc_apgd <= acc_pgd + 0.01, (eps, acc_pgd, acc_apgd)
        if eps == 0.3:
            assert acc_pgd < 0.05, acc_pgd

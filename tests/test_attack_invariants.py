"""The invariants table: every registered attack x norm x targeted mode obeys the contract.

A new attack is covered as soon as it is registered; one without an entry in
``SPECS`` fails ``test_every_attack_has_a_spec``.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Tuple

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.attacks import ATTACKS, get_attack, input_gradient
from gluon_robust.attacks.losses import LOSSES
from gluon_robust.errors import ConfigError, DataError
from gluon_robust.model import load_classifier

from conftest import tiny_bn_net

EPS = {"linf": 0.1, "l2": 1.0, "l1": 4.0, "l0": None}

#: Small, fast hyperparameters per attack for the tiny models (eps is added per norm where the attack takes it).
SPECS: Dict[str, Dict[str, object]] = {
    "fgsm": {},
    "pgd": {"steps": 5},
    "bim": {"steps": 5},
    "mifgsm": {"steps": 5},
    "apgd": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 2},
    "cw": {"steps": 20, "binary_search_steps": 3},
    "cw-linf": {"steps": 10},
    "ead": {"steps": 20, "binary_search_steps": 3},
    "deepfool": {"steps": 10},
    "jsma": {"gamma": 0.2},
    "fab": {"steps": 10},
    "fab-t": {"steps": 10, "n_target_classes": 2},
    "square": {"max_queries": 100},
    "simba": {"max_queries": 100},
    "simba-dct": {"max_queries": 100},
    "nes": {"max_queries": 100, "samples": 5},
    "bandits": {"max_queries": 100},
    "zoo": {"max_queries": 100, "coordinates": 8},
    "hopskipjump": {"max_queries": 200, "initial_evals": 10},
    "boundary": {"max_queries": 200},
    "transfer": {"steps": 5},
}


def _cases() -> List[Tuple[str, str, bool]]:
    cases = []
    for name in ATTACKS.names():
        cls = ATTACKS.factory(name)
        for norm in cls.norms:
            for targeted in (False, True) if cls.supports_targeted else (False,):
                cases.append((name, norm, targeted))
    return cases


def _build(name: str, norm: str, seed: int = 0):
    kwargs = dict(SPECS[name], seed=seed)
    if name == "transfer":  # a separate surrogate with the same architecture, other weights
        kwargs["surrogate"] = load_classifier(tiny_bn_net(seed=7), input_size=(1, 8, 8), mean=0.5, std=0.25)
    params = inspect.signature(ATTACKS.factory(name)).parameters
    if "norm" in params:
        kwargs["norm"] = norm
    if "eps" in params and EPS[norm] is not None:
        kwargs["eps"] = EPS[norm]
    return get_attack(name, **kwargs)


def _numpy_distance(norm: str, delta: np.ndarray) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    if norm == "l2":
        return np.sqrt((flat**2).sum(axis=1))
    if norm == "l1":
        return np.abs(flat).sum(axis=1)
    return (np.abs(flat) > 1e-7).sum(axis=1).astype(np.float64)


def _param_snapshot(model) -> Dict[str, Tuple[np.ndarray, str]]:
    return {k: (p.data().asnumpy().copy(), p.grad_req) for k, p in model.collect_params().items()}


def test_every_attack_has_a_spec():
    missing = [name for name in ATTACKS.names() if name not in SPECS]
    assert not missing, f"add invariant specs for {missing}"


@pytest.mark.parametrize("name,norm,targeted", _cases())
def test_invariants(name, norm, targeted, tiny_model, tiny_batch):
    x, y = tiny_batch
    target = (y + 1) % tiny_model.num_classes if targeted else None
    attack = _build(name, norm)
    before = _param_snapshot(tiny_model)
    x_in = mx.nd.array(x, ctx=tiny_model.ctx)
    x_copy = x_in.copy()

    result = attack(tiny_model, x_in, y, target=target)

    # Same type, shape, dtype and ctx; the input is not modified.
    assert isinstance(result.x_adv, mx.nd.NDArray)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == np.float32
    assert result.x_adv.context == x_in.context
    np.testing.assert_array_equal(x_in.asnumpy(), x_copy.asnumpy())
    x_adv = result.x_adv.asnumpy()

    # Inside bounds, and inside the eps-ball for fixed-epsilon attacks.
    low, high = tiny_model.bounds
    assert x_adv.min() >= low and x_adv.max() <= high
    dist = _numpy_distance(result.norm, x_adv - x)
    np.testing.assert_allclose(result.distance, dist, rtol=1e-4, atol=1e-5)
    if attack.eps is not None:
        assert dist.max() <= attack.eps * (1 + 1e-5) + 1e-6

    # Success comes from a real forward pass.
    pred = tiny_model.predict(x_adv).argmax(axis=1)
    np.testing.assert_array_equal(result.predictions, pred)
    np.testing.assert_array_equal(result.success, pred == target if targeted else pred != y)
    if targeted:
        np.testing.assert_array_equal(result.targets, target)

    # Counters are per sample.
    assert result.iterations.shape == (len(x),) and result.queries.shape == (len(x),)
    assert (result.queries >= 0).all()

    # Parameters, their gradient settings and values are untouched.
    after = _param_snapshot(tiny_model)
    assert before.keys() == after.keys()
    for key, (value, req) in before.items():
        np.testing.assert_array_equal(after[key][0], value)
        assert after[key][1] == req

    # The attack does something: with these budgets it succeeds on some points.
    assert result.success.any(), f"{name} ({norm}, targeted={targeted}) never succeeded on the tiny model"


@pytest.mark.parametrize("name,norm,targeted", [c for c in _cases() if not c[2]])
def test_deterministic_and_numpy_in_numpy_out(name, norm, targeted, tiny_model, tiny_batch):
    x, y = tiny_batch
    first = _build(name, norm, seed=3)(tiny_model, x, y)
    second = _build(name, norm, seed=3)(tiny_model, x.copy(), y)
    assert isinstance(first.x_adv, np.ndarray) and first.x_adv.dtype == x.dtype
    np.testing.assert_array_equal(first.x_adv, second.x_adv)
    np.testing.assert_array_equal(first.success, second.success)


@pytest.mark.parametrize("name,norm,targeted", [c for c in _cases() if not c[2]])
def test_sample_alone_equals_sample_in_batch(name, norm, targeted, tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = _build(name, norm, seed=1)
    batch = attack(tiny_model, x, y)
    for i in (0, 5):
        alone = attack(tiny_model, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], batch.x_adv[i], atol=1e-4)
        assert alone.success[0] == batch.success[i]


@pytest.mark.parametrize("name", ["fgsm", "pgd", "deepfool", "cw"])
def test_hybridised_equals_not_hybridised(name):
    if name not in ATTACKS:
        pytest.skip(f"{name} not registered")
    net = tiny_bn_net()
    hybrid = load_classifier(net, input_size=(1, 8, 8), mean=0.5, std=0.25, hybridize=True)
    imperative = load_classifier(net, input_size=(1, 8, 8), mean=0.5, std=0.25, hybridize=False)
    x = np.random.RandomState(2).rand(8, 1, 8, 8).astype(np.float32)
    y = hybrid.predict(x).argmax(axis=1)
    attack = _build(name, ATTACKS.factory(name).norms[0])
    a = attack(hybrid, x, y)
    b = attack(imperative, x, y)
    np.testing.assert_allclose(a.x_adv, b.x_adv, atol=1e-4)
    np.testing.assert_array_equal(a.success, b.success)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("targeted", [False, True])
def test_input_gradient_matches_finite_differences_on_bn_model(loss, targeted, tiny_model, tiny_batch):
    """The gradient every attack uses is the true gradient of the BN model (folded), checked coordinate-wise."""
    x, y = tiny_batch
    x64 = x[:4].astype(np.float64)
    y_nd = mx.nd.array(y[:4])
    t_nd = mx.nd.array((y[:4] + 3) % 10) if targeted else None
    fn = LOSSES[loss]
    grad, _, _ = input_gradient(tiny_model, mx.nd.array(x64), y_nd, t_nd, fn)
    grad = grad.asnumpy()

    def value(z: np.ndarray) -> np.ndarray:
        return fn(tiny_model(mx.nd.array(z)), y_nd, t_nd).asnumpy().astype(np.float64)

    # Central differences; a piecewise-linear net may put a kink inside +-h for a
    # rare coordinate, so allow one miss in 32 (a wrong gradient misses most).
    rng = np.random.RandomState(0)
    h = 1e-3
    analytic, numeric = [], []
    for _ in range(8):
        i, j = rng.randint(8), rng.randint(8)
        bump = np.zeros_like(x64)
        bump[:, 0, i, j] = h
        numeric.append((value(x64 + bump) - value(x64 - bump)) / (2 * h))
        analytic.append(grad[:, 0, i, j])
    analytic, numeric = np.concatenate(analytic), np.concatenate(numeric)
    close = np.abs(analytic - numeric) <= 2e-3 + 0.05 * np.abs(numeric)
    assert close.sum() >= len(close) - 1, np.c_[analytic, numeric][~close]


@pytest.mark.parametrize("bad", [{"eps": -0.1}, {"eps": float("nan")}, {"eps": "0.1"}, {"steps": 0}, {"steps": 2.5},
                                 {"restarts": 0}, {"norm": "l3"}, {"loss": "hinge"}, {"seed": -1}])
def test_pgd_rejects_bad_hyperparameters(bad):
    kwargs = dict({"eps": 0.1}, **bad)
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key if key not in ("norm", "loss") else f"{key}"):
        get_attack("pgd", **kwargs)


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ConfigError, match="valid names: .*pgd"):
        get_attack("pgdd", eps=0.1)


def test_inputs_outside_bounds_and_bad_labels_are_rejected(tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = get_attack("fgsm", eps=0.1)
    with pytest.raises(DataError, match="inside the model bounds"):
        attack(tiny_model, x * 255, y)
    with pytest.raises(DataError, match="class labels"):
        attack(tiny_model, x, y + 10)
    with pytest.raises(DataError, match="shape"):
        attack(tiny_model, x, y[:3])
    with pytest.raises(DataError, match="input size"):
        attack(tiny_model, np.zeros((2, 1, 9, 9), np.float32), y[:2])


def test_linear_oracle_fgsm_and_pgd_succeed_exactly_above_linf_minimum():
    """On a linear model (unclipped), FGSM/PGD succeed iff eps exceeds |f(x)| / ||w||_1."""
    from conftest import linear_classifier

    rng = np.random.RandomState(4)
    w = rng.normal(size=(1, 4, 4)).astype(np.float32)
    model = linear_classifier(w, 0.3)
    x = rng.uniform(-1, 1, size=(12, 1, 4, 4)).astype(np.float32)
    f = (x.reshape(12, -1) @ w.reshape(-1)) + 0.3
    y = (f > 0).astype(np.int64)
    minimum = np.abs(f) / np.abs(w).sum()
    for factor, expect in ((0.97, False), (1.03, True)):
        for name in ("fgsm", "pgd"):
            kwargs = {"steps": 20} if name == "pgd" else {}
            for i in range(len(x)):
                res = get_attack(name, eps=float(minimum[i] * factor), **kwargs)(model, x[i : i + 1], y[i : i + 1])
                assert bool(res.success[0]) is expect, (name, factor, i)


def test_batch_sizes_are_bucketed_to_bound_memory():
    """Attacks pad batches to few sizes (MKLDNN keeps memory per input shape): >= n, at most a third of it padding."""
    from gluon_robust.attacks.base import _padded

    sizes = [_padded(n) for n in range(1, 2049)]
    assert all(s >= n for n, s in zip(range(1, 2049), sizes))
    assert all((s - n) <= s / 3 or s <= 2 for n, s in zip(range(1, 2049), sizes))
    assert len(set(sizes)) <= 2 * 11 + 1
    assert sizes == sorted(sizes)

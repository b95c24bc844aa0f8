"""Black-box attacks: exact query accounting, label-only access, and the attack contract for any callable target."""

from __future__ import annotations

import logging
from typing import Callable, Dict, Tuple

import mxnet as mx
import numpy as np
import pytest

from gluon_robust.attacks.bandits import Bandits
from gluon_robust.attacks.blackbox import (
    BlackBoxAttack, CallableModel, QueryBudgetExceeded, QueryCounter, margin, project,
)
from gluon_robust.attacks.boundary import BoundaryAttack
from gluon_robust.attacks.hopskipjump import HopSkipJump
from gluon_robust.attacks.nes import NES
from gluon_robust.attacks.simba import SimBA, SimBADCT
from gluon_robust.attacks.square import SquareAttack
from gluon_robust.attacks.transfer import TransferAttack
from gluon_robust.attacks.zoo_attack import ZOO
from gluon_robust.data import load_data
from gluon_robust.errors import ConfigError, ModelError
from gluon_robust.evaluation.robustness import evaluate_attacks
from gluon_robust.model import Classifier, load_classifier


class Counting:
    """A black-box target around a classifier that counts every sample it evaluates.

    It checks what it is sent (a float32 NumPy batch inside the bounds) and
    returns scores, or labels alone when ``labels_only``.
    """

    def __init__(self, model: Classifier, labels_only: bool = False) -> None:
        self.model = model
        self.labels_only = labels_only
        self.evaluated = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4
        low, high = self.model.bounds
        assert x.min() >= low and x.max() <= high
        self.evaluated += len(x)
        scores = self.model.predict(x)
        return scores.argmax(axis=1) if self.labels_only else scores


def target_of(model: Classifier, labels_only: bool = False) -> Tuple[CallableModel, Counting]:
    counter = Counting(model, labels_only)
    return CallableModel(counter, bounds=model.bounds, num_classes=model.num_classes, input_size=model.input_size), counter


#: Every attack with a small budget for the tiny 8x8 model; the budget is the ``max_queries`` keyword.
ATTACKS: Dict[str, Callable[..., BlackBoxAttack]] = {
    "square": lambda q=60, **kw: SquareAttack(eps=0.1, max_queries=q, **kw),
    "square-l2": lambda q=60, **kw: SquareAttack(eps=1.0, norm="l2", max_queries=q, **kw),
    "simba": lambda q=60, **kw: SimBA(eps=0.1, norm="linf", max_queries=q, **kw),
    "simba-dct": lambda q=60, **kw: SimBADCT(step_size=0.3, max_queries=q, **kw),
    "nes": lambda q=60, **kw: NES(eps=0.1, samples=5, max_queries=q, **kw),
    "bandits": lambda q=60, **kw: Bandits(eps=0.1, max_queries=q, **kw),
    "zoo": lambda q=60, **kw: ZOO(eps=0.1, coordinates=8, max_queries=q, **kw),
    "hopskipjump": lambda q=60, **kw: HopSkipJump(initial_evals=10, max_queries=q, **kw),
    "hopskipjump-linf": lambda q=60, **kw: HopSkipJump(norm="linf", eps=0.3, initial_evals=10, max_queries=q, **kw),
    "boundary": lambda q=60, **kw: BoundaryAttack(max_queries=q, **kw),
}
DECISION = ("hopskipjump", "hopskipjump-linf", "boundary")


@pytest.fixture
def batch8(tiny_batch: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    x, y = tiny_batch
    return x[:8], y[:8]


# ------------------------------------------------------------------ query accounting
@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("budget", [1, 2, 7, 60])
def test_queries_are_exact_and_never_exceed_the_budget(name, budget, tiny_model, batch8, caplog):
    x, y = batch8
    target, counter = target_of(tiny_model, labels_only=name in DECISION)
    with caplog.at_level(logging.WARNING, logger="gluon_robust"):
        result = ATTACKS[name](budget)(target, x, y)
    assert result.queries.dtype == np.int64 and result.queries.shape == (len(x),)
    assert (result.queries >= 1).all() and (result.queries <= budget).all()
    # Counted independently: the final success check costs no query (it reuses the attack's own answers).
    assert counter.evaluated == result.queries.sum()
    assert not caplog.records
    np.testing.assert_array_equal(result.iterations, result.queries)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_single_sample_costs_exactly_its_count(name, tiny_model, batch8):
    x, y = batch8
    for i in (0, 3):
        target, counter = target_of(tiny_model, labels_only=name in DECISION)
        result = ATTACKS[name](25)(target, x[i : i + 1], y[i : i + 1])
        assert counter.evaluated == result.queries[0] <= 25


def test_padding_and_repeated_samples_cost_no_extra_query(tiny_model, batch8):
    x, y = batch8
    x5 = np.concatenate([x[:3], x[:2]])  # 5 rows (the framework pads to 6), two of them repeats
    y5 = np.concatenate([y[:3], y[:2]])
    target, counter = target_of(tiny_model)
    result = SquareAttack(eps=0.1, max_queries=30)(target, x5, y5)
    assert counter.evaluated == result.queries[:3].sum()
    np.testing.assert_array_equal(result.x_adv[3:], result.x_adv[:2])
    np.testing.assert_array_equal(result.queries[3:], result.queries[:2])


def test_the_counter_refuses_a_query_past_the_budget(tiny_model, batch8):
    x, _ = batch8
    oracle = QueryCounter(tiny_model, max_queries=3)
    oracle.start(x[:2])
    oracle.scores(x[[0, 0, 1]], np.array([0, 0, 1]))  # duplicates: sample 0 pays twice
    np.testing.assert_array_equal(oracle.counts, [2, 1])
    np.testing.assert_array_equal(oracle.remaining, [1, 2])
    with pytest.raises(QueryBudgetExceeded, match="sample 0 for query 4 of a budget of 3"):
        oracle.labels(x[[0, 0]], np.array([0, 0]))
    np.testing.assert_array_equal(oracle.counts, [2, 1])  # a refused query is not counted
    oracle.labels(x[[0, 1, 1]], np.array([0, 1, 1]))
    assert oracle.finish().tolist() == [3, 3]
    with pytest.raises(RuntimeError, match="only allowed while an attack runs"):
        oracle.labels(x[:1], np.array([0]))


def test_the_counter_gives_labels_only_when_asked(tiny_model, batch8):
    x, _ = batch8
    oracle = QueryCounter(tiny_model, max_queries=5, labels_only=True)
    oracle.start(x)
    labels = oracle.labels(x, np.arange(len(x)))
    assert labels.shape == (len(x),) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, tiny_model.predict(x).argmax(axis=1))
    with pytest.raises(RuntimeError, match="labels only"):
        oracle.scores(x, np.arange(len(x)))


@pytest.mark.parametrize("name", DECISION)
def test_decision_attacks_see_labels_only(name, tiny_model, batch8):
    # Given the labels alone, a decision-based attack does exactly what it does with the scores available.
    x, y = batch8
    with_labels, labels_counter = target_of(tiny_model, labels_only=True)
    with_scores, _ = target_of(tiny_model)
    a = ATTACKS[name](60)(with_labels, x, y)
    b = ATTACKS[name](60)(with_scores, x, y)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(a.queries, b.queries)
    assert a.success.any() and labels_counter.evaluated == a.queries.sum()


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - set(DECISION)))
def test_score_attacks_reject_a_labels_only_target(name, tiny_model, batch8):
    x, y = batch8
    target, _ = target_of(tiny_model, labels_only=True)
    with pytest.raises(ModelError, match="needs class scores"):
        ATTACKS[name](10)(target, x, y)


@pytest.mark.parametrize("bad,match", [
    (lambda x: np.zeros((len(x), 3, 2)), r"shape \(\d+, 3, 2\)"),
    (lambda x: np.zeros(len(x) + 1, np.int64), "shape"),
    (lambda x: np.full(len(x), -1), "non-negative integers"),
    (lambda x: np.full(len(x), 0.5), "non-negative integers"),
])
def test_a_target_with_malformed_answers_is_a_model_error(bad, match, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ModelError, match=match):
        SquareAttack(eps=0.1, max_queries=5)(CallableModel(bad), x[:2], y[:2])


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("targeted", [False, True])
def test_contract_with_a_callable_target(name, targeted, tiny_model, tiny_batch):
    x, y = tiny_batch
    t = (y + 1) % 10 if targeted else None
    target, _ = target_of(tiny_model, labels_only=name in DECISION)
    attack = ATTACKS[name](300 if targeted else 60)
    result = attack(target, mx.nd.array(x), y, target=t)
    assert isinstance(result.x_adv, mx.nd.NDArray) and result.x_adv.shape == x.shape
    assert result.x_adv.dtype == np.float32
    x_adv = result.x_adv.asnumpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    flat = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    dist = np.abs(flat).max(axis=1) if attack.norm.name == "linf" else np.sqrt((flat**2).sum(axis=1))
    np.testing.assert_allclose(result.distance, dist, rtol=1e-4, atol=1e-5)
    if attack.eps is not None:
        assert dist.max() <= attack.eps * (1 + 1e-5) + 1e-6
    # Success is that of the target's real labels for the returned points.
    pred = tiny_model.predict(x_adv).argmax(axis=1)
    np.testing.assert_array_equal(result.predictions, pred)
    np.testing.assert_array_equal(result.success, pred == t if targeted else pred != y)
    # The tiny model calls most inputs a 5, so targets other than 5 are out of reach even for white-box PGD.
    assert result.success.any(), f"{name} (targeted={targeted}) never succeeded"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_numpy_in_numpy_out_deterministic_and_batch_independent(name, tiny_model, batch8):
    x, y = batch8
    x64 = x.astype(np.float64)
    first = ATTACKS[name](40, seed=3)(tiny_model, x64, y)
    second = ATTACKS[name](40, seed=3)(tiny_model, x64.copy(), y)
    assert isinstance(first.x_adv, np.ndarray) and first.x_adv.dtype == np.float64
    np.testing.assert_array_equal(first.x_adv, second.x_adv)
    np.testing.assert_array_equal(first.queries, second.queries)
    for i in (0, 5):
        alone = ATTACKS[name](40, seed=3)(tiny_model, x64[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(alone.x_adv[0], first.x_adv[i], atol=1e-5)
        assert alone.queries[0] == first.queries[i] and alone.success[0] == first.success[i]


def test_a_plain_function_is_a_target_with_default_bounds(tiny_model, batch8):
    x, y = batch8
    result = SquareAttack(eps=0.1, max_queries=40)(lambda z: tiny_model.predict(z), x, y)
    assert result.success.any()
    np.testing.assert_array_equal(result.success, tiny_model.predict(result.x_adv).argmax(axis=1) != y)


def test_a_gluon_target_is_checked_for_real_and_never_given_gradients(tiny_model, batch8):
    x, y = batch8
    before = {k: (p.data().asnumpy().copy(), p.grad_req) for k, p in tiny_model.collect_params().items()}
    result = HopSkipJump(max_queries=80, initial_evals=10)(tiny_model, x, y)
    assert result.success.all()
    for key, (value, req) in before.items():
        param = tiny_model.collect_params()[key]
        np.testing.assert_array_equal(param.data().asnumpy(), value)
        assert param.grad_req == req


def test_the_transfer_attack_queries_the_target_once(tiny_model, batch8):
    x, y = batch8
    target, counter = target_of(tiny_model)
    result = TransferAttack(surrogate=tiny_model, eps=0.1, steps=3)(target, x, y)
    np.testing.assert_array_equal(result.queries, 1)
    assert counter.evaluated == len(x)


# ------------------------------------------------------------------ helpers and validation
def test_margin_is_negative_exactly_on_success():
    scores = np.array([[3.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.2, 0.3, 0.5]])
    y = np.array([0, 0, 2])
    np.testing.assert_allclose(margin(scores, y, None), [2.0, -2.0, 0.2])
    np.testing.assert_allclose(margin(scores, y, np.array([1, 1, 0])), [2.0, -2.0, 0.3])


def test_projection_onto_the_balls():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(5, 1, 4, 4))
    assert np.abs(project("linf", delta, 0.3)).max() <= 0.3
    norms = np.linalg.norm(project("l2", delta, 0.5).reshape(5, -1), axis=1)
    np.testing.assert_allclose(norms, np.minimum(0.5, np.linalg.norm(delta.reshape(5, -1), axis=1)), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3, 8 / 255, 0.0123456789, 1 / 3])
def test_the_numpy_snap_equals_the_framework_projection_bit_for_bit(eps):
    # The oracle is Attack._enforce in MXNet, the projection the final check applies to returned points.
    attack = SquareAttack(eps=eps, norm="linf", max_queries=10)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(64, 1, 6, 6)).astype(np.float32)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0  # on the bounds, where clipping to the box and to the ball meet
    step = rng.choice([-1.0, 1.0], size=x.shape) * eps * rng.choice([1.0, 1 - 1e-7, 1 + 1e-7], size=x.shape)
    points = np.clip(x + step, 0.0, 1.0).astype(np.float32)  # rounding leaves some a hair outside the ball
    snapped = attack._snap_coordinatewise(x, points, 0.0, 1.0)
    expected = attack._enforce(mx.nd.array(x), mx.nd.array(points), 0.0, 1.0).asnumpy()
    assert snapped.dtype == np.float32
    assert np.array_equal(snapped, expected)
    assert np.array_equal(attack._enforce(mx.nd.array(x), mx.nd.array(snapped), 0.0, 1.0).asnumpy(), snapped)


def test_the_numpy_snap_replaces_nan_as_the_framework_does():
    # _enforce replaces a NaN coordinate by the clean input's; the snap must agree, bit for bit.
    attack = SquareAttack(eps=0.1, norm="linf", max_queries=10)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(8, 1, 5, 5)).astype(np.float32)
    points = np.clip(x + rng.choice([-0.1, 0.1], size=x.shape), 0.0, 1.0).astype(np.float32)
    points[0, 0, 2, 2] = np.nan
    points[3, 0, 0, :] = np.nan
    snapped = attack._snap_coordinatewise(x, points, 0.0, 1.0)
    expected = attack._enforce(mx.nd.array(x), mx.nd.array(points), 0.0, 1.0).asnumpy()
    assert not np.isnan(snapped).any()
    assert np.array_equal(snapped, expected)


def test_admissible_snaps_the_rows_inside_the_ball_and_sends_the_others_as_they_are():
    # Rows inside the ball (up to rounding) become the framework's projection of themselves; a row far outside
    # (a probe of a minimal-perturbation attack) is only clipped to the bounds.
    eps = 8 / 255
    attack = SquareAttack(eps=eps, norm="linf", max_queries=10)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(6, 3, 7, 7)).astype(np.float32)
    step = rng.choice([-1.0, 1.0], size=x.shape) * eps * rng.choice([1.0, 1 - 1e-7, 1 + 1e-7], size=x.shape)
    points = (x + step).astype(np.float32)
    points[2] = x[2] + 0.5  # far outside the ball, and partly outside the bounds
    sent = attack._admissible(x, points.copy(), 0.0, 1.0)
    inside = [0, 1, 3, 4, 5]
    expected = attack._enforce(mx.nd.array(x[inside]), mx.nd.array(points[inside]), 0.0, 1.0).asnumpy()
    assert np.array_equal(sent[inside], expected)
    assert np.array_equal(sent[2], np.clip(points[2], 0.0, 1.0))
    whole = attack._admissible(x[inside], points[inside].copy(), 0.0, 1.0)  # every row inside: the no-copy path
    assert np.array_equal(whole, expected)


@pytest.mark.parametrize("factory,kwargs,match", [
    (SquareAttack, {"eps": 0.1, "max_queries": 0}, "max_queries must be an integer >= 1, got 0"),
    (SquareAttack, {"eps": 0.1, "max_queries": 10.5}, "max_queries.*10.5"),
    (SquareAttack, {"eps": 0.1, "p_init": 1.5}, "p_init must be <= 1.0, got 1.5"),
    (SquareAttack, {"eps": 0.1, "p_init": 0}, "p_init must be > 0, got 0"),
    (SquareAttack, {"eps": -1}, "eps must be > 0, got -1"),
    (SquareAttack, {"eps": 0.1, "norm": "l1"}, "norm='l1'"),
    (SimBA, {"step_size": 0}, "step_size must be > 0, got 0"),
    (SimBADCT, {"freq_dims": 0}, "freq_dims must be an integer >= 1, got 0"),
    (SimBADCT, {"stride": 1.5}, "stride.*1.5"),
    (NES, {"eps": 0.1, "samples": 0}, "samples must be an integer >= 1, got 0"),
    (NES, {"eps": 0.1, "sigma": float("nan")}, "sigma must be a finite number, got nan"),
    (NES, {"eps": 0.1, "step_size": -0.1}, "step_size must be > 0, got -0.1"),
    (Bandits, {"eps": 0.1, "tile_size": 0}, "tile_size must be an integer >= 1, got 0"),
    (Bandits, {"eps": 0.1, "exploration": 0}, "exploration must be > 0, got 0"),
    (Bandits, {"eps": 0.1, "fd_eta": "0.1"}, "fd_eta must be a finite number, got '0.1'"),
    (Bandits, {"eps": 0.1, "online_lr": -1}, "online_lr must be > 0, got -1"),
    (ZOO, {"eps": 0.1, "coordinates": 0}, "coordinates must be an integer >= 1, got 0"),
    (ZOO, {"eps": 0.1, "beta1": 1.0}, "beta1 must be < 1, got 1.0"),
    (ZOO, {"eps": 0.1, "h": 0}, "h must be > 0, got 0"),
    (ZOO, {"eps": 0.1, "learning_rate": -1}, "learning_rate must be > 0, got -1"),
    (ZOO, {"eps": 0.1, "confidence": -1}, "confidence must be >= 0, got -1"),
    (HopSkipJump, {"gamma": 0}, "gamma must be > 0, got 0"),
    (HopSkipJump, {"initial_evals": 0}, "initial_evals must be an integer >= 1, got 0"),
    (HopSkipJump, {"steps": 0}, "steps must be an integer >= 1, got 0"),
    (HopSkipJump, {"norm": "l1"}, "norm='l1'"),
    (HopSkipJump, {"init_tries": True}, "init_tries.*True"),
    (BoundaryAttack, {"norm": "linf"}, "boundary supports norms l2; got norm='linf'"),
    (BoundaryAttack, {"step_adaptation": 1.0}, "step_adaptation must be > 1, got 1.0"),
    (BoundaryAttack, {"spherical_step": 2.0}, "spherical_step must be <= 1.0, got 2.0"),
    (BoundaryAttack, {"source_step": 0}, "source_step must be > 0, got 0"),
    (BoundaryAttack, {"seed": -2}, "seed must be a non-negative integer, got -2"),
])
def test_bad_hyperparameters_raise_config_error(factory, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        factory(**kwargs)


def test_callable_model_validates_its_description():
    with pytest.raises(ConfigError, match="must be callable"):
        CallableModel(3)
    with pytest.raises(ConfigError, match=r"low < high, got \(1.0, 0.0\)"):
        CallableModel(lambda x: x, bounds=(1.0, 0.0))
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2, got 1"):
        CallableModel(lambda x: x, num_classes=1)


# ------------------------------------------------------------------ the reference model
@pytest.fixture(scope="module")
def reference_model() -> Classifier:
    return load_classifier("model_configs/mnist_resnet20.yaml")


def test_the_evaluator_reads_the_queries_of_a_classifier_target(reference_model):
    source = load_data("mnist-sample", split="test", limit=6)
    attack = SquareAttack(eps=0.3, max_queries=1000)
    result = evaluate_attacks(reference_model, source, [("square", attack)], cascade=False, progress=False)
    outcome = result.outcomes[0]
    assert outcome.black_box and not outcome.invalid.any()
    assert outcome.attacked.sum() >= 5 and outcome.broken[outcome.attacked].all()
    assert (outcome.queries[outcome.attacked] >= 1).all() and (outcome.queries <= 1000).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["square", "hopskipjump"])
def test_the_reference_model_falls_at_eps_03_within_5000_queries(name, reference_model):
    x, y = load_data("mnist-sample", split="test", limit=100).arrays()
    attack = (SquareAttack(eps=0.3, max_queries=5000) if name == "square"
              else HopSkipJump(norm="linf", eps=0.3, max_queries=5000))
    result = attack(reference_model, x, y)
    assert result.success.mean() >= 0.9, result.success.mean()
    assert result.queries.max() <= 5000 and result.distance.max() <= 0.3 + 1e-6

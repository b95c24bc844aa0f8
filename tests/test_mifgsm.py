"""MI-FGSM: the momentum rule, the threat model, and its relation to BIM."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks.mifgsm import MIFGSM
from gluon_robust.attacks.pgd import BIM
from gluon_robust.errors import ConfigError
from gluon_robust.model import Classifier


@pytest.fixture
def batch64(tiny_model: Classifier) -> Tuple[np.ndarray, np.ndarray]:
    """Sixty-four random inputs with the tiny model's own predictions as labels."""
    x = np.random.RandomState(1).rand(64, 1, 8, 8).astype(np.float32)
    return x, tiny_model.predict(x).argmax(axis=1)


def _distance(norm: str, delta: np.ndarray) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    return {"linf": np.abs(flat).max(axis=1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(axis=1)}[norm]


def test_defaults_follow_the_paper() -> None:
    attack = MIFGSM(eps=0.3)
    assert attack.steps == 10 and attack.decay == 1.0 and not attack.random_start and attack.restarts == 1
    assert attack.step_size == pytest.approx(0.03)


def test_direction_accumulates_l1_normalised_gradients() -> None:
    # g_1 = grad_1 / mean|grad_1|, g_2 = decay * g_1 + grad_2 / mean|grad_2|; the L-inf step is sign(g).
    rng = np.random.RandomState(0)
    grads = [rng.randn(3, 1, 4, 4).astype(np.float32) * scale for scale in (1.0, 50.0, 0.01)]
    attack = MIFGSM(eps=0.1, decay=0.5)
    state = attack._begin(nd.zeros((3, 1, 4, 4)))
    g = np.zeros_like(grads[0])
    for grad in grads:
        step = attack._direction(nd.array(grad), state).asnumpy()
        g = 0.5 * g + grad / np.abs(grad).reshape(3, -1).mean(axis=1).reshape(3, 1, 1, 1)
        np.testing.assert_array_equal(step, np.sign(g))


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4), ("l1", 2.0)])
@pytest.mark.parametrize("targeted", [False, True])
def test_stays_in_ball_and_bounds(tiny_model: Classifier, tiny_batch: Any, norm: str, eps: float, targeted: bool) -> None:
    x, y = tiny_batch
    target = (y + 1) % 10 if targeted else None
    result = MIFGSM(eps=eps, norm=norm)(tiny_model, x, y, target=target)
    assert np.all(_distance(norm, result.x_adv - x) <= eps * (1 + 1e-5) + 1e-5)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    np.testing.assert_array_equal(result.iterations, 10)


def test_no_decay_is_bim(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    bim = BIM(eps=0.05, steps=10)(tiny_model, x, y)
    mi = MIFGSM(eps=0.05, steps=10, decay=0.0)(tiny_model, x, y)
    np.testing.assert_array_equal(mi.x_adv, bim.x_adv)


def test_momentum_changes_the_path_but_respects_eps(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64
    bim = BIM(eps=0.05, steps=10)(tiny_model, x, y)
    mi = MIFGSM(eps=0.05, steps=10)(tiny_model, x, y)
    assert not np.allclose(mi.x_adv, bim.x_adv)
    assert np.all(np.abs(mi.x_adv - x).reshape(len(x), -1).max(axis=1) <= 0.05 + 1e-5)
    assert mi.success.sum() > 0


def test_targeted_reaches_the_target(tiny_model: Classifier, batch64: Any) -> None:
    # eps = 1 is the whole [0, 1] box; the targeted margin loss is positive exactly on success.
    x, y = batch64
    target = (y + np.random.RandomState(0).randint(1, 10, len(y))) % 10
    result = MIFGSM(eps=1.0, steps=50, loss="margin")(tiny_model, x, y, target=target)
    np.testing.assert_array_equal(result.predictions, target)


def test_deterministic_and_batch_independent(tiny_model: Classifier, batch64: Any) -> None:
    x, y = batch64[0][:8], batch64[1][:8]
    attack = MIFGSM(eps=0.03)
    batch = attack(tiny_model, x, y)
    np.testing.assert_array_equal(attack(tiny_model, x, y).x_adv, batch.x_adv)
    for i in range(len(x)):
        np.testing.assert_allclose(attack(tiny_model, x[i : i + 1], y[i : i + 1]).x_adv[0], batch.x_adv[i], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"decay": -0.5}, "decay"), ({"decay": "1"}, "decay"), ({"steps": 0}, "steps"), ({"eps": 0.0}, "eps"),
     ({"norm": "l0"}, "l0"), ({"step_size": -1.0}, "step_size")],
)
def test_bad_hyperparameters_raise_config_error(kwargs: dict, match: str) -> None:
    params = {"eps": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        MIFGSM(**params)

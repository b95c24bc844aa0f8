"""The sealed attack contract: no subclass overrides __call__, every attack declares a kind, the ball and bounds hold."""

from __future__ import annotations

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks import ATTACKS, attack_names
from gluon_robust.attacks.base import Attack, AttackKind


def test_a_subclass_defining_call_is_refused() -> None:
    with pytest.raises(TypeError, match="Attack.__call__ is sealed"):
        class Bad(Attack):  # noqa: F841
            def __call__(self, model, x, y):  # type: ignore[override]
                return None


@pytest.mark.parametrize("name", attack_names())
def test_every_registered_attack_declares_a_kind(name: str) -> None:
    assert isinstance(ATTACKS.factory(name).kind, AttackKind)


class _Wild(Attack):
    name = "wild"
    norms = ("linf", "l2")

    def _run(self, model, x, y, target, rngs):
        return x + 5.0, 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_contract_enforces_ball_and_bounds(norm: str, tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    result = _Wild(norm=norm, eps=0.1)(tiny_model, x, y)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert (result.distance <= 0.1 + 1e-5).all()
    assert isinstance(result.x_adv, np.ndarray) and result.x_adv.shape == x.shape


def test_extended_call_receives_the_call(tiny_model) -> None:
    class Extended(_Wild):
        def _extended_call(self, model, detector, x, y):
            return ("extended", detector)

    assert Extended(norm="linf", eps=0.1)(tiny_model, "det", nd.zeros((1, 1, 8, 8)), [0]) == ("extended", "det")

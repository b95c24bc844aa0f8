"""Curriculum values and the catastrophic-overfitting guard's decisions."""

from __future__ import annotations

import numpy as np
import pytest

from gluon_robust.errors import ConfigError
from gluon_robust.training import Curriculum, FastAT, OverfittingGuard, PGDAT
from training_helpers import training_model, values


def test_linear_curriculum_values():
    schedule = Curriculum(eps=0.3, steps=10, warmup_epochs=4)
    table = [(0.0, 0.0, 1), (0.5, 0.0375, 2), (1.0, 0.075, 3), (2.0, 0.15, 6), (3.0, 0.225, 8), (4.0, 0.3, 10),
             (9.0, 0.3, 10)]
    for epoch, eps, steps in table:
        got_eps, got_steps = schedule.at(epoch)
        assert got_eps == pytest.approx(eps) and got_steps == steps, epoch


def test_step_curriculum_values():
    schedule = Curriculum(eps=0.3, steps=9, warmup_epochs=2, kind="step", start_eps=0.03, start_steps=3)
    table = [(0.0, 0.12, 5), (0.99, 0.12, 5), (1.0, 0.21, 7), (1.5, 0.21, 7), (2.0, 0.3, 9), (5.0, 0.3, 9)]
    for epoch, eps, steps in table:
        got_eps, got_steps = schedule.at(epoch)
        assert got_eps == pytest.approx(eps) and got_steps == steps, epoch


def test_no_warmup_means_full_budget_and_budget_reaches_the_method():
    assert Curriculum(eps=0.3, steps=10, warmup_epochs=0).at(0.0) == (0.3, 10)
    method = PGDAT(eps=0.3, steps=10)
    method.set_budget(**dict(zip(("eps", "steps"), Curriculum(eps=0.3, steps=10, warmup_epochs=4).at(2.0))))
    assert (method.eps, method.steps) == (pytest.approx(0.15), 6)
    assert method.step_size == pytest.approx(2.5 * 0.15 / 6)
    fast = FastAT(eps=0.3)
    fast.set_budget(eps=0.1, steps=7)
    assert (fast.eps, fast.steps, fast.step_size) == (0.1, 1, pytest.approx(0.125))


def test_curriculum_validation():
    with pytest.raises(ConfigError, match="kind must be one of linear, step, got 'cosine'"):
        Curriculum(eps=0.3, steps=10, warmup_epochs=2, kind="cosine")
    with pytest.raises(ConfigError, match="start_eps must be <= 0.3, got 0.5"):
        Curriculum(eps=0.3, steps=10, warmup_epochs=2, start_eps=0.5)
    with pytest.raises(ConfigError, match="start_steps must be <= steps"):
        Curriculum(eps=0.3, steps=2, warmup_epochs=2, start_steps=3)
    with pytest.raises(ConfigError, match="warmup_epochs must be >= 0"):
        Curriculum(eps=0.3, steps=10, warmup_epochs=-1)


def _run(sequence, **options):
    guard = OverfittingGuard(**options)
    return [guard.update(epoch, acc) for epoch, acc in enumerate(sequence)], guard


def test_guard_triggers_on_a_collapse_only():
    verdicts, guard = _run([0.30, 0.45, 0.52, 0.50, 0.03])  # Wong et al.'s picture: PGD accuracy falls to ~0
    assert verdicts == ["best", "best", "best", "ok", "collapse"]
    assert (guard.best_epoch, guard.collapsed_epoch) == (2, 4)
    verdicts, _ = _run([0.30, 0.45, 0.38, 0.47, 0.40])  # ordinary noise
    assert "collapse" not in verdicts
    verdicts, _ = _run([0.60, 0.45], max_drop=0.1)
    assert verdicts == ["best", "collapse"]


def test_guard_keeps_and_restores_the_best_weights():
    model = training_model()
    params = model.net.collect_params()
    guard = OverfittingGuard()
    guard.update(0, 0.5, params=params)
    best = values(params)
    for p in params.values():
        p.set_data(p.data() + 1.0)
    assert guard.update(1, 0.1, params=params) == "collapse"
    assert guard.restore(params) == 0
    for key, value in values(params).items():
        np.testing.assert_array_equal(value, best[key])
    state = guard.state_dict()
    other = OverfittingGuard()
    other.load_state_dict(state, guard.best_params)
    assert (other.best_epoch, other.best_accuracy, other.collapsed_epoch, other.history) == (0, 0.5, 1, [0.5, 0.1])


def test_guard_validation():
    with pytest.raises(ConfigError, match="on_collapse must be one of rollback, stop, warn, got 'halt'"):
        OverfittingGuard(on_collapse="halt")
    with pytest.raises(ConfigError, match="max_drop must be <= 1.0, got 2"):
        OverfittingGuard(max_drop=2)
    with pytest.raises(ConfigError, match="pgd_accuracy must be <= 1.0, got 45"):
        OverfittingGuard().update(0, 45)
    with pytest.raises(RuntimeError, match="no best weights"):
        OverfittingGuard().restore(training_model().net.collect_params())

"""APGD, APGD-T and Square against independent float64 NumPy implementations, iterate by iterate.

The expected trajectories come from ``tests/numpy_reference.py`` (plain NumPy,
closed-form gradients of a softmax-linear model, scalar control flow per
sample); the attacks run the same model as a float32 Gluon Dense layer and
report their iterates through their ``trace`` hooks. Step-size sequences and
which candidate is kept must match exactly; points match to float32 rounding.
Each case first checks, on the reference values, that no decision is within
float32 noise of a tie, so that a mismatch means a different algorithm.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks.apgd import APGD, APGDStep
from gluon_robust.attacks.apgdt import APGDT
from gluon_robust.attacks.square import SquareAttack, SquareStep
from gluon_robust.model import load_classifier

from numpy_reference import SoftmaxLinear, apgd_reference, checkpoint_gaps, random_softmax_linear, square_reference

#: Closest a loss comparison may come to a tie (relative to the loss scale), and a gradient coordinate to 0.
TIE = 1e-5
POINT_ATOL = 2e-5


def _setup(shape: Tuple[int, int, int], n: int, seed: int, classes: int = 5,
           scale: float = 4.0) -> Tuple[SoftmaxLinear, Any, np.ndarray, np.ndarray]:
    ref = random_softmax_linear(classes, shape, seed, scale=scale)
    model = load_classifier(ref.gluon(), input_size=shape, bounds=(0.0, 1.0))
    x = np.random.default_rng(seed + 100).uniform(0.0, 1.0, size=(n,) + shape).astype(np.float32)
    y = np.array([int(np.argmax(ref.logits(xi))) for xi in x])
    return ref, model, x, y


def _collect_apgd(events: List[APGDStep]) -> Dict[Tuple[int, int], Dict[str, np.ndarray]]:
    """Per (sample, run): the iterates and step sizes in step order."""
    out: Dict[Tuple[int, int], Dict[str, list]] = defaultdict(lambda: {"x": [], "eta": []})
    for event in events:
        for j, row in enumerate(event.samples):
            out[(int(row), event.run)]["x"].append(event.x[j])
            out[(int(row), event.run)]["eta"].append(event.eta[j])
    return {key: {k: np.stack(v) for k, v in value.items()} for key, value in out.items()}


def _check_apgd(attack: Any, ref_runs: List[List[Any]], expected: np.ndarray, model: Any, x: np.ndarray,
                y: np.ndarray, events: List[APGDStep], norm: str,
                target: Optional[np.ndarray] = None) -> Dict[str, int]:
    for runs in ref_runs:  # no decision within float32 noise of a tie
        for run in runs:
            gaps = np.array(run.gaps)
            assert gaps[gaps > 0].min() > TIE, "the reference trajectory has a near tie: pick other parameters"
            assert run.sign_margin > TIE or norm == "l2"
    result = attack(model, x, y, target=target)
    traced = _collect_apgd(events)
    stats = {"halvings": 0, "kept": 0, "runs": 0, "boundary": 0}
    for i, runs in enumerate(ref_runs):
        assert {r for (row, r) in traced if row == i} == set(range(len(runs))), f"sample {i} ran a different number of runs"
        for r, run in enumerate(runs):
            ours = traced[(i, r)]
            ref_eta = np.array(run.etas)
            np.testing.assert_array_equal(ours["eta"].astype(np.float32), ref_eta.astype(np.float32),
                                          err_msg=f"step sizes of sample {i}, run {r}")
            np.testing.assert_allclose(ours["x"], np.stack(run.xs), atol=POINT_ATOL, rtol=0,
                                       err_msg=f"iterates of sample {i}, run {r}")
            halved = int((ref_eta[1:] < ref_eta[:-1]).sum())
            stats["halvings"] += halved
            stats["kept"] += len(checkpoint_gaps(len(run.xs) - 1)) - halved
            stats["boundary"] += run.boundary_checks
            stats["runs"] += 1
    np.testing.assert_allclose(result.x_adv, expected, atol=POINT_ATOL, rtol=0)
    return stats


# norm, loss, eps, steps, restarts, rho, targeted, model seed, weight scale: each chosen so that no
# decision of the reference is a float32 near-tie, some checkpoints halve and some do not, and some samples
# succeed and some do not.
APGD_CASES = [
    ("linf", "ce", 0.04, 20, 2, 0.75, False, 1, 8.0),
    ("linf", "dlr", 0.04, 20, 1, 0.5, False, 0, 8.0),  # rho * gap is reached exactly: "<=" against "<"
    ("l2", "ce", 0.25, 12, 2, 0.75, False, 1, 8.0),
    ("linf", "dlr", 0.05, 20, 1, 0.75, True, 1, 4.0),
]


@pytest.mark.parametrize("norm,loss,eps,steps,restarts,rho,targeted,seed,scale", APGD_CASES)
def test_apgd_follows_the_reference_iterate_by_iterate(norm: str, loss: str, eps: float, steps: int, restarts: int,
                                                        rho: float, targeted: bool, seed: int, scale: float) -> None:
    ref, model, x, y = _setup((2, 5, 5), 8, seed, scale=scale)
    target = (y + 1 + np.arange(len(y)) % 3) % 5 if targeted else None
    events: List[APGDStep] = []
    attack = APGD(eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss, rho=rho, seed=7, trace=events.append)
    expected, runs = apgd_reference(ref, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss,
                                    rho=rho, seed=7, target=target)
    stats = _check_apgd(attack, runs, expected, model, x, y, events, norm, target)
    found = sum(r[-1].x_found is not None for r in runs)
    assert stats["halvings"] > 0 and stats["kept"] > 0
    assert 0 < found < len(x)
    if rho == 0.5:
        assert stats["boundary"] > 0


def test_apgd_on_a_concave_objective_keeps_the_step_at_the_first_unimproved_checkpoint() -> None:
    # Starts next to the maximum of -||z - c||^2: the best loss often does not improve before the first checkpoint.
    # There the no-improvement test must be off (the reference starts with "halved at the last check" set).
    shape, eps, steps, rho = (2, 5, 5), 0.05, 20, 0.1
    ref = random_softmax_linear(5, shape, 3, scale=16.0)
    rng = np.random.default_rng(103)
    base = rng.uniform(0.3, 0.7, size=shape)
    x = np.clip(base + rng.uniform(-0.03, 0.03, size=(8,) + shape), 0, 1).astype(np.float32)
    ref.centre = ref.logits(base)
    y = np.array([int(np.argmax(ref.logits(xi))) for xi in x])
    centre = nd.array(ref.centre[None].astype(np.float32))

    def quadratic(logits: nd.NDArray, labels: nd.NDArray, target: Optional[nd.NDArray]) -> nd.NDArray:
        return -nd.sum(nd.square(nd.broadcast_sub(logits, centre)), axis=1)

    model = load_classifier(ref.gluon(), input_size=shape, bounds=(0.0, 1.0))
    events: List[APGDStep] = []
    attack = APGD(eps=eps, steps=steps, loss=quadratic, rho=rho, seed=7, trace=events.append)
    expected, runs = apgd_reference(ref, x, y, eps=eps, steps=steps, loss="quadratic", rho=rho, seed=7)
    stats = _check_apgd(attack, runs, expected, model, x, y, events, "linf")
    assert sum(r.first_check_unimproved for rs in runs for r in rs) > 0
    assert stats["halvings"] > 0 and stats["kept"] > 0


def test_apgdt_follows_the_reference_iterate_by_iterate() -> None:
    ref, model, x, y = _setup((2, 5, 5), 8, seed=2, scale=4.0)
    events: List[APGDStep] = []
    eps, steps = 0.03, 30
    attack = APGDT(eps=eps, steps=steps, n_target_classes=3, seed=7, trace=events.append)
    # APGD-T: targeted DLR towards the j-th most likely other class; a success is any misclassification.
    expected, runs = apgd_reference(ref, x, y, eps=eps, steps=steps, loss="dlr", seed=7, n_target_classes=3)
    stats = _check_apgd(attack, runs, expected, model, x, y, events, "linf")
    assert stats["runs"] > len(x)  # some samples went on to a second target
    assert stats["kept"] > 0 and stats["halvings"] > 0


@pytest.mark.parametrize("norm,eps,queries,rescale,targeted,shape", [
    ("linf", 0.05, 300, False, False, (2, 10, 10)),
    ("linf", 0.05, 101, True, False, (2, 10, 10)),
    ("linf", 0.08, 120, False, True, (1, 8, 8)),
    ("l2", 0.5, 200, False, False, (2, 10, 10)),
    ("l2", 0.5, 120, False, False, (1, 8, 8)),
])
def test_square_follows_the_reference_iterate_by_iterate(norm: str, eps: float, queries: int, rescale: bool,
                                                         targeted: bool, shape: Tuple[int, int, int]) -> None:
    ref, model, x, y = _setup(shape, 8, seed=2, scale=3.0)
    target = (y + 1) % 5 if targeted else None
    expected, runs = square_reference(ref, x, y, eps=eps, norm=norm, max_queries=queries, rescale_schedule=rescale,
                                      seed=5, target=target)
    for run in runs:
        gaps = np.array(run.gaps)
        assert gaps.size == 0 or gaps[gaps > 0].min() > TIE, "near tie in the reference: pick other parameters"
    events: List[SquareStep] = []
    attack = SquareAttack(eps=eps, norm=norm, max_queries=queries, rescale_schedule=rescale, seed=5,
                          trace=events.append)
    result = attack(model, x, y, target=target)
    candidates: Dict[int, list] = defaultdict(list)
    bests: Dict[int, list] = defaultdict(list)
    for event in events:
        for j, row in enumerate(event.samples):
            candidates[int(row)].append(event.candidate[j])
            bests[int(row)].append(event.x_best[j])
    for i, run in enumerate(runs):
        assert len(candidates[i]) == len(run.candidates), f"sample {i} stopped after a different number of queries"
        np.testing.assert_allclose(np.stack(candidates[i]), np.stack(run.candidates), atol=POINT_ATOL, rtol=0)
        np.testing.assert_allclose(np.stack(bests[i]), np.stack(run.bests), atol=POINT_ATOL, rtol=0)
    np.testing.assert_allclose(result.x_adv, expected, atol=POINT_ATOL, rtol=0)
    np.testing.assert_array_equal(result.queries, [len(r.candidates) for r in runs])
    stopped = np.array([r.margins[-1] <= 0 for r in runs])
    assert stopped.any() and not stopped.all(), "the case should have samples that stop early and samples that do not"

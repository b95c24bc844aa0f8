"""Golden cases: every attack, training method, detector and defence on a fixed tiny model and fixed seeds.

Each case is a function of no arguments that seeds itself, builds its own
model and inputs from fixed NumPy generators, runs the code under test once,
and returns a flat ``{name: numpy array}`` dict. ``tests/golden/record.py``
writes these dicts to ``tests/golden/<case>.npz``; ``tests/test_golden.py``
re-runs each case and compares with the recorded arrays bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from mxnet import autograd, gluon, nd

from gluon_robust.attacks import ATTACKS
from gluon_robust.model import Classifier
from gluon_robust.training import TRAINING_METHODS
from gluon_robust.training.checkpoint import structural_params

from .cases_defenses import adaptive_case, defense_cases, detector_cases, model_defense_cases
from .fixtures import CLASSES, EPS, Arrays, as_numpy, eval_model, inputs, labelled, seed_all, train_model


# ---------------------------------------------------------------- attacks
#: Small hyperparameters per attack (registry name); eps is added per norm where the attack requires it.
ATTACK_OPTIONS: Dict[str, Dict[str, Any]] = {
    "fgsm": {},
    "pgd": {"steps": 5},
    "bim": {"steps": 5},
    "mifgsm": {"steps": 5},
    "apgd": {"steps": 6},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "cw-linf": {"steps": 6},
    "cw": {"binary_search_steps": 2, "steps": 10, "learning_rate": 0.05, "initial_const": 1.0},
    "ead": {"binary_search_steps": 2, "steps": 10, "learning_rate": 0.05, "initial_const": 1.0},
    "deepfool": {"steps": 10},
    "jsma": {},
    "fab": {"steps": 5},
    "fab-t": {"steps": 5, "n_target_classes": 2},
    "square": {"max_queries": 40},
    "simba": {"max_queries": 40},
    "simba-dct": {"max_queries": 40},
    "nes": {"max_queries": 60, "samples": 10},
    "bandits": {"max_queries": 40},
    "zoo": {"max_queries": 40, "coordinates": 16},
    "hopskipjump": {"max_queries": 120, "initial_evals": 10, "max_evals": 20, "init_tries": 20},
    "boundary": {"max_queries": 120, "init_tries": 20},
    "transfer": {"steps": 3},
}

#: The white-box gradient attacks (the first group recorded).
GRADIENT_ATTACKS = ("fgsm", "pgd", "bim", "mifgsm", "apgd", "apgd-t", "cw-linf", "cw", "ead", "deepfool", "jsma",
                    "fab", "fab-t")


def _attack_kwargs(name: str, norm: str) -> Dict[str, Any]:
    factory = ATTACKS.factory(name)
    params = inspect.signature(factory).parameters
    kwargs = dict(ATTACK_OPTIONS[name])
    if "norm" in params:
        kwargs["norm"] = norm
    if "eps" in params and params["eps"].default is inspect.Parameter.empty:
        kwargs["eps"] = EPS[norm]
    if name == "transfer":
        kwargs["surrogate"] = eval_model(seed=7)
    return kwargs


def attack_case(name: str, norm: str, targeted: bool) -> Arrays:
    """Run one attack on four fixed samples of the tiny model; every field of its result."""
    seed_all()
    model = eval_model()
    x, y, target = labelled(model)
    attack = ATTACKS.get(name, **_attack_kwargs(name, norm))
    result = attack(model, x, y, target=target if targeted else None)
    out = {
        "x_adv": as_numpy(result.x_adv),
        "success": np.asarray(result.success),
        "distance": np.asarray(result.distance),
        "predictions": np.asarray(result.predictions),
        "iterations": np.asarray(result.iterations),
        "queries": np.asarray(result.queries),
        "norm": np.asarray(result.norm),
    }
    if result.targets is not None:
        out["targets"] = np.asarray(result.targets)
    for key, value in sorted(result.extras.items()):
        if isinstance(value, (np.ndarray, nd.NDArray)):
            out[f"extras.{key}"] = as_numpy(value)
    return out


def attack_cases(names: Optional[Tuple[str, ...]] = None) -> Dict[str, Callable[[], Arrays]]:
    """One case per registered attack, norm it supports, and mode (untargeted; targeted where supported)."""
    cases: Dict[str, Callable[[], Arrays]] = {}
    for name in ATTACKS.names():
        if (names is not None and name not in names) or name not in ATTACK_OPTIONS:
            continue  # an attack without options is reported by test_every_registered_name_has_a_case
        factory = ATTACKS.factory(name)
        modes = (False, True) if factory.supports_targeted else (False,)
        for norm in factory.norms:
            for targeted in modes:
                key = f"attack-{name}-{norm}-{'targeted' if targeted else 'untargeted'}"
                cases[key] = (lambda n=name, m=norm, t=targeted: attack_case(n, m, t))
    return cases


# ---------------------------------------------------------------- training methods
def _teacher() -> Classifier:
    return train_model(seed=3, batchnorm=False)


#: One or more small configurations per training method (registry name): (suffix, options factory).
TRAINING_OPTIONS: Dict[str, List[Tuple[str, Callable[[], Dict[str, Any]]]]] = {
    "pgd-at": [
        ("default", lambda: {"eps": 0.1, "steps": 3}),
        ("mix", lambda: {"eps": 0.1, "steps": 3, "mix": 0.5}),
        ("eval-bn", lambda: {"eps": 0.1, "steps": 3, "attack_bn": "eval"}),
        ("l2", lambda: {"eps": 0.5, "norm": "l2", "steps": 3}),
        ("updates-stats", lambda: {"eps": 0.1, "steps": 2, "attack_updates_stats": True}),
    ],
    "fast-at": [("default", lambda: {"eps": 0.1})],
    "free-at": [("default", lambda: {"eps": 0.1, "replays": 2})],
    "trades": [("default", lambda: {"eps": 0.1, "steps": 3})],
    "mart": [("default", lambda: {"eps": 0.1, "steps": 3})],
    "input-grad": [("default", lambda: {"weight": 1.0})],
    "distill": [("default", lambda: {"teacher": _teacher(), "temperature": 10.0})],
    "standard": [("default", lambda: {})],
    "gaussian": [("default", lambda: {"sigma": 0.25})],
}


def training_case(name: str, options: Callable[[], Dict[str, Any]], steps: int = 2) -> Arrays:
    """A few SGD steps of one training method on a fixed batch: losses, adversarial batch and final parameters."""
    seed_all()
    model = train_model()
    method = TRAINING_METHODS.get(name, **options())
    trainer = gluon.Trainer(model.net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    x_np = inputs(8, seed=2)
    y_np = np.random.RandomState(3).randint(0, CLASSES, 8).astype(np.int64)
    x, y = nd.array(x_np), nd.array(y_np)
    out: Arrays = {}
    for step in range(steps):
        with autograd.record():
            loss = method(model, x, y)
        loss.backward()
        trainer.step(len(y_np))
        out[f"loss.{step}"] = loss.asnumpy()
    for key, p in structural_params(model.net).items():
        out[f"param.{key}"] = p.data().asnumpy()
    out["logits"] = model(nd.array(inputs(4, seed=5))).asnumpy()
    if hasattr(method, "perturb"):  # the batch the method would train on next
        out["adversarial"] = as_numpy(method.perturb(model, x, y))
    return out


def training_cases() -> Dict[str, Callable[[], Arrays]]:
    """One case per registered training method and configuration."""
    cases: Dict[str, Callable[[], Arrays]] = {}
    for name in TRAINING_METHODS.names():
        for suffix, options in TRAINING_OPTIONS.get(name, []):
            cases[f"train-{name}-{suffix}"] = (lambda n=name, o=options: training_case(n, o))
    return cases


def loop_case() -> Arrays:
    """Two short epochs of the complete loop (``train_adversarial``) with a curriculum and validation."""
    from gluon_robust.data import ArraySource
    from gluon_robust.training import Curriculum
    from gluon_robust.training.loop import train_adversarial

    seed_all()
    model = train_model()
    rng = np.random.RandomState(4)
    train = ArraySource(inputs(24, seed=6), rng.randint(0, CLASSES, 24).astype(np.int64), name="golden-train")
    val = ArraySource(inputs(8, seed=7), rng.randint(0, CLASSES, 8).astype(np.int64), name="golden-val")
    method = TRAINING_METHODS.get("pgd-at", eps=0.1, steps=2)
    run = train_adversarial(
        model, method, train, val=val, epochs=2, batch_size=8, optimizer="sgd", lr=0.05,
        curriculum=Curriculum(eps=0.1, steps=2, warmup_epochs=1), val_eps=0.1, val_steps=2, seed=3, progress=False,
    )
    out: Arrays = {}
    for key in ("train_loss", "eps", "steps", "lr", "clean_accuracy", "pgd_accuracy", "pgd_iters"):
        out[f"epochs.{key}"] = np.asarray([epoch[key] for epoch in run.epochs], dtype=np.float64)
    out["global_step"] = np.int64(run.global_step)
    for key, p in structural_params(model.net).items():
        out[f"param.{key}"] = p.data().asnumpy()
    return out


def all_cases() -> Dict[str, Callable[[], Arrays]]:
    """Every golden case by name."""
    cases: Dict[str, Callable[[], Arrays]] = {}
    cases.update(attack_cases())
    cases.update(training_cases())
    cases["train-loop-pgd-at-curriculum"] = loop_case
    cases.update(detector_cases())
    cases["adaptive-max-softmax"] = adaptive_case
    cases.update(defense_cases())
    cases.update(model_defense_cases())
    return cases


CASES = all_cases()

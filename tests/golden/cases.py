"""Golden cases: every attack, training method, detector and defence on a fixed tiny model and fixed seeds.

Each case is a function of no arguments that seeds itself, builds its own
model and inputs from fixed NumPy generators, runs the code under test once,
and returns a flat ``{name: numpy array}`` dict. ``tests/golden/record.py``
writes these dicts to ``tests/golden/<case>.npz``; ``tests/test_golden.py``
re-runs each case and compares with the recorded arrays bit for bit.
"""

from __future__ import annotations

import inspect
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from gluon_robust.attacks import ATTACKS
from gluon_robust.model import Classifier, load_classifier
from gluon_robust.training import TRAINING_METHODS
from gluon_robust.training.checkpoint import structural_params

Arrays = Dict[str, np.ndarray]

#: Input shape of one sample, and the number of classes of the tiny model.
SHAPE = (1, 8, 8)
CLASSES = 10
#: Radius per norm for the fixed-epsilon attacks (pixels in [0, 1]).
EPS = {"linf": 0.03, "l2": 0.2, "l1": 1.0}


# ---------------------------------------------------------------- fixed model and data
def seed_all(seed: int = 0) -> None:
    """Seed every global generator a case might touch, so that a case does not depend on the ones run before it."""
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def tiny_net(seed: int = 0, batchnorm: bool = True) -> gluon.HybridBlock:
    """A small conv net on 1x8x8 inputs whose every parameter (BatchNorm statistics included) comes from ``seed``."""
    net = gluon.nn.HybridSequential()
    layers: List[gluon.Block] = [gluon.nn.Conv2D(6, 3, padding=1, use_bias=not batchnorm)]
    if batchnorm:
        layers.append(gluon.nn.BatchNorm())
    layers += [gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2), gluon.nn.Dense(16)]
    if batchnorm:
        layers.append(gluon.nn.BatchNorm())
    layers += [gluon.nn.Activation("tanh"), gluon.nn.Dense(CLASSES)]
    net.add(*layers)
    net.initialize(mx.init.Zero())
    net(nd.zeros((1,) + SHAPE))
    rng = np.random.RandomState(seed)
    for name, p in structural_params(net).items():
        shape = p.shape
        if name.endswith("weight"):
            value = rng.normal(0.0, 1.5 / np.sqrt(np.prod(shape[1:])), shape)
        elif name.endswith("bias") or name.endswith("beta") or name.endswith("running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # pragma: no cover - a layer type this net does not have
            raise AssertionError(f"unexpected parameter {name}")
        p.set_data(nd.array(value.astype(np.float32)))
    return net


def eval_model(seed: int = 0) -> Classifier:
    """The frozen, folded, hybridised classifier that attacks, detectors and defences run on."""
    return load_classifier(tiny_net(seed), input_size=SHAPE, mean=0.5, std=0.25)


def train_model(seed: int = 0, batchnorm: bool = True) -> Classifier:
    """A trainable (unfolded, ``grad_req='write'``) classifier for the training methods."""
    net = tiny_net(seed, batchnorm=batchnorm)
    model = Classifier(net, num_classes=CLASSES, input_size=SHAPE, mean=0.5, std=0.25)
    net.collect_params().setattr("grad_req", "write")
    model.hybridize(static_alloc=True)
    return model


def inputs(n: int, seed: int = 1) -> np.ndarray:
    """``n`` fixed inputs in [0, 1]."""
    return np.random.RandomState(seed).rand(n, *SHAPE).astype(np.float32)


def labelled(model: Classifier, n: int = 4, seed: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed inputs, the model's own labels for them, and fixed targets different from those labels."""
    x = inputs(n, seed)
    y = model.predict(x).argmax(axis=1).astype(np.int64)
    target = ((y + 1 + np.arange(n) % (CLASSES - 1)) % CLASSES).astype(np.int64)
    return x, y, target


def as_numpy(value: Any) -> np.ndarray:
    return value.asnumpy() if isinstance(value, nd.NDArray) else np.asarray(value)


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
        if names is not None and name not in names:
            continue
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
        for suffix, options in TRAINING_OPTIONS[name]:
            cases[f"train-{name}-{suffix}"] = (lambda n=name, o=options: training_case(n, o))
    return cases


def all_cases() -> Dict[str, Callable[[], Arrays]]:
    """Every golden case by name."""
    cases: Dict[str, Callable[[], Arrays]] = {}
    cases.update(attack_cases(GRADIENT_ATTACKS))
    cases.update(training_cases())
    return cases


CASES = all_cases()

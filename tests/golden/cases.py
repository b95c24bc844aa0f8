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


# ---------------------------------------------------------------- detectors
#: Small settings per detector (registry name).
DETECTOR_OPTIONS: Dict[str, Dict[str, Any]] = {
    "confidence": {},
    "entropy": {"temperature": 2.0},
    "feature-squeezing": {},
    "mahalanobis": {},
    "magnet": {"epochs": 2, "batch_size": 16},
    "binary": {"attack_eps": 0.1, "attack_steps": 3, "max_samples": 32, "filters": 4, "epochs": 2, "batch_size": 16},
}


def _pgd_examples(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return as_numpy(ATTACKS.get("pgd", eps=EPS["linf"], steps=5)(model, x, y).x_adv)


def _score_gradient(detector: Any, model: Any, x: np.ndarray) -> np.ndarray:
    """Gradient of the summed scores with respect to the input (what adaptive attacks follow)."""
    from gluon_robust.attacks.base import gradient_recording

    xv = nd.array(x)
    xv.attach_grad()
    with gradient_recording(model):
        total = nd.sum(detector.score_nd(model, xv))
    (grad,) = autograd.grad(total, [xv], retain_graph=False)
    return grad.asnumpy()


def detector_case(name: str) -> Arrays:
    """Fit on 32 clean inputs, calibrate on 32 others at 10% FPR, then score and flag clean and PGD inputs."""
    from gluon_robust.detection import DETECTORS

    seed_all()
    model = eval_model()
    x_fit = inputs(32, seed=10)
    detector = DETECTORS.get(name, **DETECTOR_OPTIONS[name])
    detector.fit(model, (x_fit, model.predict(x_fit).argmax(axis=1)))
    calibration = detector.score(model, inputs(32, seed=11))
    threshold = detector.calibrate(calibration, fpr=0.1)
    x, y, _ = labelled(model, n=6, seed=12)
    x_adv = _pgd_examples(model, x, y)
    clean, adversarial = detector.score(model, x), detector.score(model, x_adv)
    metrics = detector.evaluate(model, x, x_adv)
    out = {
        "calibration_scores": calibration, "threshold": np.float64(threshold),
        "clean_scale": np.float64(detector.clean_scale), "x_adv": x_adv,
        "clean_scores": clean, "clean_flags": detector.is_flagged(clean),
        "adversarial_scores": adversarial, "adversarial_flags": detector.flag(model, x_adv),
        "score_gradient": _score_gradient(detector, model, x),
    }
    for key, value in sorted(metrics.items()):
        out[f"metric.{key}"] = np.float64(value)
    for net_name, net in sorted(detector.networks().items()):
        for key, p in structural_params(net).items():
            out[f"network.{net_name}.{key}"] = p.data().asnumpy()
    return out


def detector_cases() -> Dict[str, Callable[[], Arrays]]:
    """One case per registered detector."""
    from gluon_robust.detection import DETECTORS

    return {f"detector-{name}": (lambda n=name: detector_case(n)) for name in DETECTORS.names()}


def adaptive_case() -> Arrays:
    """The detector-aware attack (AdaptiveAttack) against a calibrated max-softmax detector, with every stage."""
    from gluon_robust.detection import AdaptiveAttack, MaxSoftmaxDetector

    seed_all()
    model = eval_model()
    detector = MaxSoftmaxDetector()
    detector.calibrate(detector.score(model, inputs(32, seed=11)), fpr=0.2)
    x, y, _ = labelled(model, n=4, seed=12)
    naive = ATTACKS.get("pgd", eps=EPS["linf"], steps=5)(model, x, y)
    result = AdaptiveAttack(eps=EPS["linf"], steps=5, restarts=2)(
        model, detector, x, y, candidates={"pgd": as_numpy(naive.x_adv)})
    return {
        "x_adv": np.asarray(result.x_adv), "misclassified": np.asarray(result.misclassified),
        "flagged": np.asarray(result.flagged), "success": np.asarray(result.success),
        "scores": np.asarray(result.scores), "distance": np.asarray(result.distance),
        "source": np.asarray([str(s) for s in result.source]),
    }


# ---------------------------------------------------------------- defences
def _quantise(x: np.ndarray) -> np.ndarray:
    return np.round(x * 7.0) / 7.0


#: Settings per preprocessing defence (registry name).
DEFENSE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "jpeg": {"quality": 60},
    "bitdepth": {"bits": 3},
    "median": {"size": 3},
    "spatial": {"size": 3},
    "noise": {"sigma": 0.1},
    "resize-pad": {"max_ratio": 1.25},
    "tv": {"steps": 3},
    "wrap": {"fn": _quantise},
}


def _input_gradient(model: Any, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Logits and the gradient of the summed cross-entropy with respect to the input, as attacks take it."""
    from gluon_robust.attacks.base import gradient_recording
    from gluon_robust.training.adversarial import cross_entropy

    xv = nd.array(x)
    xv.attach_grad()
    with gradient_recording(model):
        logits = model(xv)
        loss = nd.sum(cross_entropy(logits, nd.array(y)))
    (grad,) = autograd.grad(loss, [xv], retain_graph=False)
    return logits.asnumpy(), grad.asnumpy()


def defense_case(name: str) -> Arrays:
    """One defence in front of the tiny model: its output, and per gradient mode the logits and input gradient."""
    from gluon_robust.defenses import GRADIENT_MODES, DEFENSES, DefendedClassifier
    from gluon_robust.errors import ConfigError

    model = eval_model()
    x, y, _ = labelled(model, n=4, seed=13)
    out: Arrays = {}
    seed_all()
    defense = DEFENSES.get(name, **DEFENSE_OPTIONS[name])
    out["transform"] = as_numpy(defense.transform(nd.array(x), model.bounds))
    substitute = defense.substitute(nd.array(x), model.bounds)
    if substitute is not None:
        out["substitute"] = as_numpy(substitute)
    for mode in GRADIENT_MODES:
        seed_all()
        try:
            defended = DefendedClassifier(model, [defense], gradient=mode)
        except ConfigError:
            continue
        out[f"{mode}.preprocessed"] = as_numpy(defended.preprocess(nd.array(x)))
        out[f"{mode}.logits"], out[f"{mode}.gradient"] = _input_gradient(defended, x, y)
        out[f"{mode}.eot_samples"] = np.int64(defended.eot_samples)
    seed_all()
    defended = DefendedClassifier(model, [defense], gradient="auto")
    result = ATTACKS.get("pgd", eps=EPS["linf"], steps=3, eot_samples=defended.eot_samples)(defended, x, y)
    out["pgd.x_adv"] = as_numpy(result.x_adv)
    out["pgd.success"] = np.asarray(result.success)
    out["pgd.predictions"] = np.asarray(result.predictions)
    return out


def defense_cases() -> Dict[str, Callable[[], Arrays]]:
    """One case per registered preprocessing defence."""
    from gluon_robust.defenses import DEFENSES

    return {f"defense-{name}": (lambda n=name: defense_case(n)) for name in DEFENSES.names()}


def ensemble_case(mode: str) -> Arrays:
    """An ensemble of two tiny models: outputs and input gradient."""
    from gluon_robust.defenses import Ensemble

    seed_all()
    members = [eval_model(seed=0), eval_model(seed=4)]
    ensemble = Ensemble(members, mode=mode)
    x, y, _ = labelled(members[0], n=4, seed=14)
    logits, grad = _input_gradient(ensemble, x, y)
    return {"logits": logits, "gradient": grad, "predict": np.asarray(ensemble.predict(x))}


def smoothing_case() -> Arrays:
    """Randomised smoothing (Cohen et al. 2019): predictions, certificates, and the soft smoothed view's gradient."""
    from gluon_robust.defenses import SmoothedClassifier, SoftSmoothed

    seed_all()
    model = eval_model()
    x, y, _ = labelled(model, n=4, seed=15)
    smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=64)
    out: Arrays = {"predict": np.asarray(smoothed.predict(x, n=50, alpha=0.01))}
    cert = smoothed.certify(x, n0=20, n=100, alpha=0.01)
    for key in ("predictions", "radii", "p_lower", "counts", "selected"):
        out[f"certify.{key}"] = np.asarray(getattr(cert, key))
    seed_all()
    soft = SoftSmoothed(model, sigma=0.25, samples=4)
    out["soft.logits"], out["soft.gradient"] = _input_gradient(soft, x, y)
    return out


def model_defense_cases() -> Dict[str, Callable[[], Arrays]]:
    """The model-level defences (not preprocessors): ensembles and randomised smoothing."""
    from gluon_robust.defenses import ENSEMBLE_MODES

    cases: Dict[str, Callable[[], Arrays]] = {
        f"ensemble-{mode}": (lambda m=mode: ensemble_case(m)) for mode in ENSEMBLE_MODES
    }
    cases["smoothing"] = smoothing_case
    return cases


def all_cases() -> Dict[str, Callable[[], Arrays]]:
    """Every golden case by name."""
    cases: Dict[str, Callable[[], Arrays]] = {}
    cases.update(attack_cases())
    cases.update(training_cases())
    cases.update(detector_cases())
    cases["adaptive-max-softmax"] = adaptive_case
    cases.update(defense_cases())
    cases.update(model_defense_cases())
    return cases


CASES = all_cases()

"""Golden cases of the detectors, the adaptive detector attack and the defences."""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np
from mxnet import autograd, nd

from gluon_robust.attacks import ATTACKS
from gluon_robust.training.checkpoint import structural_params

from .fixtures import EPS, Arrays, as_numpy, eval_model, input_gradient, inputs, labelled, seed_all


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

    return {f"detector-{name}": (lambda n=name: detector_case(n)) for name in DETECTORS.names()
            if name in DETECTOR_OPTIONS}


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
        out[f"{mode}.logits"], out[f"{mode}.gradient"] = input_gradient(defended, x, y)
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

    return {f"defense-{name}": (lambda n=name: defense_case(n)) for name in DEFENSES.names()
            if name in DEFENSE_OPTIONS}


def ensemble_case(mode: str) -> Arrays:
    """An ensemble of two tiny models: outputs and input gradient."""
    from gluon_robust.defenses import Ensemble

    seed_all()
    members = [eval_model(seed=0), eval_model(seed=4)]
    ensemble = Ensemble(members, mode=mode)
    x, y, _ = labelled(members[0], n=4, seed=14)
    logits, grad = input_gradient(ensemble, x, y)
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
    out["soft.logits"], out["soft.gradient"] = input_gradient(soft, x, y)
    return out


def model_defense_cases() -> Dict[str, Callable[[], Arrays]]:
    """The model-level defences (not preprocessors): ensembles and randomised smoothing."""
    from gluon_robust.defenses import ENSEMBLE_MODES

    cases: Dict[str, Callable[[], Arrays]] = {
        f"ensemble-{mode}": (lambda m=mode: ensemble_case(m)) for mode in ENSEMBLE_MODES
    }
    cases["smoothing"] = smoothing_case
    return cases

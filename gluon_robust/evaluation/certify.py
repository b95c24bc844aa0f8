"""Certified L2 accuracy of a classifier under randomized smoothing, over a data source.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, https://arxiv.org/abs/1902.02918):
:func:`certify_points` certifies every point of a source (per-point seeded, so the
points of a slice are the slice of the whole source's points) and :func:`certify_report`
turns the per-point arrays into the report that ``gluon-robust certify`` writes.
:func:`certify_source` does both. The command line (``commands/certify.py``) and
``certify --cluster`` (``cluster/certify.py``) call these.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Sequence

import numpy as np
from scipy.stats import norm
from tqdm import tqdm

from ..validation import check_int, check_positive, check_probability, check_sample_count, check_source_labels

__all__ = ["certify_source", "certify_points", "certify_report", "check_certify_options", "POINT_ARRAYS",
           "DEFAULT_RADII"]

logger = logging.getLogger("gluon_robust.commands.certify")

#: The radii of the report unless others are given.
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_certify_options(sigma: Any, n0: Any, n: Any, alpha: Any, radii: Sequence[float], batch_size: Any) -> None:
    """Validate before anything is loaded; each error names the flag and the value."""
    check_positive("sigma", sigma)
    check_sample_count("n0", n0)
    check_sample_count("n", n)
    check_int("batch_size", batch_size)
    check_probability("alpha", alpha)
    for r in radii:
        check_positive("radius", r, allow_zero=True)


def certify_source(
    model: Any,
    source: Any,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    radii: Sequence[float] = DEFAULT_RADII,
    batch_size: int = 1000,
    clip: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, Any]:
    """Certify every sample of a data source and return the report (JSON-ready).

    Parameters
    ----------
    model : Classifier
        The base classifier.
    source : DataSource, (x, y) arrays or Gluon DataLoader
        The samples (see :func:`~gluon_robust.data.as_source`); read in chunks
        of 64, certified one at a time.
    sigma, n0, n, alpha, batch_size, clip, seed
        See :class:`~gluon_robust.defenses.smoothing.SmoothedClassifier` and its ``certify``.
    radii : sequence of float
        L2 radii at which the certified accuracy is reported.
    progress : bool
        A tqdm bar over the samples.

    Returns
    -------
    dict
        ``certified_accuracy`` (radius -> fraction), ``abstain_rate``,
        ``points`` (per sample: index, label, prediction, radius, p_lower,
        correct, abstain) and the settings; ``clean_accuracy`` of the base
        classifier without noise and ``warnings`` (no samples, or that clean
        accuracy at or below chance: see
        :func:`gluon_robust.evaluation.sanity.accuracy_warnings`).
    """
    from ..data import as_source

    check_certify_options(sigma, n0, n, alpha, radii, batch_size)
    source = as_source(source)
    start = time.perf_counter()
    arrays = certify_points(model, source, sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, clip=clip,
                            seed=seed, progress=progress)
    return certify_report(arrays, model=model, data=getattr(source, "name", type(source).__name__),
                          sigma=sigma, n0=n0, n=n, alpha=alpha, radii=radii, batch_size=batch_size, clip=clip, seed=seed,
                          seconds=time.perf_counter() - start)


#: The per-sample arrays of :func:`certify_points` (and ``clean_correct``, a count).
POINT_ARRAYS = ("index", "label", "prediction", "radius", "p_lower", "clean_correct")


def certify_points(
    model: Any, source: Any, *, sigma: float, n0: int = 100, n: int = 1000, alpha: float = 0.001,
    batch_size: int = 1000, clip: bool = False, seed: int = 0, progress: bool = True,
) -> Dict[str, np.ndarray]:
    """Certify every sample of ``source``: the per-sample arrays of :data:`POINT_ARRAYS`.

    Every point draws its noise from ``(seed, the point's bytes)`` (see
    :mod:`gluon_robust.defenses.smoothing`), so the arrays of a slice of the
    source are the slice of the whole source's arrays: the chunks of
    ``certify --cluster`` concatenate to the single-process result.
    ``clean_correct`` is the base classifier's count of correct clean
    predictions (a 0-d array).
    """
    from ..data import as_source, check_fits
    from ..defenses.smoothing import SmoothedClassifier

    check_certify_options(sigma, n0, n, alpha, (0.0,), batch_size)
    source = as_source(source)
    check_fits(model, source)
    check_source_labels(source, getattr(model, "num_classes", None))
    smoothed = SmoothedClassifier(model, sigma=sigma, batch_size=batch_size, clip=clip, seed=seed)
    preds, rad, plow, labels, index = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)], [np.zeros(0, np.int64)], [
        np.zeros(0, np.int64)]  # an empty source gives empty arrays
    clean_correct = 0
    bar = tqdm(total=len(source), desc="certify", unit="pt", disable=not progress, leave=False)
    try:
        for batch in source.batches(64):
            for j in range(len(batch.y)):  # one point at a time, so that the bar moves per point
                cert = smoothed.certify(batch.x[j: j + 1], n0=n0, n=n, alpha=alpha)
                preds.append(cert.predictions)
                rad.append(cert.radii)
                plow.append(cert.p_lower)
                bar.update(1)
            clean_correct += int((model.predict(batch.x).argmax(axis=1) == batch.y).sum())
            labels.append(batch.y.astype(np.int64))
            index.append(batch.index)
    finally:
        bar.close()
    return {"index": np.concatenate(index).astype(np.int64), "label": np.concatenate(labels),
            "prediction": np.concatenate(preds).astype(np.int64), "radius": np.concatenate(rad).astype(np.float64),
            "p_lower": np.concatenate(plow).astype(np.float64), "clean_correct": np.array(clean_correct, np.int64)}


def certify_report(
    arrays: Dict[str, np.ndarray], *, model: Any, data: str, sigma: float, n0: int, n: int, alpha: float,
    radii: Sequence[float], batch_size: int, clip: bool, seed: int, seconds: float,
) -> Dict[str, Any]:
    """The report of :func:`certify_source` from the per-sample arrays of :func:`certify_points`."""
    from ..defenses.smoothing import ABSTAIN, certified_accuracy
    from ..evaluation.sanity import accuracy_warnings, emit as emit_sanity

    predictions, radius, p_lower = arrays["prediction"], arrays["radius"], arrays["p_lower"]
    y, idx, clean_correct = arrays["label"], arrays["index"], int(arrays["clean_correct"])
    accuracy = certified_accuracy(predictions, radius, y, radii)
    abstain = predictions == ABSTAIN
    points = [
        {"index": int(idx[i]), "label": int(y[i]), "prediction": int(predictions[i]), "radius": float(radius[i]),
         "p_lower": float(p_lower[i]), "correct": bool(predictions[i] == y[i]), "abstain": bool(abstain[i])}
        for i in range(len(y))
    ]
    correct = predictions == y
    warnings = accuracy_warnings(len(y), clean_correct, getattr(model, "num_classes", None),
                                 "clean accuracy of the base classifier")
    emit_sanity(warnings)
    return {
        "n_points": int(len(y)),
        "sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha), "clip": bool(clip),
        "batch_size": int(batch_size), "seed": int(seed),
        "radii": [float(r) for r in radii],
        "certified_accuracy": {f"{r:g}": acc for r, acc in accuracy.items()},
        "clean_accuracy": clean_correct / len(y) if len(y) else 0.0,
        "abstain_rate": float(abstain.mean()) if len(y) else 0.0,
        # every estimation sample agreeing: the largest radius n samples can certify at this alpha
        "max_certifiable_radius": float(sigma * norm.ppf(alpha ** (1.0 / n))),
        "average_certified_radius": float(np.where(correct, radius, 0.0).sum() / max(len(y), 1)),
        "seconds": round(seconds, 3),
        "model": model.describe() if hasattr(model, "describe") else type(model).__name__,
        "data": data,
        "points": points,
        "warnings": warnings,
    }

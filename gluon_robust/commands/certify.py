"""``gluon-robust certify``: certified L2 accuracy of a randomized-smoothing classifier.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019,
https://arxiv.org/abs/1902.02918) of the given model: every sample is
certified with ``n0`` selection and ``n`` estimation noise samples, and the
report gives the certified accuracy at each radius of ``--radii``::

    gluon-robust certify --config mnist_resnet20 --data mnist-sample --limit 100 \\
        --sigma 0.25 --n0 100 --n 1000 --alpha 0.001 --radii 0,0.25,0.5,0.75,1.0 --out runs/certify

Writes ``certify.json`` in ``--out`` atomically (per-sample prediction,
radius, correctness and abstention; certified accuracy per radius; seeds and
versions) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
from scipy.stats import norm
from tqdm import tqdm

from ..cli import (
    add_data_args, add_model_args, add_run_args, command, data_from_args, emit, emit_warnings, model_from_args,
    parse_count, parse_floats, parse_fraction,
)
from ..errors import ConfigError
from ..validation import check_int, check_positive, check_probability, check_sample_count, check_source_labels

__all__ = ["certify_source", "certify_points", "certify_report", "POINT_ARRAYS"]

logger = logging.getLogger(__name__)

_DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The largest automatic --batch-size (noise samples per forward pass), the former fixed default.
_MAX_AUTO_BATCH = 1000


def _configure_certify(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_data_args(parser)
    add_run_args(parser)
    parser.set_defaults(batch_size=None)  # noise samples per forward pass: auto, at most _MAX_AUTO_BATCH
    group = parser.add_argument_group("randomized smoothing")
    group.add_argument("--sigma", type=parse_fraction, default=0.25,
                       help="noise standard deviation in pixel units, e.g. 0.25 or 64/255 (default 0.25)")
    group.add_argument("--n0", type=parse_count, default=100, help="selection samples per point (default 100)")
    group.add_argument("--n", type=parse_count, default=1000, help="estimation samples per point (default 1000)")
    group.add_argument("--alpha", type=parse_fraction, default=0.001,
                       help="failure probability of a certificate (default 0.001)")
    group.add_argument("--radii", type=parse_floats, default=_DEFAULT_RADII,
                       help="comma-separated L2 radii of the report (default 0,0.25,0.5,0.75,1.0)")
    group.add_argument("--clip-noise", action="store_true", help="clip noisy inputs to the model bounds")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from .evaluate import add_cluster_args

    add_cluster_args(parser, resume=True)


def _check_options(sigma: Any, n0: Any, n: Any, alpha: Any, radii: Sequence[float], batch_size: Any) -> None:
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
    radii: Sequence[float] = _DEFAULT_RADII,
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

    _check_options(sigma, n0, n, alpha, radii, batch_size)
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

    _check_options(sigma, n0, n, alpha, (0.0,), batch_size)
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


def _table(report: Dict[str, Any]) -> str:
    from ..reporting import format_table

    rows = [[r, f"{100 * acc:.1f}%"] for r, acc in report["certified_accuracy"].items()]
    return format_table(rows, ["L2 radius", "certified accuracy"])


_HELP = "Certified L2 accuracy of a model under randomized smoothing (Cohen et al. 2019)."


@command("certify", _HELP)(_configure_certify)
def run_certify(args: argparse.Namespace) -> int:
    from ..memory import resolve_batch_size

    _check_options(args.sigma, args.n0, args.n, args.alpha, args.radii,
                   _MAX_AUTO_BATCH if args.batch_size is None else args.batch_size)
    if args.resume and args.cluster is None:
        raise ConfigError("--resume needs --cluster (a certify run without it has no state to resume)")
    if args.cluster is not None:
        return _run_on_cluster(args)
    model = model_from_args(args)
    source = data_from_args(args, model)
    batch_size, batch_source = resolve_batch_size(model, source.sample_shape, args.batch_size, args.max_memory,
                                                  cap=_MAX_AUTO_BATCH, backward=False)  # forward passes only
    report = certify_source(
        model, source, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, radii=args.radii,
        batch_size=batch_size, clip=args.clip_noise, seed=args.seed, progress=not args.no_progress,
    )
    report["batch_size_source"] = batch_source
    return _publish(report, args)


def _run_on_cluster(args: argparse.Namespace) -> int:
    """``certify --cluster``: the same certificates, its chunks on Dask (:mod:`gluon_robust.cluster`)."""
    from ..cluster import CertifySettings, certify_on_cluster
    from .evaluate import ArgsLoader

    settings = CertifySettings(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                               clip=args.clip_noise, seed=args.seed)
    report = certify_on_cluster(ArgsLoader(args), settings, radii=args.radii, cluster=args.cluster, out_dir=args.out,
                                resume=args.resume, chunk_size=args.chunk_size, progress=not args.no_progress,
                                announce=emit, max_memory=args.max_memory)
    return _publish(report, args)


def _publish(report: Dict[str, Any], args: argparse.Namespace) -> int:
    """Write ``certify.json`` (removing a finished cluster run's chunks) and print the table."""
    from ..cluster import STATE_DIR
    from ..io import atomic_write_json
    from ..reporting import staged_output, versions

    report["command"] = "certify"
    report["args"] = {k: ([str(c) for c in v] if k == "ctx" else list(v) if isinstance(v, tuple) else v)
                      for k, v in sorted(vars(args).items())}
    report["versions"] = versions()
    with staged_output(args.out, replaces=(STATE_DIR,)) as stage:  # replaces an earlier run's outputs in --out
        atomic_write_json(stage / "certify.json", report)
    path = Path(args.out) / "certify.json"
    logger.info("wrote %s", path)
    emit(f"{report['model']}\n{report['data']}: {report['n_points']} samples, sigma {report['sigma']:g}, "
         f"n0 {report['n0']}, n {report['n']}, alpha {report['alpha']:g}; abstained on "
         f"{100 * report['abstain_rate']:.1f}%; no radius above {report['max_certifiable_radius']:.3f} "
         f"is certifiable with n = {report['n']}\n")
    emit(_table(report))
    emit_warnings(report["warnings"])
    emit(f"\nreport: {path}")
    return 0

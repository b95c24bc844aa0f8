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
from pathlib import Path
from typing import Any, Dict

from ..cli import (
    add_data_args, add_model_args, add_run_args, command, data_from_args, emit, emit_warnings, model_from_args,
    parse_count, parse_floats, parse_fraction,
)
from ..errors import ConfigError
from ..evaluation.certify import (  # noqa: F401 (re-exported)
    DEFAULT_RADII, POINT_ARRAYS, certify_points, certify_report, certify_source, check_certify_options,
)

__all__ = ["certify_source", "certify_points", "certify_report", "POINT_ARRAYS"]

logger = logging.getLogger(__name__)

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
    group.add_argument("--radii", type=parse_floats, default=DEFAULT_RADII,
                       help="comma-separated L2 radii of the report (default 0,0.25,0.5,0.75,1.0)")
    group.add_argument("--clip-noise", action="store_true", help="clip noisy inputs to the model bounds")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from .evaluate import add_cluster_args

    add_cluster_args(parser, resume=True)


def _table(report: Dict[str, Any]) -> str:
    from ..reporting import format_table

    rows = [[r, f"{100 * acc:.1f}%"] for r, acc in report["certified_accuracy"].items()]
    return format_table(rows, ["L2 radius", "certified accuracy"])


_HELP = "Certified L2 accuracy of a model under randomized smoothing (Cohen et al. 2019)."


@command("certify", _HELP)(_configure_certify)
def run_certify(args: argparse.Namespace) -> int:
    from ..memory import resolve_batch_size

    check_certify_options(args.sigma, args.n0, args.n, args.alpha, args.radii,
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

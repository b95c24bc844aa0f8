"""``gluon-robust demo``: evaluate the bundled standard and PGD-AT reference models side by side."""

from __future__ import annotations

import argparse
from typing import Optional

from ..cli import command, emit, parse_floats
from ..errors import ConfigError


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", dest="configs", metavar="CONFIG",
                        help="model config to evaluate; repeat to contrast several "
                             "(default: mnist_resnet20 and mnist_resnet20_pgdat)")
    parser.add_argument("--recipe", default="standard-lite",
                        help="evaluation recipe (default standard-lite: PGD-40, then a lighter AutoAttack; "
                             "standard is AutoAttack's own; see gluon-robust list recipes)")
    parser.add_argument("--eps", type=parse_floats, default=(0.1, 0.3), help="comma-separated budgets (L-inf)")
    parser.add_argument("--limit", type=int, default=100, help="test digits to evaluate")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes, one MXNet thread each (default: one per core, at most 4, when Dask "
                             "is installed; 1 runs everything in this process); the figures do not depend on it")
    parser.add_argument("--out", default="runs/demo", help="report directory")


def _workers(requested: Optional[int]) -> int:
    """``--workers``, or by default one per available core (at most 4) when Dask is installed, else 1."""
    import importlib.util
    import os

    has_dask = importlib.util.find_spec("distributed") is not None
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--workers must be a positive integer, got {requested}")
        if requested > 1 and not has_dask:
            raise ConfigError(f"--workers {requested} needs Dask: pip install 'gluon-robust[cluster]' (or --workers 1)")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 4) if has_dask else 1


@command("demo", "Evaluate the bundled standard and PGD-AT reference models on bundled MNIST digits "
                 "(PGD-40, then a lighter AutoAttack) and contrast them.")(_configure_demo)
def run_demo_command(args: argparse.Namespace) -> int:
    from ..evaluation.report import recipe_line
    from ..jobs import DEMO_CONFIGS, contrast_table, demo_outputs, demo_table, run_demo

    configs = tuple(args.configs or DEMO_CONFIGS)
    result = run_demo(args.out, configs=configs, recipe=args.recipe, eps=args.eps, limit=args.limit,
                      batch_size=args.batch_size, seed=args.seed, workers=_workers(args.workers))
    for config, report in zip(configs, result["reports"]):
        emit(f"\n== {config}: {report['model']}\n{report['data']}: {report['n']} digits, recipe {recipe_line(report)}\n")
        emit(demo_table(report))
        for message in report["warnings"]:
            emit(f"WARNING: {message}")
    if len(configs) > 1:
        emit("\n== contrast (robust accuracy: a digit counts only if no attack broke it)\n")
        emit(contrast_table(result["contrast"]))
    emit("\n" + demo_outputs(args.out, configs))
    return 0

"""``gluon-robust demo``: evaluate the bundled reference model and write a report."""

from __future__ import annotations

import argparse

from ..cli import command, emit, parse_floats


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="mnist_resnet20", help="model config (default: the bundled reference)")
    parser.add_argument("--recipe", default="demo", help="evaluation recipe: demo (PGD-40 then standard), standard, plus, rand or fast")
    parser.add_argument("--eps", type=parse_floats, default=(0.1,), help="comma-separated budgets (L-inf)")
    parser.add_argument("--limit", type=int, default=200, help="test digits to evaluate")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo", help="report directory")


@command("demo", "Evaluate the bundled reference model on bundled MNIST digits (PGD-40, then the standard recipe) and write a report.")(_configure_demo)
def run_demo_command(args: argparse.Namespace) -> int:
    from ..jobs import demo_table, run_demo

    report = run_demo(args.out, config=args.config, recipe=args.recipe, eps=args.eps, limit=args.limit,
                      batch_size=args.batch_size, seed=args.seed)
    emit(f"{report['model']}\n{report['data']}: {report['n']} digits, recipe {report['recipe']}\n")
    emit(demo_table(report))
    for message in report["warnings"]:
        emit(f"WARNING: {message}")
    emit(f"\nreport: {args.out}/report.html (and report.json, report.md)")
    return 0



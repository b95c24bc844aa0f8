"""``gluon-robust demo``: evaluate the bundled standard and PGD-AT reference models side by side."""

from __future__ import annotations

import argparse

from ..cli import command, emit, parse_floats


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
    parser.add_argument("--out", default="runs/demo", help="report directory")


@command("demo", "Evaluate the bundled standard and PGD-AT reference models on bundled MNIST digits "
                 "(PGD-40, then a lighter AutoAttack) and contrast them.")(_configure_demo)
def run_demo_command(args: argparse.Namespace) -> int:
    from ..evaluation.report import recipe_line
    from ..jobs import DEMO_CONFIGS, contrast_table, demo_outputs, demo_table, run_demo

    configs = tuple(args.configs or DEMO_CONFIGS)
    result = run_demo(args.out, configs=configs, recipe=args.recipe, eps=args.eps, limit=args.limit,
                      batch_size=args.batch_size, seed=args.seed)
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

"""``gluon-robust evaluate`` and ``gluon-robust merge-reports``: AutoAttack-style evaluation reports."""

from __future__ import annotations

import argparse

from ..cli import (
    add_data_args, add_model_args, add_run_args, command, data_from_args,
    emit, model_from_args, parse_floats,
)
from .attack import add_defense_args, defended_model, defense_chain


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.recipes import recipe_names

    add_model_args(parser)
    add_data_args(parser)
    add_run_args(parser)
    add_defense_args(parser)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--recipe", default="standard", choices=recipe_names(),
                       help="named attack recipe (default: standard)")
    group.add_argument("--attacks", help="comma-separated attack names to run instead of a recipe, e.g. fgsm,pgd")
    group.add_argument("--eps", type=parse_floats, default=(8 / 255,),
                       help="comma-separated budgets in pixel units, e.g. 0.05,0.1 or 8/255 (default 8/255)")
    group.add_argument("--norm", default="linf", help="linf or l2")
    group.add_argument("--resume", action="store_true", help="continue an interrupted run from the state file in --out")
    group.add_argument("--shard", help="K/N: evaluate only the K-th (0-based) of N slices of the data")
    group.add_argument("--max-examples", type=int, default=8, help="adversarial examples shown in the report")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _print_report(report: dict, out: str) -> None:
    from ..evaluation.report import recipe_line, summary_table
    from ..fingerprint import RunFingerprint

    emit(f"{report['model']}\n{report['data']}: {report['n']} samples, recipe {recipe_line(report)}\n")
    if report.get("defense"):
        emit(f"defence {report['defense']['spec']}, gradient {report['defense']['summary']}\n")
    emit(f"fingerprint: {RunFingerprint.from_dict(report['fingerprint'], 'the report')}\n")
    emit(summary_table(report))
    for message in report["warnings"]:
        emit(f"WARNING: {message}")
    emit(f"\nreport: {out}/report.html")


@command("evaluate", "Run an attack recipe over an epsilon sweep and write a robustness report.")(_configure_evaluate)
def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, parse_shard

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks is not None else None
    shard = parse_shard(args.shard) if args.shard else None
    chain = defense_chain(args)
    model = defended_model(model_from_args(args), chain, args)
    source = data_from_args(args, model)
    report = evaluate(
        model, source, recipe=args.recipe, attacks=attacks, eps=args.eps, norm=args.norm, batch_size=args.batch_size,
        seed=args.seed, out_dir=args.out, resume=args.resume, shard=shard, max_examples=args.max_examples,
        progress=not args.no_progress, args=vars(args), max_memory=args.max_memory,
    )
    _print_report(report, args.out)
    return 0


def _configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="report directories of the shards")
    parser.add_argument("--out", required=True, help="directory of the merged report")


@command("merge-reports", "Combine the reports of evaluate --shard K/N runs into one report.")(_configure_merge)
def run_merge(args: argparse.Namespace) -> int:
    from ..evaluation import merge_reports

    report = merge_reports(args.dirs, args.out)
    _print_report(report, args.out)
    return 0

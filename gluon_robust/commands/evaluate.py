"""``gluon-robust evaluate`` and ``gluon-robust merge-reports``: AutoAttack-style evaluation reports."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any, Dict, Tuple

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
    add_cluster_args(parser)


def add_cluster_args(parser: argparse.ArgumentParser, resume: bool = False) -> None:
    """``--cluster local:N | tcp://HOST:PORT`` and ``--chunk-size`` (and ``--resume``): run chunks on Dask distributed."""
    group = parser.add_argument_group("cluster (Dask distributed, see docs/distributed.md)")
    if resume:
        group.add_argument("--resume", action="store_true",
                           help="with --cluster: keep the finished chunks of a stopped run in --out, run the others")
    group.add_argument("--cluster", metavar="local:N|tcp://HOST:PORT",
                       help="run the chunks on N local worker processes or on the Dask scheduler at HOST:PORT; the "
                            "report equals the single-process one")
    group.add_argument("--chunk-size", type=int, metavar="SAMPLES",
                       help="samples per chunk with --cluster (default: one batch, at most 1/8 of the data)")


class ArgsLoader:
    """Builds the model and the data of the command-line flags, on the client and on each Dask worker.

    It carries the parsed flags as plain values (``--ctx`` as text), so that
    it pickles; a worker builds the same model and source as the client (paths
    are read on the worker: use shared storage, or copy the files to the same
    paths). ``key`` is the SHA-256 of the flags.
    """

    #: Flags that do not change the model or the data.
    _SKIP = ("opened_data", "cluster", "chunk_size", "out", "resume", "no_progress", "debug", "verbose")

    def __init__(self, args: argparse.Namespace) -> None:
        fields: Dict[str, Any] = {k: v for k, v in vars(args).items() if k not in self._SKIP and not callable(v)}
        ctx = fields.get("ctx")
        if isinstance(ctx, list):
            fields["ctx"] = ",".join(f"{c.device_type}:{c.device_id}" for c in ctx)
        self.fields = fields
        self.key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def load(self) -> Tuple[Any, Any]:
        """``(model, source)`` as ``gluon-robust evaluate`` builds them from these flags."""
        from ..cli import parse_ctx

        args = argparse.Namespace(**self.fields)
        if isinstance(args.ctx, str):
            args.ctx = parse_ctx(args.ctx)
        model = model_from_args(args)
        if hasattr(args, "defense"):  # evaluate's --defense (certify has none)
            model = defended_model(model, defense_chain(args), args)
        return model, data_from_args(args, model)


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
    if args.cluster is not None:
        return _run_on_cluster(args, attacks)
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


def _run_on_cluster(args: argparse.Namespace, attacks: Any) -> int:
    """``evaluate --cluster``: the same evaluation, its chunks on Dask (:mod:`gluon_robust.cluster`)."""
    from ..cluster import EvaluateSettings, evaluate_on_cluster

    defense_chain(args)  # a bad --defense is refused before the cluster starts
    settings = EvaluateSettings(
        recipe=args.recipe, attacks=None if attacks is None else tuple(attacks), eps=tuple(args.eps), norm=args.norm,
        batch_size=args.batch_size, seed=args.seed, max_examples=args.max_examples, max_memory=args.max_memory,
    )
    report = evaluate_on_cluster(ArgsLoader(args), settings, cluster=args.cluster, out_dir=args.out,
                                 resume=args.resume, chunk_size=args.chunk_size, progress=not args.no_progress,
                                 args=vars(args), announce=emit)
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

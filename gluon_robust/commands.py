"""The ``gluon-robust`` subcommands: thin wrappers over :mod:`gluon_robust.jobs`."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict

from .cli import (add_data_args, add_model_args, add_run_args, command, data_from_args, model_from_args,
                  parse_floats, parse_fraction)
from .errors import ConfigError

logger = logging.getLogger("gluon_robust")


def _option_value(text: str) -> Any:
    """Turn ``--attack-option key=value`` values into numbers, booleans or strings."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = parse_fraction(text)
    except argparse.ArgumentTypeError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in lowered and "/" not in text else number


# ------------------------------------------------------------------ attack
def _configure_attack(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_data_args(parser)
    add_run_args(parser)
    group = parser.add_argument_group("attack")
    group.add_argument("--attack", required=True, help="attack name (see gluon-robust attacks)")
    group.add_argument("--eps", type=parse_fraction, help="perturbation budget in pixel units, e.g. 8/255")
    group.add_argument("--norm", help="linf, l2 or l1")
    group.add_argument("--steps", type=int, help="iterations")
    group.add_argument("--step-size", type=parse_fraction, help="absolute step size")
    group.add_argument("--restarts", type=int, help="random restarts")
    group.add_argument("--loss", help="ce, margin or dlr")
    group.add_argument("--max-queries", type=int, help="query budget of black-box attacks")
    group.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other hyperparameter of the attack (repeatable)")
    group.add_argument("--targeted", action="store_true", help="targeted attack (see --target)")
    group.add_argument("--target", default=None, help="least-likely, random, or a class LABEL (default random)")
    group.add_argument("--max-images", type=int, default=100, help="PNG pairs to write for image data")


def attack_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The attack hyperparameters given on the command line."""
    options: Dict[str, Any] = {}
    for flag in ("eps", "norm", "steps", "step_size", "restarts", "loss", "max_queries"):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = value
    for item in args.attack_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--attack-option must be KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = _option_value(value)
    return options


@command("attack", "Attack a model on a data source and save the adversarial examples.")(_configure_attack)
def run_attack(args: argparse.Namespace) -> int:
    from .attacks import make_attack
    from .jobs import run_attack_job

    if args.target is not None and not args.targeted:
        raise ConfigError("--target needs --targeted")
    options = attack_options(args)
    attack = make_attack(args.attack, options)  # validate hyperparameters before loading anything
    model = model_from_args(args)
    source = data_from_args(args, model)
    summary = run_attack_job(
        model, source, attack, attack_name=args.attack.lower(), out_dir=args.out, batch_size=args.batch_size,
        target_mode=(args.target or "random") if args.targeted else None, seed=args.seed,
        max_images=args.max_images, options=options,
    )
    keys = ("n", "clean_accuracy", "robust_accuracy", "success_rate", "max_perturbation", "seconds")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


# -------------------------------------------------------------------- demo
def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="mnist_resnet20", help="model config (default: the bundled reference)")
    parser.add_argument("--eps", type=parse_floats, default=(0.1,), help="comma-separated budgets (L-inf)")
    parser.add_argument("--limit", type=int, default=500, help="test digits to evaluate")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo", help="report directory")


@command("demo", "Evaluate the bundled reference model on bundled MNIST digits and write a report.")(_configure_demo)
def run_demo_command(args: argparse.Namespace) -> int:
    from .jobs import demo_table, run_demo

    report = run_demo(args.out, config=args.config, eps=args.eps, limit=args.limit, batch_size=args.batch_size,
                      seed=args.seed)
    print(f"{report['model']}\n{report['data']}: {report['n']} digits\n")
    print(demo_table(report))
    print(f"\nreport: {args.out}/report.json")
    return 0


# ---------------------------------------------------------------- listing
def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("attacks", "models", "configs"), help="what to list")


@command("list", "List the registered attacks, zoo models or bundled configs.")(_configure_list)
def run_list(args: argparse.Namespace) -> int:
    if args.what == "attacks":
        from .attacks import attack_names

        names = attack_names()
    elif args.what == "models":
        from .zoo import zoo_names

        names = zoo_names()
    else:
        from .config import config_dir

        names = sorted(p.stem for p in config_dir().glob("*.yaml"))
    print("\n".join(names))
    return 0

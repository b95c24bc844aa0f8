"""``gluon-robust attack``: attack a model on a data source and save the adversarial examples."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict

from ..cli import (
    add_data_args, add_model_args, add_run_args, command, data_from_args,
    emit, model_from_args, parse_fraction,
)
from ..errors import ConfigError


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
    from ..attacks import make_attack
    from ..jobs import run_attack_job

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
    emit(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0



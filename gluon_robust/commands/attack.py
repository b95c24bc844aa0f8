"""``gluon-robust attack``: attack a model on a data source and save the adversarial examples."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Optional

from ..cli import (
    add_data_args, add_model_args, add_run_args, command, data_from_args,
    emit, emit_warnings, model_from_args, parse_fraction,
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


def add_defense_args(parser: argparse.ArgumentParser) -> None:
    """``--defense SPEC --gradient MODE --eot-samples N``: preprocessing defences in front of the model."""
    group = parser.add_argument_group("defence")
    group.add_argument("--defense", metavar="SPEC",
                       help="preprocessing defences in front of the model, e.g. jpeg:quality=75 or "
                            "bitdepth:bits=4+median:size=3 (see gluon-robust list defenses)")
    group.add_argument("--gradient", default="auto", type=str.lower, choices=("auto", "naive", "bpda", "eot"),
                       help="gradient through the defences: auto (each defence's declared path), naive "
                            "(what a non-adaptive attack sees), bpda or eot (default auto)")
    group.add_argument("--eot-samples", type=int, help="gradients averaged per step when EOT is used (default 10)")


def defense_chain(args: argparse.Namespace) -> Optional[list]:
    """The defences of ``--defense`` (validated before any model is loaded), or None."""
    from ..defenses import parse_defense_spec

    if args.defense is None:
        if args.gradient != "auto" or args.eot_samples is not None:
            raise ConfigError("--gradient and --eot-samples need --defense")
        return None
    return parse_defense_spec(args.defense)


def defended_model(model: Any, chain: Optional[list], args: argparse.Namespace) -> Any:
    """``model`` behind the ``--defense`` chain with the ``--gradient`` mode, or ``model`` itself."""
    from ..defenses import DefendedClassifier

    if chain is None:
        return model
    return DefendedClassifier(model, chain, gradient=args.gradient, eot_samples=args.eot_samples)


def _configure_attack(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_data_args(parser)
    add_run_args(parser)
    parser.set_defaults(seed=None)  # None: not given, so that a --attack-option seed= can be told apart
    add_defense_args(parser)
    group = parser.add_argument_group("attack")
    group.add_argument("--attack", required=True, help="attack name (see gluon-robust list attacks)")
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
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from .evaluate import add_cluster_args

    add_cluster_args(parser, resume=True)


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


def _resolve_seed(seed: Optional[int], options: Dict[str, Any]) -> int:
    """The one seed of the run: ``--seed`` (default 0), or ``--attack-option seed=`` when only that is given."""
    given = options.pop("seed", None)
    if given is not None and seed is not None and given != seed:
        raise ConfigError(f"--seed {seed} and --attack-option seed={given} differ; give the seed once, with --seed")
    return int(seed if seed is not None else given if given is not None else 0)


@command("attack", "Attack a model on a data source and save the adversarial examples.")(_configure_attack)
def run_attack(args: argparse.Namespace) -> int:
    from ..attacks import ATTACKS, make_attack
    from ..jobs import run_attack_job

    if args.target is not None and not args.targeted:
        raise ConfigError("--target needs --targeted")
    if args.resume and args.cluster is None:
        raise ConfigError("--resume needs --cluster (an attack run without it has no state to resume)")
    options = attack_options(args)
    chain = defense_chain(args)
    if chain is not None:
        from ..defenses import DefendedClassifier

        eot = DefendedClassifier.eot_samples_for(chain, args.gradient, args.eot_samples)
        if eot > 1 and "eot_samples" not in options and "eot_samples" in ATTACKS.parameters(args.attack):
            options["eot_samples"] = eot
    seed = _resolve_seed(args.seed, options)
    if "seed" in ATTACKS.parameters(args.attack):
        options["seed"] = seed
    attack = make_attack(args.attack, options)  # validate hyperparameters before loading anything
    target_mode = (args.target or "random") if args.targeted else None
    if args.cluster is not None:
        summary = _attack_on_cluster(args, options, target_mode, seed)
    else:
        model = defended_model(model_from_args(args), chain, args)
        source = data_from_args(args, model)
        summary = run_attack_job(
            model, source, attack, attack_name=args.attack.lower(), out_dir=args.out, batch_size=args.batch_size,
            max_memory=args.max_memory, target_mode=target_mode, seed=seed, max_images=args.max_images,
            options=options, progress=not args.no_progress,
        )
    keys = ("n", "clean_accuracy", "robust_accuracy", "success_rate", "max_perturbation", "seconds")
    printed = {k: summary[k] for k in keys}
    if "defense" in summary:
        printed["defense"] = summary["defense"]["spec"]
        printed["gradient"] = summary["defense"]["summary"]
    printed["warnings"] = summary["warnings"]
    emit(json.dumps(printed, indent=2))
    emit_warnings(summary["warnings"], stderr=True)  # stdout stays one JSON document
    return 0




def _attack_on_cluster(args: argparse.Namespace, options: Dict[str, Any], target_mode: Optional[str],
                       seed: int) -> Dict[str, Any]:
    """``attack --cluster``: the same attack, its chunks on Dask (:mod:`gluon_robust.cluster`)."""
    from ..cluster import AttackSettings, attack_on_cluster
    from .evaluate import ArgsLoader

    settings = AttackSettings(attack=args.attack.lower(), options=dict(options), target_mode=target_mode, seed=seed,
                              batch_size=args.batch_size)
    return attack_on_cluster(ArgsLoader(args), settings, cluster=args.cluster, out_dir=args.out, resume=args.resume,
                             chunk_size=args.chunk_size, max_images=args.max_images, max_memory=args.max_memory,
                             progress=not args.no_progress, announce=emit)

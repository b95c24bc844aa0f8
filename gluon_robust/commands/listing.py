"""``gluon-robust list``: registered attacks, zoo models, bundled configs, recipes, defences, detectors."""

from __future__ import annotations

import argparse
from typing import List

from ..cli import command, emit


def _names(what: str) -> List[str]:
    if what == "attacks":
        from ..attacks import attack_names

        return attack_names()
    if what == "models":
        from ..zoo import zoo_names

        return zoo_names()
    if what == "methods":
        from ..training import method_names

        return method_names()
    if what == "defenses":
        from ..defenses import DEFENSES

        return [f"{name}: gradient {DEFENSES.factory(name).gradient}" for name in DEFENSES.names()]
    if what == "detectors":
        from ..detection import detector_names

        return detector_names()
    if what == "recipes":
        from ..evaluation.recipes import RECIPE_SUMMARIES, recipe_names

        return [f"{name}: {RECIPE_SUMMARIES[name]}" for name in recipe_names()]
    from ..config import config_dir

    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("attacks", "models", "configs", "methods", "recipes", "defenses", "detectors"), help="what to list")


@command("list", "List the registered attacks, zoo models, bundled configs, training methods, evaluation recipes, defences or detectors.")(
    _configure_list
)
def run_list(args: argparse.Namespace) -> int:
    emit("\n".join(_names(args.what)))
    return 0

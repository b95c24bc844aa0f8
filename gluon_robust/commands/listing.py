"""``gluon-robust list``: registered attacks, zoo models, bundled configs."""

from __future__ import annotations

import argparse

from ..cli import command, emit


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("attacks", "models", "configs"), help="what to list")


@command("list", "List the registered attacks, zoo models or bundled configs.")(_configure_list)
def run_list(args: argparse.Namespace) -> int:
    if args.what == "attacks":
        from ..attacks import attack_names

        names = attack_names()
    elif args.what == "models":
        from ..zoo import zoo_names

        names = zoo_names()
    else:
        from ..config import config_dir

        names = sorted(p.stem for p in config_dir().glob("*.yaml"))
    emit("\n".join(names))
    return 0

#!/usr/bin/env python
"""Attack a model on a data source and save the adversarial examples.

The same job as ``gluon-robust attack`` (same flags), as a script::

    python scripts/attack.py --config mnist_resnet20 --data mnist-sample --attack pgd --eps 0.1 --out runs/pgd
"""

import argparse
import logging
import sys

from gluon_robust.cli import setup_logging
from gluon_robust.commands.attack import _configure_attack, run_attack
from gluon_robust.errors import GluonRobustError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _configure_attack(parser)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.debug, verbose=True)
    logging.info("arguments: %s", vars(args))
    try:
        return run_attack(args)
    except GluonRobustError as err:
        if args.debug:
            raise
        logging.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())

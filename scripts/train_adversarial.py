#!/usr/bin/env python
"""Adversarially fine-tune a GluonCV model-zoo network on a data source (GluonCV-style script).

Same flags as ``gluon-robust train``; for example, PGD-AT of the bundled
reference model on the bundled MNIST digits::

    python scripts/train_adversarial.py --config mnist_resnet20 --method pgd-at --eps 0.3 --steps 7 \
        --epochs 6 --curriculum linear --warmup-epochs 1 --save-dir runs/pgd_at

and a fresh network on two devices::

    python scripts/train_adversarial.py --model cifar_resnet20_v1 --data cifar10 --method trades \
        --eps 8/255 --epochs 100 --lr 0.1 --optimizer sgd --lr-decay-epoch 75,90 --ctx gpu:0,gpu:1

As one worker of a parameter-server job (2 workers, 1 server; see docs/distributed.md)::

    gluon-robust launch -n 2 -s 1 -- python scripts/train_adversarial.py --config mnist_resnet20 \
        --method pgd-at --eps 0.3 --steps 7 --epochs 6 --kvstore dist_sync --save-dir runs/pgd_at_dist

The loop itself is :func:`gluon_robust.training.loop.train_adversarial`.
"""

import argparse
import logging
import sys

from gluon_robust.cli import setup_logging
from gluon_robust.commands.train import config_from_args, configure_train, run_training
from gluon_robust.errors import GluonRobustError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    configure_train(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging(debug=args.debug, verbose=True)
    logging.info("arguments: %s", vars(args))
    try:
        run_training(config_from_args(args))
    except GluonRobustError as err:
        if args.debug:
            raise
        print(f"train_adversarial.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

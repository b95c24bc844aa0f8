#!/usr/bin/env python
"""Train a GluonCV model-zoo network on a data source and save params plus a config.

The bundled reference model was made with::

    python scripts/train.py --model cifar_resnet20_v1 --data mnist-sample \
        --mean 0.1307 --std 0.3081 --epochs 6 --save-dir model_configs --name mnist_resnet20
"""

import argparse
import logging

from gluon_robust.cli import parse_ctx, parse_floats, setup_logging
from gluon_robust.training import train_zoo_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20_v1", help="gluoncv.model_zoo name")
    parser.add_argument("--data", default="mnist-sample", help="data source with train and test splits")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--mean", type=parse_floats, default=(0.1307,), help="one value or one per channel")
    parser.add_argument("--std", type=parse_floats, default=(0.3081,), help="one value or one per channel")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=1e-4)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr-decay-epoch", default="4", help="comma-separated epochs at which lr is divided by 10")
    parser.add_argument("--ctx", type=parse_ctx, default="cpu", help="cpu or gpu:0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="model_configs")
    parser.add_argument("--name", default="mnist_resnet20")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("arguments: %s", vars(args))
    decay = [int(e) for e in args.lr_decay_epoch.split(",") if e.strip()]
    train_zoo_model(
        args.model, args.data, save_dir=args.save_dir, name=args.name, classes=args.classes, mean=args.mean,
        std=args.std, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd,
        optimizer=args.optimizer, lr_decay_epochs=decay, ctx=args.ctx[0], seed=args.seed,
    )


if __name__ == "__main__":
    main()

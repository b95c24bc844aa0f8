#!/usr/bin/env python
"""PGD L-inf: gluon_robust against IBM ART 1.19.1's MXClassifier, same model and data.

ART 1.19.1 is the last release with an MXNet classifier. It is installed only
in this benchmark's own environment (``make bench-art`` creates
``benchmarks/.venv-art``), never as a dependency of the package.

Both sides attack the bundled reference model (GluonCV cifar_resnet20_v1 on
MNIST) on the same digits with the same PGD: random start, ``--steps`` steps
of ``--step-size`` inside an L-inf ball of ``--eps``. ART gets the raw Gluon
network with its normalisation as ART preprocessing, as an MXNet user would
set it up; gluon_robust gets the same weights through ``load_classifier``.
Robust accuracy of both is measured with the same forward pass.

Writes ``art.json`` and prints a table.
"""

import argparse
import logging
import time

import mxnet as mx
import numpy as np

from common import setup_logging, write_results
from gluon_robust.attacks import get_attack
from gluon_robust.config import load_config
from gluon_robust.data import load_data
from gluon_robust.model import load_classifier
from gluon_robust.zoo import build_zoo_net, load_params_into


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist_resnet20")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def art_pgd(config, x, y, args):
    """Run ART's PGD on the raw network; return adversarial inputs and seconds."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import MXClassifier

    ctx = mx.cpu()
    net = build_zoo_net(config.model, config.classes, pretrained=False, ctx=ctx)
    load_params_into(net, config.params, ctx)
    classifier = MXClassifier(
        model=net, loss=mx.gluon.loss.SoftmaxCrossEntropyLoss(), input_shape=config.input_size,
        nb_classes=config.classes, ctx=ctx, channels_first=True, clip_values=config.bounds,
        preprocessing=(np.array(config.mean, np.float32).reshape(-1, 1, 1), np.array(config.std, np.float32).reshape(-1, 1, 1)),
    )
    attack = ProjectedGradientDescent(
        classifier, norm=np.inf, eps=args.eps, eps_step=args.step_size, max_iter=args.steps, num_random_init=1,
        batch_size=args.batch_size, verbose=False,
    )
    start = time.perf_counter()
    x_adv = attack.generate(x=x, y=np.eye(config.classes, dtype=np.float32)[y])
    return x_adv, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("arguments: %s", vars(args))
    import art

    config = load_config(args.config)
    model = load_classifier(config)
    x, y = load_data("mnist-sample", split="test", limit=args.limit).arrays()
    clean = model.predict(x).argmax(axis=1) == y

    ours = get_attack("pgd", eps=args.eps, steps=args.steps, step_size=args.step_size)
    start = time.perf_counter()
    x_ours = np.concatenate([
        ours(model, x[i : i + args.batch_size], y[i : i + args.batch_size]).x_adv for i in range(0, len(x), args.batch_size)
    ])
    ours_seconds = time.perf_counter() - start
    x_art, art_seconds = art_pgd(config, x, y, args)

    def robust(x_adv):
        assert np.abs(x_adv - x).max() <= args.eps + 1e-5
        return float((clean & (model.predict(x_adv.astype(np.float32)).argmax(axis=1) == y)).mean())

    results = {
        "gluon_robust": {"seconds": ours_seconds, "robust_accuracy": robust(x_ours)},
        "art": {"version": art.__version__, "seconds": art_seconds, "robust_accuracy": robust(x_art)},
    }
    results["speedup"] = art_seconds / ours_seconds
    rows = [[name, f"{r['seconds']:.1f}", f"{100 * r['robust_accuracy']:.1f}%"] for name, r in results.items() if name != "speedup"]
    rows.append(["speed-up", f"{results['speedup']:.1f}x", ""])
    write_results(
        args.out, "art",
        {"n": len(x), "clean_accuracy": float(clean.mean()), "eps": args.eps, "steps": args.steps,
         "step_size": args.step_size, "batch_size": args.batch_size, "results": results},
        rows, ["PGD L-inf", "seconds", "robust accuracy"],
    )


if __name__ == "__main__":
    main()

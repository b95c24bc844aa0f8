#!/usr/bin/env python
"""Query efficiency of the black-box attacks on the bundled reference model.

Every attack runs on the correctly classified digits among the first
``--limit`` bundled test digits, each with a budget of ``--max-queries``
queries per digit: L-inf ``--eps`` (0.3) where the attack has an L-inf form,
L2 ``--eps-l2`` (2.0) for the Boundary Attack and the L2 rows. The decision-based attacks
(HopSkipJump, Boundary) stop a digit once within eps. Reported per attack:
the success rate, the median and mean queries of the successful digits, and
the wall time.

Transfer: two small surrogates (a CNN and an MLP) are trained here on the
bundled training digits, then MI-FGSM with input diversity crafts on them
(one, or both with averaged logits) and the reference model is queried once
per digit: the success rate is the transfer success rate.

Writes ``blackbox.json`` and prints a table.
"""

import argparse
import logging
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from common import setup_logging, write_results
from gluon_robust.attacks.bandits import Bandits
from gluon_robust.attacks.boundary import BoundaryAttack
from gluon_robust.attacks.hopskipjump import HopSkipJump
from gluon_robust.attacks.nes import NES
from gluon_robust.attacks.simba import SimBA, SimBADCT
from gluon_robust.attacks.square import SquareAttack
from gluon_robust.attacks.transfer import TransferAttack
from gluon_robust.attacks.zoo_attack import ZOO
from gluon_robust.data import load_data
from gluon_robust.model import load_classifier


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist_resnet20", help="the target model")
    parser.add_argument("--limit", type=int, default=100, help="first test digits to attack")
    parser.add_argument("--max-queries", type=int, default=5000, help="per-digit query budget")
    parser.add_argument("--eps", type=float, default=0.3, help="L-inf radius")
    parser.add_argument("--eps-l2", type=float, default=2.0, help="L2 radius")
    parser.add_argument("--attacks", default="all", help="comma-separated rows to run (default all)")
    parser.add_argument("--surrogate-epochs", type=int, default=2, help="training epochs of each transfer surrogate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def query_attacks(args):
    """The rows of query-based attacks: name -> (threat model, attack)."""
    q, eps, eps2, seed = args.max_queries, args.eps, args.eps_l2, args.seed
    return {
        "square": ("linf", eps, SquareAttack(eps=eps, max_queries=q, seed=seed)),
        "square-l2": ("l2", eps2, SquareAttack(eps=eps2, norm="l2", max_queries=q, seed=seed)),
        "simba": ("linf", eps, SimBA(eps=eps, norm="linf", max_queries=q, seed=seed)),
        "simba-dct": ("linf", eps, SimBADCT(eps=eps, norm="linf", max_queries=q, seed=seed)),
        "nes": ("linf", eps, NES(eps=eps, max_queries=q, seed=seed)),
        "bandits": ("linf", eps, Bandits(eps=eps, max_queries=q, seed=seed)),
        "zoo": ("linf", eps, ZOO(eps=eps, max_queries=q, seed=seed)),
        "hopskipjump": ("linf", eps, HopSkipJump(norm="linf", eps=eps, max_queries=q, seed=seed)),
        "hopskipjump-l2": ("l2", eps2, HopSkipJump(norm="l2", eps=eps2, max_queries=q, seed=seed)),
        "boundary": ("l2", eps2, BoundaryAttack(eps=eps2, max_queries=q, seed=seed)),
    }


def surrogate_net(kind):
    """A small MNIST network for the transfer rows."""
    net = gluon.nn.HybridSequential()
    if kind == "cnn":
        net.add(gluon.nn.Conv2D(32, 3, activation="relu"), gluon.nn.MaxPool2D(2),
                gluon.nn.Conv2D(64, 3, activation="relu"), gluon.nn.MaxPool2D(2),
                gluon.nn.Dense(128, activation="relu"), gluon.nn.Dense(10))
    else:
        net.add(gluon.nn.Dense(256, activation="relu"), gluon.nn.Dense(256, activation="relu"), gluon.nn.Dense(10))
    return net


def train_surrogate(kind, x, y, epochs, seed, batch_size=64):
    """Train a surrogate on pixel inputs with Adam; returns a frozen Classifier."""
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    net = surrogate_net(kind)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            data, label = mx.nd.array(x[idx]), mx.nd.array(y[idx])
            with autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            trainer.step(len(idx))
    return load_classifier(net, input_size=(1, 28, 28), hybridize=False)


def summarise(norm, eps, result, seconds):
    won = result.queries[result.success]
    return {
        "norm": norm,
        "eps": eps,
        "success_rate": float(result.success.mean()),
        "median_queries": float(statistics.median(won)) if won.size else None,
        "mean_queries": float(won.mean()) if won.size else None,
        "max_queries_used": int(result.queries.max()),
        "seconds": round(seconds, 2),
    }


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("arguments: %s", vars(args))
    model = load_classifier(args.config)
    x, y = load_data("mnist-sample", split="test", limit=args.limit).arrays()
    correct = model.predict(x).argmax(axis=1) == y
    x, y = x[correct], y[correct]
    logging.info("%d of %d digits correctly classified", len(y), len(correct))
    wanted = None if args.attacks == "all" else {name.strip() for name in args.attacks.split(",")}

    results = {}
    for name, (norm, eps, attack) in query_attacks(args).items():
        if wanted is not None and name not in wanted:
            continue
        start = time.perf_counter()
        result = attack(model, x, y)
        results[name] = dict(summarise(norm, eps, result, time.perf_counter() - start), attack=repr(attack))
        logging.info("%s: %s", name, {k: v for k, v in results[name].items() if k != "attack"})

    surrogates = {}
    transfer_rows = {
        "transfer-ifgsm (cnn)": (["cnn"], {"decay": 0.0, "diversity_prob": 0.0}),
        "transfer (cnn)": (["cnn"], {}),
        "transfer (cnn+mlp)": (["cnn", "mlp"], {}),
    }
    if wanted is None or any(row in wanted for row in transfer_rows):
        train_x, train_y = load_data("mnist-sample", split="train").arrays()
        for kind in ("cnn", "mlp"):
            surrogates[kind] = train_surrogate(kind, train_x, train_y, args.surrogate_epochs, args.seed)
        for name, (kinds, options) in transfer_rows.items():
            if wanted is not None and name not in wanted:
                continue
            attack = TransferAttack(surrogate=[surrogates[k] for k in kinds], eps=args.eps, steps=10, seed=args.seed,
                                    **options)
            start = time.perf_counter()
            result = attack(model, x, y)
            results[name] = dict(summarise("linf", args.eps, result, time.perf_counter() - start),
                                 attack=f"TransferAttack(surrogate={'+'.join(kinds)}, eps={args.eps}, steps=10, {options})")

    rows = [
        [name, f"{r['norm']} {r['eps']:g}", f"{100 * r['success_rate']:.0f}%",
         "-" if r["median_queries"] is None else f"{r['median_queries']:g}",
         "-" if r["mean_queries"] is None else f"{r['mean_queries']:.0f}", f"{r['seconds']:.1f}"]
        for name, r in results.items()
    ]
    surrogate_accuracy = {k: float((m.predict(x).argmax(axis=1) == y).mean()) for k, m in surrogates.items()}
    write_results(
        args.out, "blackbox",
        {"config": args.config, "digits": int(len(y)), "limit": args.limit, "max_queries": args.max_queries,
         "eps": args.eps, "eps_l2": args.eps_l2, "attacks": results, "surrogate_accuracy": surrogate_accuracy},
        rows, ["attack", "threat model", "success", "median queries", "mean queries", "seconds"],
    )


if __name__ == "__main__":
    main()

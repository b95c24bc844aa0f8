#!/usr/bin/env python
"""Naive against adaptive PGD on preprocessing defences (Athalye, Carlini & Wagner 2018).

Athalye, Carlini & Wagner (2018), "Obfuscated Gradients Give a False Sense of
Security", ICML, https://arxiv.org/abs/1802.00420, found that input
transformations only look robust when the attack differentiates them
naively; BPDA (deterministic defences) and EOT (randomised ones) bring the
accuracy back to that of the undefended model.

On the bundled reference model (``mnist_resnet20``) and the first ``--limit``
bundled test digits: L-inf PGD-40 accuracy of the undefended model, then, per
defence, PGD-40 with ``--gradient naive`` (zero gradient through
non-differentiable defences, one random draw for randomised ones) and with
``--gradient auto`` (BPDA, or EOT for randomised defences). Accuracy under
attack is measured on all points (a misclassified clean point counts as
broken); a randomised model is judged by one random forward pass per point.

``--attack apgd`` runs APGD-CE (100 steps by default with ``--steps 100``)
instead of PGD, as the evaluation recipes do; ``--defenses`` and ``--modes``
choose a subset.

Writes ``defenses_eps<EPS>.json`` (``defenses_apgd_eps<EPS>.json`` for APGD)
and prints a table. On this model the
defences are compared at ``--eps 0.3`` (the usual MNIST budget, where PGD
breaks the undefended model) and ``--eps 0.1`` (where it is only partly
broken, and smoothing defences keep part of their effect under BPDA).
"""

import argparse
import logging
import time

import mxnet as mx
import numpy as np

from common import setup_logging, write_results
from gluon_robust.attacks import get_attack
from gluon_robust.data import load_data
from gluon_robust.defenses import defend
from gluon_robust.model import load_classifier

DEFENSES = ("jpeg:quality=75", "bitdepth:bits=3", "median:size=3", "resize-pad:max_ratio=1.15")
EXTRA = ("noise:sigma=0.1", "tv:keep=0.5,steps=20")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist_resnet20")
    parser.add_argument("--limit", type=int, default=200, help="bundled test digits")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--attack", choices=("pgd", "apgd"), default="pgd")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--defenses", default=",".join(DEFENSES), help="comma-separated defence specs; ';' between specs"
                        " that contain commas")
    parser.add_argument("--modes", default="naive,auto", help="gradient modes to compare")
    parser.add_argument("--eot-samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--extra", action="store_true", help=f"also {', '.join(EXTRA)} (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def accuracy_under_attack(model, x, y, args, eot_samples=1):
    """Clean accuracy, accuracy under the attack (on every point) and seconds."""
    mx.random.seed(args.seed)
    start = time.perf_counter()
    attack = get_attack(args.attack, eps=args.eps, steps=args.steps, eot_samples=eot_samples, seed=args.seed)
    clean, robust = [], []
    for i in range(0, len(x), args.batch_size):
        xb, yb = x[i : i + args.batch_size], y[i : i + args.batch_size]
        clean.append(model.predict(xb).argmax(axis=1) == yb)
        robust.append(~attack(model, xb, yb).success & clean[-1])
    return float(np.concatenate(clean).mean()), float(np.concatenate(robust).mean()), time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    log = logging.getLogger("benchmarks")
    model = load_classifier(args.config)
    x, y = load_data("mnist-sample", split="test", limit=args.limit).arrays()
    clean, robust, seconds = accuracy_under_attack(model, x, y, args)
    rows = [["none", "-", "-", f"{100 * clean:.1f}", f"{100 * robust:.1f}", "-", f"{seconds:.0f}"]]
    results = [{"defense": None, "clean_accuracy": clean, "robust_accuracy": robust, "seconds": seconds}]
    name = f"{args.attack.upper()}-{args.steps}"
    log.info("undefended: clean %.1f%%, %s %.1f%%", 100 * clean, name, 100 * robust)
    separator = ";" if ";" in args.defenses else ","
    specs = tuple(s.strip() for s in args.defenses.split(separator) if s.strip())
    for spec in specs + (EXTRA if args.extra else ()):
        for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
            defended = defend(model, spec, gradient=mode, eot_samples=args.eot_samples)
            c, r, s = accuracy_under_attack(defended, x, y, args, eot_samples=defended.eot_samples)
            summary = defended.gradient_summary()
            log.info("%s, %s: clean %.1f%%, %s %.1f%% (%.0f s)", spec, summary, 100 * c, name, 100 * r, s)
            rows.append([spec, mode, summary.split(" ", 1)[1], f"{100 * c:.1f}", f"{100 * r:.1f}",
                         f"{100 * (r - robust):+.1f}", f"{s:.0f}"])
            results.append({"defense": spec, "gradient": mode, "path": defended.defense_report(), "clean_accuracy": c,
                            "robust_accuracy": r, "gap_to_undefended": r - robust, "seconds": s})
    payload = {"config": args.config, "n": int(len(x)), "eps": args.eps, "norm": "linf", "attack": args.attack,
               "steps": args.steps, "eot_samples": args.eot_samples, "seed": args.seed, "results": results}
    header = ["defence", "gradient", "path", "clean %", f"{name} %", "vs undefended", "seconds"]
    stem = "defenses" if args.attack == "pgd" else f"defenses_{args.attack}"
    write_results(args.out, f"{stem}_eps{args.eps:g}", payload, rows, header)


if __name__ == "__main__":
    main()

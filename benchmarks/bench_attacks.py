#!/usr/bin/env python
"""Speed and memory of the gradient attacks on the bundled reference model.

* Step cost: the per-step time of PGD, MI-FGSM and APGD (from the difference
  between two step counts, so fixed costs cancel) divided by one plain
  forward + input-backward of the same wrapped model at the same batch size
  (the floor). Also images x steps per second.
* Memory: peak RSS of ``gluon-robust attack`` (PGD, streaming batches) on
  1,000 and 5,000 digits, each in a fresh process.

Writes ``attacks.json`` and prints a table. Ratios are measured in one run.
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from common import setup_logging, time_call, write_results
from gluon_robust.attacks import ATTACKS, get_attack
from gluon_robust.data import load_data
from gluon_robust.model import load_classifier


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist_resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def floor_step(model, x, y):
    """One forward + input-backward of the wrapped model: the floor of any gradient step."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        xv = x.copy()
        xv.attach_grad()
        with autograd.record(train_mode=model.mode_free):
            loss = loss_fn(model(xv), y)
        (grad,) = autograd.grad(loss, [xv])
        grad.wait_to_read()

    return step


def per_step_ms(model, name, x, y, eps, repeats, low=5, high=25):
    """Per-step milliseconds of an attack: (T(high) - T(low)) / (high - low)."""
    times = {}
    for steps in (low, high):
        attack = get_attack(name, eps=eps, steps=steps)
        times[steps] = time_call(lambda: attack(model, x, y), repeats=repeats, warmup=1)["median_ms"]
    return (times[high] - times[low]) / (high - low)


_MEASURED_CLI = (
    "import resource, sys\n"
    "from gluon_robust.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def peak_rss_of_attack(n, npz_path, out_dir):
    """Peak RSS (MiB) and seconds of a fresh `gluon-robust attack` process on the first n digits."""
    cmd = [sys.executable, "-c", _MEASURED_CLI, "attack", "--config", "mnist_resnet20", "--data", f"npz:{npz_path}",
           "--limit", str(n), "--attack", "pgd", "--eps", "0.1", "--steps", "2", "--batch-size", "250",
           "--max-images", "0", "--out", out_dir]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"attack on {n} digits failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds = time.perf_counter() - start
    return int(done.stdout.strip().splitlines()[-1]) / 1024.0, seconds


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("arguments: %s", vars(args))
    model = load_classifier(args.config)
    x_all, y_all = load_data("mnist-sample", split="test").arrays()
    x = mx.nd.array(x_all[: args.batch_size], ctx=model.ctx)
    y_np = y_all[: args.batch_size]
    y = mx.nd.array(y_np, ctx=model.ctx)

    floor = time_call(floor_step(model, x, y), repeats=5)["median_ms"]
    rows, steps = [["fwd+input-bwd (floor)", f"{floor:.1f}", "1.00", f"{1000 * args.batch_size / floor:.0f}"]], {}
    for name in ("pgd", "mifgsm", "apgd"):
        if name not in ATTACKS:
            continue
        ms = per_step_ms(model, name, x_all[: args.batch_size], y_np, args.eps, args.repeats)
        steps[name] = {"step_ms": ms, "ratio_to_floor": ms / floor, "image_steps_per_s": 1000 * args.batch_size / ms}
        rows.append([name, f"{ms:.1f}", f"{ms / floor:.2f}", f"{1000 * args.batch_size / ms:.0f}"])

    memory = {}
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            train_x, train_y = load_data("mnist-sample", split="train").arrays()
            npz = os.path.join(tmp, "digits.npz")
            np.savez(npz, x=np.concatenate([x_all, train_x]), y=np.concatenate([y_all, train_y]))
            for n in (1000, 5000):
                rss, seconds = peak_rss_of_attack(n, npz, os.path.join(tmp, f"out{n}"))
                memory[n] = {"peak_rss_mb": rss, "seconds": seconds}
                rows.append([f"memory: attack {n} digits", f"{1000 * seconds:.0f}", "-", f"peak RSS {rss:.0f} MiB"])

    write_results(
        args.out, "attacks",
        {"config": args.config, "batch_size": args.batch_size, "eps": args.eps, "floor_ms": floor, "attacks": steps,
         "memory": memory},
        rows, ["measure", "ms", "x floor", "images*steps/s"],
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""glibc's allocator as :mod:`gluon_robust.allocator` sets it, against glibc's defaults, on an attack's inner step.

For each model (GluonCV, fixed random weights, folded as gluon_robust folds
it) and each setting (``tuned``: the default; ``system``:
``GLUON_ROBUST_ALLOCATOR=system``), a fresh child process times one forward
plus input-backward pass of a batch (the inner step of every gradient attack)
after one warm-up step, and reads from the kernel:

* ``ms_per_image_step``: median wall time per image;
* ``minor_faults_per_step`` and ``system_s_per_step``: pages mapped afresh,
  and the kernel's time, per step (``getrusage``);
* ``peak_rss_mb``: the child's peak resident memory (``ru_maxrss``);
* ``digest``: SHA-256 of the logits and the input gradient, which must be the
  same in both settings.

Settings alternate in ``--rounds`` rounds (medians), single-threaded
(``OMP_NUM_THREADS=1``) unless ``--threads`` says otherwise. Writes
``allocator.json`` with the ratios tuned ÷ system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import git_revision, setup_logging, write_results
from gluon_robust.allocator import MALLOPT_SETTINGS

logger = logging.getLogger("benchmarks")

#: (model, input shape without the batch)
MODELS = {
    "cifar_resnet20_v1": (3, 32, 32),
    "mobilenetv2_1.0": (3, 224, 224),
    "resnet50_v1b": (3, 224, 224),
}
SETTINGS = ("tuned", "system")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="children per model and setting, alternating")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the children")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    return args


def child(model: str, batch_size: int, steps: int) -> dict:
    """Runs in the child: time ``steps`` forward+input-backward passes; what :func:`main` records."""
    import gluon_robust  # noqa: F401 -- first, so that the allocator is set before MXNet runs an operator
    import mxnet as mx
    import numpy as np
    from bench_relu6 import folded, step

    shape = (batch_size,) + MODELS[model]
    block, _ = folded(model, shape, True)
    x = mx.nd.array(np.random.RandomState(0).rand(*shape), dtype="float32")
    step(block, x, train_mode=True)  # as the attacks record a folded graph: see bench_relu6.step
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = []
    for _ in range(steps):
        logits, grad, elapsed = step(block, x, train_mode=True)
        seconds.append(elapsed)
    after = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.sha256(logits.tobytes() + grad.tobytes()).hexdigest()
    return {"ms_per_image_step": 1000 * statistics.median(seconds) / batch_size,
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
            "peak_rss_mb": after.ru_maxrss / 1024, "digest": digest}


def run_child(args, model: str, setting: str) -> dict:
    env = dict(os.environ, GLUON_ROBUST_ALLOCATOR=setting, OMP_NUM_THREADS=str(args.threads),
               MXNET_OMP_MAX_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    for *_, variable in MALLOPT_SETTINGS:  # the child sets them itself, or not at all (``system``)
        env.pop(variable, None)
    command = [sys.executable, __file__, "--child", model, setting, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{model} ({setting}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.batch_size, args.steps)))
        return
    setup_logging()
    revision = git_revision()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    models = args.models.split(",")
    runs = {model: {setting: [] for setting in SETTINGS} for model in models}
    for model in models:
        for round_ in range(args.rounds):
            for setting in (SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]):
                start = time.perf_counter()
                runs[model][setting].append(run_child(args, model, setting))
                logger.info("%s %s (round %d): %.1f ms/image-step, %.0f faults/step (%.0f s)", model, setting,
                            round_ + 1, runs[model][setting][-1]["ms_per_image_step"],
                            runs[model][setting][-1]["minor_faults_per_step"], time.perf_counter() - start)
    results, rows = {}, []
    for model in models:
        summary = {setting: {key: statistics.median(r[key] for r in runs[model][setting])
                             for key in ("ms_per_image_step", "minor_faults_per_step", "system_s_per_step",
                                         "peak_rss_mb")} for setting in SETTINGS}
        digests = {r["digest"] for setting in SETTINGS for r in runs[model][setting]}
        ratio = {key: summary["tuned"][key] / summary["system"][key]
                 for key in ("ms_per_image_step", "peak_rss_mb")}
        results[model] = {"input": list(MODELS[model]), **summary, "ratio_tuned_over_system": ratio,
                          "same_numbers": len(digests) == 1, "runs": runs[model]}
        rows.append([model, f"{summary['system']['ms_per_image_step']:.1f}",
                     f"{summary['tuned']['ms_per_image_step']:.1f}", f"{ratio['ms_per_image_step']:.2f}",
                     f"{summary['system']['minor_faults_per_step']:.0f}",
                     f"{summary['tuned']['minor_faults_per_step']:.0f}",
                     f"{summary['system']['peak_rss_mb']:.0f}", f"{summary['tuned']['peak_rss_mb']:.0f}",
                     "yes" if len(digests) == 1 else "NO"])
    write_results(args.out, "allocator",
                  {"batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
                   "load_average_at_start": load, "models": results},
                  rows, ["model", "system ms/img-step", "tuned ms/img-step", "ratio", "system faults/step",
                         "tuned faults/step", "system peak MB", "tuned peak MB", "same numbers"],
                  revision=revision)


if __name__ == "__main__":
    main()

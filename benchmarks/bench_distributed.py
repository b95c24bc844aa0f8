#!/usr/bin/env python
"""Throughput of PGD-AT on one process against a ``dist_sync`` job of 2 workers and 1 server, on loopback.

Each configuration runs ``scripts/train_adversarial.py`` (the bundled
reference model ``mnist_resnet20`` fine-tuned with PGD-AT on ``--limit``
digits, no validation) as a single process or as the workers of a
``gluon-robust launch``-style job (:func:`gluon_robust.distributed.launch`),
and reads the loop's own timing from ``metrics.json``:

* ``steady samples/s``: training samples of the last epoch over that
  epoch's time (the first epoch includes the hybridisation warm-up);
* ``job wall s``: the whole job, process start-up included.

Every configuration uses the same global batch, so they all do the same
arithmetic; on this machine's 2 shared CPU cores, two workers compete for
the same cores as one process with two threads, so expect no speed-up: the
table measures the parameter-server overhead, not scaling (see
docs/distributed.md for the scaling model on N GPU machines).

A quick check of the script itself::

    python benchmarks/bench_distributed.py --limit 128 --epochs 2 --steps 1 --out /tmp/bench
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import setup_logging, write_results
from gluon_robust.distributed import launch

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train_adversarial.py"
# (name, workers or 0 for a plain process, kvstore, OpenMP threads per process)
CONFIGS = [
    ("1 process, 2 threads", 0, "device", "2"),
    ("1 process, 1 thread", 0, "device", "1"),
    ("dist_sync 1 worker + 1 server, 2 threads", 1, "dist_sync", "2"),
    ("dist_sync 2 workers + 1 server, 1 thread each", 2, "dist_sync", "1"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=512, help="training digits (default 512)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="PGD steps of PGD-AT (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved (median)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def _run(name: str, workers: int, kvstore: str, threads: str, args, work: Path) -> dict:
    save = Path(tempfile.mkdtemp(prefix="run_", dir=work))
    command = [sys.executable, str(SCRIPT), "--config", "mnist_resnet20", "--method", "pgd-at", "--eps", "0.3",
               "--steps", str(args.steps), "--limit", str(args.limit), "--val-limit", "0", "--epochs",
               str(args.epochs), "--batch-size", str(args.batch_size), "--kvstore", kvstore, "--save-dir", str(save),
               "--no-progress"]
    env = {"OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    tic = time.perf_counter()
    if workers:
        launch(command, num_workers=workers, num_servers=1, timeout=args.timeout, env=env)
    else:
        subprocess.run(command, check=True, timeout=args.timeout, env=dict(os.environ, **env),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - tic
    metrics = json.loads((save / "metrics.json").read_text())
    seconds = [e["seconds"] for e in metrics["epochs"]]  # cumulative training time after each epoch
    last = seconds[-1] - (seconds[-2] if len(seconds) > 1 else 0.0)
    remainder = args.limit % args.batch_size  # a trailing batch smaller than the number of workers is dropped
    per_epoch = args.limit - (remainder if remainder < max(workers, 1) else 0)
    row = {"config": name, "workers": max(workers, 1), "kvstore": kvstore, "threads_per_process": int(threads),
           "steady_samples_per_s": per_epoch / last, "train_seconds": metrics["train_seconds"],
           "job_wall_seconds": wall, "final_train_loss": metrics["final"]["train_loss"],
           "num_workers_recorded": metrics["num_workers"],
           "load_average_1min_after": os.getloadavg()[0]}  # other users of the shared cores
    logger.info("%s: %.1f samples/s (last epoch %.1f s), job %.1f s", name, row["steady_samples_per_s"], last, wall)
    return row


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    runs = {name: [] for name, *_ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as work:
        for _ in range(args.repeats):  # interleaved, so that load from other users spreads over all configurations
            for name, workers, kvstore, threads in CONFIGS:
                runs[name].append(_run(name, workers, kvstore, threads, args, Path(work)))
    rows = []
    for name, samples in runs.items():
        row = dict(samples[0])
        for key in ("steady_samples_per_s", "train_seconds", "job_wall_seconds"):
            row[key] = statistics.median(r[key] for r in samples)
        row["all_steady_samples_per_s"] = [round(r["steady_samples_per_s"], 2) for r in samples]
        rows.append(row)
    base = rows[0]["steady_samples_per_s"]
    table = [[r["config"], f"{r['steady_samples_per_s']:.1f}", " / ".join(f"{v:.0f}" for v in r["all_steady_samples_per_s"]), f"{r['steady_samples_per_s'] / base:.2f}x",
              f"{r['train_seconds']:.1f}", f"{r['job_wall_seconds']:.1f}", f"{r['final_train_loss']:.4f}"]
             for r in rows]
    write_results(args.out, "distributed", {"settings": vars(args), "rows": rows}, table,
                  ["configuration", "steady samples/s (median)", "runs", "vs 1 process", "train s", "job wall s", "final loss"])


if __name__ == "__main__":
    main()

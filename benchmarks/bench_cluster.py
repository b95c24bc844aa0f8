#!/usr/bin/env python
"""Wall time of ``evaluate`` in one process against ``--cluster local:2`` and ``local:4``, and report equality.

Each configuration runs the command line in its own process (start-up, model
load, the cluster's start and the merge included), on the same digits of the
bundled robust model ``mnist_resnet20_pgdat`` with the same recipe and seed
(default: AutoAttack's ``standard`` at eps 0.3 on 200 digits, batches of 25,
so 8 chunks of 25). Reported per configuration:

* ``wall s``: the command's wall time (median of ``--repeats`` runs);
* ``speed-up``: the one-process wall time over this one;
* ``CPU s``: user + system CPU time of the command and every process it
  started (the Dask workers included); on a machine shared with other jobs,
  where wall time depends on what else runs, this shows the cluster's overhead;
* ``equal``: whether ``report.json`` minus its run-dependent fields
  (:data:`gluon_robust.evaluation.report.TIMING_KEYS`) and ``examples.npz``
  equal the one-process run's.

``local:4`` on a 2-core machine checks that oversubscription is handled:
``local:N`` starts at most one single-threaded worker per core (and warns when
N is larger), so it should take as long as ``local:2``. The one-process run
uses MXNet's default threads (all cores).

A quick check of the script itself::

    python benchmarks/bench_cluster.py --limit 16 --recipe apgd-lite --out /tmp/bench
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

import numpy as np

from common import children_cpu_seconds, git_revision, setup_logging, write_results
from gluon_robust.evaluation.report import comparable

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent
ALL_CONFIGS = [("1 process", None), ("local:2", "local:2"), ("local:4", "local:4")]
CONFIGS = list(ALL_CONFIGS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="digits (default 200)")
    parser.add_argument("--recipe", default="standard", help="evaluation recipe (default standard)")
    parser.add_argument("--eps", default="0.3")
    parser.add_argument("--batch-size", type=int, default=25, help="batch size (default 25: 8 chunks of 200 digits)")
    parser.add_argument("--config", default="mnist_resnet20_pgdat")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, interleaved (median)")
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--configs", default="1 process,local:2,local:4",
                        help="comma-separated configurations to run (the first is the reference: '1 process')")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace, cluster, out: Path):
    """Run one evaluation as a separate process; its wall time and CPU time in seconds."""
    command = [sys.executable, "-m", "gluon_robust.cli", "evaluate", "--config", args.config, "--data", "mnist-sample",
               "--limit", str(args.limit), "--recipe", args.recipe, "--eps", args.eps, "--batch-size",
               str(args.batch_size), "--no-progress", "--out", str(out)]
    if cluster is not None:
        command += ["--cluster", cluster]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cpu = children_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, children_cpu_seconds() - cpu


def same_run(run_dir: Path, reference: Path) -> bool:
    """Whether ``run_dir`` holds the reference's report (all but run-dependent fields) and examples."""
    got = json.loads((run_dir / "report.json").read_text())
    want = json.loads((reference / "report.json").read_text())
    a, b = np.load(run_dir / "examples.npz"), np.load(reference / "examples.npz")
    arrays = sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    return comparable(got) == comparable(want) and got["fingerprint"] == want["fingerprint"] and arrays


def main(argv=None) -> None:
    global CONFIGS
    args = parse_args(argv)
    wanted = [c.strip() for c in args.configs.split(",")]
    CONFIGS = [c for c in ALL_CONFIGS if c[0] in wanted]
    if not CONFIGS or CONFIGS[0][0] != "1 process" or len(CONFIGS) != len(wanted):
        raise SystemExit(f"--configs must list '1 process' and any of {[c[0] for c in ALL_CONFIGS[1:]]}, "
                         f"got {args.configs!r}")
    setup_logging()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    revision = git_revision()  # at the start: the code that is measured
    if load is not None and load > cores:
        logger.warning("load average %.1f on %d cores: other jobs share the machine, wall times are not speed-ups", load,
                       cores)
    times = {name: [] for name, _ in CONFIGS}
    cpu = {name: [] for name, _ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as scratch:
        for repeat in range(args.repeats):
            for name, cluster in CONFIGS:
                out = Path(scratch) / f"{name.replace(' ', '_').replace(':', '')}_{repeat}"
                seconds, cpu_seconds = run(args, cluster, out)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                logger.info("%s (run %d): %.1f s wall, %.1f s CPU", name, repeat + 1, seconds, cpu_seconds)
        reference = Path(scratch) / "1_process_0"
        equal = {name: all(same_run(Path(scratch) / f"{name.replace(' ', '_').replace(':', '')}_{r}", reference)
                           for r in range(args.repeats)) for name, _ in CONFIGS}
        workers = {}
        for name, cluster in CONFIGS[1:]:
            report = json.loads((Path(scratch) / f"{name.replace(':', '')}_0" / "report.json").read_text())
            workers[name] = report["cluster"]["workers"]
            workers[name + " chunks"] = report["cluster"]["chunks"]
    base = statistics.median(times["1 process"])
    rows, results = [], []
    for name, _ in CONFIGS:
        wall = statistics.median(times[name])
        cpu_s = statistics.median(cpu[name])
        results.append({"config": name, "wall_s": round(wall, 2), "runs_s": [round(t, 2) for t in times[name]],
                        "speedup": round(base / wall, 3), "cpu_s": round(cpu_s, 2), "report_equal": equal[name]})
        rows.append([name, f"{wall:.1f}", f"{base / wall:.2f}x", f"{cpu_s:.1f}", "yes" if equal[name] else "NO"])
    payload = {"limit": args.limit, "recipe": args.recipe, "eps": args.eps, "batch_size": args.batch_size,
               "config": args.config, "cores": cores, "load_average_at_start": load, "repeats": args.repeats,
               "results": results, "workers": workers}
    name = "bench_cluster" if (args.limit, args.recipe) == (200, "standard") else \
        f"bench_cluster-limit{args.limit}_{args.recipe}"  # NAME-SUFFIX.json: tables.py renders it beside NAME.json
    write_results(args.out, name, payload, rows, ["configuration", "wall s", "speed-up", "CPU s", "report equal"],
                  revision=revision)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Wall time of ``gluon-robust demo`` (what ``make demo`` runs after the install), and its compute floor.

Runs the demo command as a new user would, in its own process, once per
``--workers`` value (default: 2, the default on a 2-core machine, then 1),
and records for each run:

* ``wall_s``: the command's wall time (start-up, cluster, reports included);
* ``cpu_s``: user + system CPU seconds of the command and all its workers;
* ``attack_s``: the seconds the attack stages themselves took, summed over
  the models (each stage's own timer, in every chunk, from ``report.json``);
* ``floor_s``: ``attack_s / workers``, the wall time if the attacks were
  spread perfectly over the workers and nothing else took time;
* ``contrast``: the demo's contrast table (the figures users see); every run
  must print the same one.

The floor shows what is left to gain without doing less work: the attacks'
forward and backward passes, at the model's speed on one core. Use
``--baseline-python`` to time the same command under another environment
(another checkout's ``.venv``) in the same run, interleaved.
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

from common import children_cpu_seconds, git_revision, setup_logging, write_results

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,1", help="comma-separated --workers values (default 2,1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved (median)")
    parser.add_argument("--baseline-python", help="also time the demo under this interpreter's gluon_robust")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        parser.error(f"--workers values must be >= 1, got {args.workers}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def attack_seconds(report: dict) -> float:
    """The attack stages' own seconds in ``report`` (summed over chunks by the merge)."""
    return float(sum(a.get("seconds") or 0.0 for a in report.get("attacks", [])))


def run_demo(python: str, workers: int, out: Path, timeout: float) -> dict:
    """One ``demo`` run in a fresh process, outside any checkout (so ``python`` uses its own gluon_robust)."""
    command = [python, "-m", "gluon_robust.cli", "demo", "--workers", str(workers), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cpu, start = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    contrast = json.loads((out / "contrast.json").read_text())
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*/report.json"))]
    attack_s = sum(attack_seconds(r) for r in reports)
    return {"wall_s": wall, "cpu_s": children_cpu_seconds() - cpu, "attack_s": attack_s, "floor_s": attack_s / workers,
            "contrast": contrast["rows"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    revision = git_revision()  # at the start: the code that is measured
    contestants = [("this", sys.executable)] + ([("baseline", args.baseline_python)] if args.baseline_python else [])
    runs = {(name, w): [] for name, _ in contestants for w in args.workers}
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as scratch:
        for repeat in range(args.repeats):
            for workers in args.workers:
                for name, python in contestants:
                    out = Path(scratch) / f"{name}_{workers}_{repeat}"
                    result = run_demo(python, workers, out, args.timeout)
                    runs[(name, workers)].append(result)
                    logger.info("%s, --workers %d (run %d): %.1f s wall, %.1f s CPU, attacks %.1f s", name, workers,
                                repeat + 1, result["wall_s"], result["cpu_s"], result["attack_s"])
    first = next(iter(runs.values()))[0]["contrast"]
    results, rows = [], []
    for (name, workers), got in runs.items():
        med = {k: statistics.median(r[k] for r in got) for k in ("wall_s", "cpu_s", "attack_s", "floor_s")}
        same = all(r["contrast"] == first for r in got)
        results.append({"code": name, "workers": workers, **{k: round(v, 2) for k, v in med.items()},
                        "runs_wall_s": [round(r["wall_s"], 2) for r in got], "same_figures": same})
        rows.append([name, workers, f"{med['wall_s']:.0f}", f"{med['floor_s']:.0f}",
                     f"{med['wall_s'] / med['floor_s']:.2f}", f"{med['cpu_s']:.0f}", "yes" if same else "NO"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    write_results(args.out, "demo", {"cores": cores, "load_average_at_start": load, "repeats": args.repeats,
                                     "baseline_python": args.baseline_python, "results": results,
                                     "contrast": first},
                  rows, ["code", "workers", "wall s", "floor s", "wall/floor", "CPU s", "same figures"],
                  revision=revision)


if __name__ == "__main__":
    main()

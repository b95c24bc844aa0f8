#!/usr/bin/env python
"""Time the same attacks and training step under two checkouts of gluon_robust, interleaved.

Issue 17 (the redesign) promises that the benchmark ratios do not get worse beyond noise. This runs a
fixed set of workloads on the bundled reference model, once in this checkout's environment and once in a
baseline checkout's (``--baseline-python``, for example a ``git worktree`` of the revision before, with its
own ``.venv``), alternating the two for ``--repeats`` rounds, each workload in a fresh one-thread process.
It records each side's median seconds and their ratio (this ÷ baseline)::

    git worktree add ../before REV && (cd ../before && make install)
    .venv/bin/python benchmarks/bench_revisions.py --baseline-python ../before/.venv/bin/python

Results: ``benchmarks/results/revisions.json`` with both revisions and the load average during the run.
"""

from __future__ import annotations

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
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import git_revision, provenance, setup_logging, write_json_atomic  # noqa: E402

logger = logging.getLogger("benchmarks.revisions")

#: The timed workloads: a name, and the code run after ``model``, ``x`` and ``y`` (64 digits) are loaded.
WORKLOADS: Dict[str, str] = {
    "pgd-10": "get_attack('pgd', eps=0.1, steps=10, seed=0)(model, x, y)",
    "apgd-ce-20": "get_attack('apgd', eps=0.1, steps=20, seed=0)(model, x, y)",
    "square-200": "get_attack('square', eps=0.1, max_queries=200, seed=0)(model, x, y)",
    "fab-t-20": "get_attack('fab-t', eps=0.1, steps=20, seed=0)(model, x, y)",
    "trades-step": "trades_step()",
}

#: Runs in the child process: loads the model and digits, runs the workload once to warm up, then times it.
CHILD = r"""
import json, sys, time
import mxnet as mx
from gluon_robust.attacks import get_attack
from gluon_robust.data import load_data
from gluon_robust.model import load_classifier, trainable_classifier
from gluon_robust.training import make_method

model = load_classifier("mnist_resnet20")
data = load_data("mnist-sample", split="test", limit=64)
x, y = data.arrays()

trainable = trainable_classifier("mnist_resnet20")
method = make_method("trades", {"eps": 0.1, "steps": 5})

def trades_step():
    with mx.autograd.record():
        loss = method(trainable, mx.nd.array(x), mx.nd.array(y))
    loss.backward()
    mx.nd.waitall()

code = sys.argv[1]
exec(code)
start = time.perf_counter()
exec(code)
mx.nd.waitall()
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _time(python: str, code: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_OMP_MAX_THREADS="1", PYTHONWARNINGS="ignore")
    # run outside any checkout: with ``-c`` the working directory comes first on sys.path, and a checkout there
    # would shadow the environment's own gluon_robust
    out = subprocess.run([python, "-c", CHILD, code], env=env, capture_output=True, text=True, timeout=1800,
                         cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"{python}: {code}: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def _revision(python: str) -> str:
    code = "import gluon_robust, subprocess, pathlib; print(pathlib.Path(gluon_robust.__file__).resolve().parents[1])"
    root = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir()).stdout.strip()
    rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return rev.stdout.strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", required=True, help="python of the baseline checkout's environment")
    parser.add_argument("--python", default=sys.executable, help="python of the checkout under test (this one)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of the workloads")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory of revisions.json")
    args = parser.parse_args(argv)
    setup_logging()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or args.repeats < 1 or not Path(args.baseline_python).is_file():
        logger.error("bad arguments: --workloads %s (known: %s), --repeats %s, --baseline-python %s",
                     ",".join(unknown) or "ok", ", ".join(WORKLOADS), args.repeats, args.baseline_python)
        return 2
    revision = git_revision()  # at the start: the code that is measured
    load = [os.getloadavg()[0]]
    rows: List[Dict[str, object]] = []
    for name in names:
        times: Dict[str, List[float]] = {"this": [], "baseline": []}
        for _ in range(args.repeats):
            times["this"].append(_time(args.python, WORKLOADS[name]))
            times["baseline"].append(_time(args.baseline_python, WORKLOADS[name]))
            load.append(os.getloadavg()[0])
        this, base = statistics.median(times["this"]), statistics.median(times["baseline"])
        rows.append({"workload": name, "this_seconds": round(this, 3), "baseline_seconds": round(base, 3),
                     "ratio": round(this / base, 3), "all_this": times["this"], "all_baseline": times["baseline"]})
        logger.info("%-12s this %.3f s, baseline %.3f s, ratio %.3f", name, this, base, this / base)
    result = {"baseline_revision": _revision(args.baseline_python), "this_revision": _revision(args.python),
              "repeats": args.repeats, "threads": 1, "load_average": [round(v, 2) for v in load], "rows": rows,
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **provenance(revision)}
    write_json_atomic(Path(args.out) / "revisions.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

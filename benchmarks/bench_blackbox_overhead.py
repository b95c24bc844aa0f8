#!/usr/bin/env python
"""Per-query cost of the black-box attacks against a plain batched forward of the same batch.

For each model and batch size, every attack runs on the same batch with a
small query budget. A plain forward of that batch (NumPy in, the model, scores
back as NumPy: what the query counter does for one query per sample) is timed
``--forward-calls`` times before and after every attack run, so that each run
is compared with the forwards next to it (this host's speed drifts by 10-20%
over minutes). Repeats are interleaved and medians reported:

* ``per_query_ms``: wall time of the attack call x batch / queries spent
  (the time one query of every sample costs);
* ``ratio``: ``per_query_ms`` over the median of the adjacent forwards (1.0 is
  the floor of a batched forward; below 1 when the attack sends larger query
  batches, as HopSkipJump's gradient estimate does);
* ``overhead_ms``: the same wall time less the time spent inside the
  target's evaluations (``QueryCounter._evaluate``, timed in the same run),
  per query: the attack's own work, the framework's final success check
  included, and free of the host's drift;
* ``ratio_in_run``: wall time over that evaluation time;
* ``queries_per_s``: queries spent / wall time.

Attacks: Square (Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049),
SimBA (Guo et al. 2019, https://arxiv.org/abs/1905.07121), NES (Ilyas et al.
2018, https://arxiv.org/abs/1804.08598) and HopSkipJump (Chen et al. 2020,
https://arxiv.org/abs/1904.02144). The radius is small, so that samples stay
unbroken and the query batches full; the success rate is recorded.

Models: the bundled robust ``mnist_resnet20_pgdat`` (1x28x28) and GluonCV
``mobilenetv2_1.0`` / ``resnet50_v1b`` at 3x224x224 with fixed random weights
(see :func:`build_model`).

Writes ``benchmarks/results/blackbox_overhead.json`` and, with ``--readme``,
the table between the ``blackbox-overhead`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

logger = logging.getLogger("benchmarks.blackbox_overhead")
START, END = "<!-- blackbox-overhead:start -->", "<!-- blackbox-overhead:end -->"
#: model -> L-inf eps, query budget per attack, NES samples, HopSkipJump's first gradient evaluations.
#: NES's budget is 1 + k (2 samples + 1): the first check, then k estimate-and-step rounds.
SETTINGS: Dict[str, Dict[str, Any]] = {
    "mnist_resnet20_pgdat": {"eps": 0.05, "budget": {"square": 200, "simba": 200, "nes": 204, "hopskipjump": 300},
                             "nes_samples": 50, "hsj_evals": 50},
    "mobilenetv2_1.0": {"eps": 1 / 255, "budget": {"square": 60, "simba": 60, "nes": 64, "hopskipjump": 60},
                        "nes_samples": 10, "hsj_evals": 20},
    "resnet50_v1b": {"eps": 1 / 255, "budget": {"square": 10, "simba": 10, "nes": 22, "hopskipjump": 40},
                     "nes_samples": 10, "hsj_evals": 10},
}
ATTACKS = ("square", "simba", "nes", "hopskipjump")


def build_model(name: str, seed: int):
    """The classifier (folded, hybridised, as ``load_classifier`` builds it) and its input size.

    The 224x224 nets keep BatchNorm's initial statistics: with randomised
    statistics a random-weight MobileNetV2 calls every input the same class,
    and HopSkipJump, which needs an adversarial start, then only ever times
    its initialisation. The forward's cost does not depend on the values.
    """
    import mxnet as mx
    from gluoncv.model_zoo import get_model

    from gluon_robust.model import load_classifier

    if name == "mnist_resnet20_pgdat":
        model = load_classifier(name)
        return model, tuple(model.input_size)
    mx.random.seed(seed)
    net = get_model(name, classes=1000)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    model = load_classifier(net, classes=1000, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                            input_size=(3, 224, 224))
    return model, (3, 224, 224)


def make_attack(kind: str, setting: Dict[str, Any], seed: int):
    from gluon_robust.attacks.hopskipjump import HopSkipJump
    from gluon_robust.attacks.nes import NES
    from gluon_robust.attacks.simba import SimBA
    from gluon_robust.attacks.square import SquareAttack

    eps, budget = setting["eps"], setting["budget"][kind]
    if kind == "square":
        return SquareAttack(eps=eps, max_queries=budget, seed=seed)
    if kind == "simba":
        return SimBA(eps=eps, norm="linf", max_queries=budget, seed=seed)
    if kind == "nes":
        return NES(eps=eps, max_queries=budget, samples=setting["nes_samples"], seed=seed)
    return HopSkipJump(norm="linf", eps=eps, max_queries=budget, initial_evals=setting["hsj_evals"],
                       init_tries=10, seed=seed)


@contextlib.contextmanager
def evaluation_clock() -> Iterator[List[float]]:
    """Seconds spent inside the target's evaluations (``QueryCounter._evaluate``, forward and ``asnumpy``), per call."""
    from gluon_robust.attacks.queries import QueryCounter

    seconds: List[float] = []
    original = QueryCounter._evaluate

    def timed(self, points):
        start = time.perf_counter()
        try:
            return original(self, points)
        finally:
            seconds.append(time.perf_counter() - start)

    QueryCounter._evaluate = timed
    try:
        yield seconds
    finally:
        QueryCounter._evaluate = original


def bench(name: str, batch: int, repeats: int, seed: int, attacks: List[str], forward_calls: int = 5) -> Dict[str, Any]:
    import mxnet as mx

    from gluon_robust.data import load_data

    model, size = build_model(name, seed)
    if name.startswith("mnist"):
        x, y = load_data("mnist-sample", split="test", limit=batch).arrays()
        x = x.astype(np.float32)
    else:
        x = np.random.default_rng(seed).uniform(0, 1, (batch,) + size).astype(np.float32)
    y = model.predict(x).argmax(axis=1).astype(np.int64)  # attack the model's own labels: every sample starts clean

    def forward() -> None:
        with mx.autograd.pause(train_mode=False):
            model(mx.nd.array(x, ctx=model.ctx, dtype="float32")).asnumpy()

    def forwards() -> List[float]:
        out = []
        for _ in range(forward_calls):
            start = time.perf_counter()
            forward()
            out.append(time.perf_counter() - start)
        return out

    setting = SETTINGS[name]
    forward()
    samples: Dict[str, List[Dict[str, Any]]] = {a: [] for a in attacks}
    every_forward: List[float] = []
    for repeat in range(repeats):
        before = forwards()
        for kind in attacks:
            attack = make_attack(kind, setting, seed)
            with evaluation_clock() as evaluations:
                start = time.perf_counter()
                result = attack(model, x, y)
                seconds = time.perf_counter() - start
            after = forwards()
            queries = int(result.queries.sum())
            samples[kind].append({"seconds": seconds, "queries": queries, "success": float(result.success.mean()),
                                  "evaluation_s": sum(evaluations), "forward_s": statistics.median(before + after)})
            every_forward += before
            before = after
            logger.info("%s batch %d %s: %.2f s (%.2f s evaluating), %d queries, forward %.0f ms", name, batch, kind,
                        seconds, sum(evaluations), queries, 1000 * samples[kind][-1]["forward_s"])
        every_forward += before
    out: Dict[str, Any] = {"input": list(size), "batch": batch, "eps": setting["eps"],
                           "forward_ms": 1000 * statistics.median(every_forward), "attacks": {}}
    for kind in attacks:
        runs = samples[kind]
        per_query = [1000 * s["seconds"] * batch / s["queries"] for s in runs]
        overhead = [1000 * (s["seconds"] - s["evaluation_s"]) * batch / s["queries"] for s in runs]
        out["attacks"][kind] = {
            "per_query_ms": statistics.median(per_query),
            "ratio": statistics.median(q / (1000 * s["forward_s"]) for q, s in zip(per_query, runs)),
            "overhead_ms": statistics.median(overhead),
            "ratio_in_run": statistics.median(s["seconds"] / s["evaluation_s"] for s in runs),
            "queries_per_s": statistics.median(s["queries"] / s["seconds"] for s in runs),
            "budget": setting["budget"][kind], "queries": runs[0]["queries"],
            "success": runs[0]["success"], "seconds": [s["seconds"] for s in runs],
            "evaluation_s": [s["evaluation_s"] for s in runs], "adjacent_forward_ms": [1000 * s["forward_s"] for s in runs],
        }
    return out


def markdown(payload: Dict[str, Any]) -> str:
    """The README table: one row per model and batch, each attack's ratio (queries/s)."""
    head = "| model | input | batch | forward ms | " + " | ".join(ATTACKS) + " |"
    lines = [head, "|---|---|---|---|" + "---|" * len(ATTACKS)]
    for key, row in payload["runs"].items():
        cells = []
        for kind in ATTACKS:
            a = row["attacks"].get(kind)
            if a is None:
                cells.append("-")
            elif "overhead_ms" in a:
                cells.append(f"{a['ratio']:.2f}x ({a['queries_per_s']:.0f} q/s, +{a['overhead_ms']:.0f} ms)")
            else:
                cells.append(f"{a['ratio']:.2f}x ({a['queries_per_s']:.0f} q/s)")
        lines.append(f"| {key.split('@')[0]} | {'x'.join(map(str, row['input']))} | {row['batch']} | "
                     f"{row['forward_ms']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="mnist_resnet20_pgdat@32,mnist_resnet20_pgdat@100,mobilenetv2_1.0@32",
                        help="comma-separated MODEL@BATCH, models of: " + ", ".join(SETTINGS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--forward-calls", type=int, default=5, help="plain forwards timed per repeat")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of MXNet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--readme", help="README whose blackbox-overhead table is replaced")
    parser.add_argument("--update", action="store_true", help="keep the other runs of an existing JSON")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the README table from the JSON")
    args = parser.parse_args(argv)
    for flag in ("repeats", "threads", "forward_calls"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for run in args.runs.split(","):
        model, _, batch = run.partition("@")
        if model not in SETTINGS or not batch.isdigit() or int(batch) < 1:
            parser.error(f"--runs: {run!r} is not MODEL@BATCH with MODEL one of {', '.join(SETTINGS)}")
    bad = [a for a in args.attacks.split(",") if a not in ATTACKS]
    if bad:
        parser.error(f"--attacks: unknown attack {bad[0]!r}; known: {', '.join(ATTACKS)}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before MXNet is imported
    os.environ.setdefault("MXNET_OMP_MAX_THREADS", str(args.threads))
    import json

    from common import setup_logging, write_results
    from bench_vs_torch import update_readme

    setup_logging()
    path = Path(args.out) / "blackbox_overhead.json"
    runs: Dict[str, Any] = json.loads(path.read_text())["runs"] if (args.update or args.table_only) and path.exists() \
        else {}
    if args.table_only:
        if args.readme:
            update_readme(Path(args.readme), markdown({"runs": runs}), START, END)
        return
    for run in args.runs.split(","):
        model, _, batch = run.partition("@")
        load_start = list(os.getloadavg())
        runs[run] = bench(model, int(batch), args.repeats, args.seed, args.attacks.split(","), args.forward_calls)
        runs[run].update(threads=args.threads, repeats=args.repeats, load_average_start=load_start,
                         load_average_end=list(os.getloadavg()))
    payload = {"runs": runs}
    rows = [[key] + [f"{r['attacks'][k]['ratio']:.2f}" if k in r["attacks"] else "-" for k in ATTACKS]
            for key, r in runs.items()]
    write_results(args.out, "blackbox_overhead", payload, rows, ["run"] + list(ATTACKS))
    if args.readme:
        update_readme(Path(args.readme), markdown(payload), START, END)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Memory at ImageNet scale: streaming, and the automatic batch size against measured peak memory.

Four measurements, each in a fresh child process (peak resident memory,
``ru_maxrss``, is read inside the child):

* ``streaming``: peak RSS of ``gluon-robust attack --attack fgsm`` on image
  folders of ``n`` random 224x224 PNGs (``mobilenet0.25``, random weights,
  ``--batch-size 4``): flat in ``n`` when the images are streamed;
* ``auto_batch``: the batch size :func:`gluon_robust.memory.auto_batch_size`
  chooses for a few zoo nets at 224x224 with the default budget (4 GiB), and
  the estimate behind it;
* ``measured``: for each of two nets, the peak RSS of one PGD-3 batch (three
  forward and input-backward passes, every sample attacked) at batch 1, at a
  third of the automatic batch size and at the automatic batch size, against
  the estimate ``fixed + batch * per_sample``.

* ``evaluate_standard``: peak RSS of ``gluon-robust evaluate --recipe standard``
  under ``--max-memory`` on image folders of 1,000 and 10,000 random 224x224
  JPEGs (``mobilenet0.25``, random weights, 10 classes). A first pass records
  the model's own prediction of every image; then the same 16 images (spread
  over the folder) are filed under their predicted class and every other image
  under another class, so that clean accuracy is exactly 16/n and every stage
  of the recipe runs on the same 16 images whatever n is. Memory is then flat
  in n only if the images, the per-sample records and the report are streamed.

Writes ``memory.json`` and logs a table. Takes about 10 to 15 minutes on 2 CPU cores
(``--evaluate-sizes 0`` skips the evaluate runs: 3 to 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import setup_logging, write_results  # noqa: E402
from gluon_robust.memory import DEFAULT_MAX_MEMORY, auto_batch_size, estimate_memory, format_size  # noqa: E402

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]

#: The child's peak RSS in KiB: VmHWM, the high-water mark of its own address space (ru_maxrss would start at
#: the parent's RSS at the fork, which Linux carries over an exec).
PEAK = r"""
import re, resource
def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

#: Child of the streaming runs: the CLI, then its peak RSS (KiB) as the last stderr line.
CLI_CHILD = PEAK + """
import json, sys
from gluon_robust.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "maxrss_kib": peak_kib()}), file=sys.stderr)
"""

#: Child of the measured runs: one PGD-3 batch on inputs the model classifies as labelled (all attacked).
ATTACK_CHILD = PEAK + """
import json, sys, time
import numpy as np
from gluon_robust.attacks import PGD
from gluon_robust.model import load_classifier
name, batch = sys.argv[1], int(sys.argv[2])
model = load_classifier(name, classes=1000, input_size=(3, 224, 224))
x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
y = model.predict(x, batch_size=batch).argmax(axis=1)
start = time.perf_counter()
result = PGD(eps=8 / 255, steps=3)(model, x, y)
seconds = time.perf_counter() - start
print(json.dumps({"maxrss_kib": peak_kib(), "seconds": seconds}), file=sys.stderr)
"""


#: Child of the prediction pass: the model's clean prediction of every image of a folder, in the folder's order.
PREDICT_CHILD = """
import json, sys
import numpy as np
from mxnet.gluon.data.vision import ImageFolderDataset
from gluon_robust.data.folder import FolderSource
from gluon_robust.model import load_classifier
root, out = sys.argv[1], sys.argv[2]
model = load_classifier("mobilenet0.25", classes=10)
source = FolderSource(root)
preds = [model.predict(batch.x, batch_size=len(batch.x)).argmax(axis=1) for batch in source.batches(32)]
paths = [path for path, _ in ImageFolderDataset(root, flag=1).items]
json.dump({"paths": paths, "preds": np.concatenate(preds).tolist()}, open(out, "w"))
print(json.dumps({"images": len(paths)}), file=sys.stderr)
"""

#: Images of every evaluate run that the model classifies as labelled (the ones the recipe attacks).
ATTACKED = 16
#: The memory budget the evaluate runs are given.
EVALUATE_BUDGET = "1G"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,64", help="folder sizes of the streaming runs")
    parser.add_argument("--nets", default="mobilenet0.25,mobilenet1.0,resnet18_v1,resnet50_v1",
                        help="zoo nets whose automatic batch size is reported")
    parser.add_argument("--measure", default="mobilenet0.25,resnet18_v1", help="the nets whose peak memory is measured")
    parser.add_argument("--evaluate-sizes", default="1000,10000",
                        help="folder sizes of the evaluate --recipe standard runs (0: none)")
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def child(code: str, args: List[str]) -> Dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stderr.strip().splitlines()[-1])


def image_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return root


def labelled_folder(root: Path, n: int) -> Path:
    """``n`` random JPEGs, ATTACKED of them filed under the model's prediction, the rest under another class."""
    rng = np.random.default_rng(n)
    staging = root / "c0"
    staging.mkdir(parents=True)
    for c in range(1, 10):
        (root / f"c{c}").mkdir()
    for i in range(n):
        cv2.imwrite(str(staging / f"{i:05d}.jpg"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    found = root.parent / f"predictions{n}.json"
    child(PREDICT_CHILD, [str(root), str(found)])
    record = json.loads(found.read_text())
    attacked = set(np.linspace(0, n - 1, ATTACKED).round().astype(int).tolist())
    for i, (path, pred) in enumerate(zip(record["paths"], record["preds"])):
        label = pred if i in attacked else (pred + 1) % 10
        if label != 0:
            os.replace(path, root / f"c{label}" / os.path.basename(path))
    return root


def evaluate_standard(sizes: List[int], work: Path) -> List[Dict]:
    rows = []
    for n in sizes:
        data = labelled_folder(work / f"labelled{n}", n)
        out = work / f"evaluate{n}"
        start = time.perf_counter()
        result = child(CLI_CHILD, ["evaluate", "--model", "mobilenet0.25", "--classes", "10", "--data",
                                   f"folder:{data}", "--recipe", "standard", "--eps", "8/255", "--max-memory",
                                   EVALUATE_BUDGET, "--no-progress", "--out", str(out)])
        report = json.loads((out / "report.json").read_text())
        clean = report["clean_accuracy"]
        rows.append({"n": n, "peak_rss_mib": round(result["maxrss_kib"] / 1024, 1), "budget": EVALUATE_BUDGET,
                     "clean_accuracy": clean, "attacked": round(clean * n),
                     "images_if_held_mib": round(n * 3 * 224 * 224 * 4 / 2 ** 20, 1),
                     "seconds": round(time.perf_counter() - start, 1)})
        logger.info("evaluate --recipe standard n=%d: %s", n, rows[-1])
        shutil.rmtree(data)
    return rows


def streaming(sizes: List[int], work: Path) -> List[Dict]:
    rows = []
    for n in sizes:
        data = image_folder(work / f"images{n}", n)
        start = time.perf_counter()
        result = child(CLI_CHILD, ["attack", "--model", "mobilenet0.25", "--classes", "10", "--data", f"folder:{data}",
                                   "--attack", "fgsm", "--eps", "8/255", "--batch-size", "4", "--max-images", "0",
                                   "--out", str(work / f"out{n}")])
        summary = json.loads((work / f"out{n}" / "summary.json").read_text())
        rows.append({"n": n, "peak_rss_mib": round(result["maxrss_kib"] / 1024, 1), "attacked": summary["attacked"],
                     "images_if_held_mib": round(n * 3 * 224 * 224 * 4 / 2 ** 20, 1),
                     "seconds": round(time.perf_counter() - start, 1)})
        logger.info("streaming n=%d: %s", n, rows[-1])
    return rows


def auto_batches(nets: List[str]) -> List[Dict]:
    from gluon_robust.model import load_classifier

    rows = []
    for name in nets:
        model = load_classifier(name, classes=1000, input_size=(3, 224, 224))
        estimate = estimate_memory(model, (3, 224, 224))
        batch = auto_batch_size(model, (3, 224, 224), DEFAULT_MAX_MEMORY)
        rows.append({"net": name, "auto_batch_size": batch, "activation_mib": round(estimate.activation_bytes / 2 ** 20, 1),
                     "per_sample_mib": round(estimate.per_sample_bytes / 2 ** 20, 1),
                     "fixed_mib": round(estimate.fixed_bytes / 2 ** 20, 1),
                     "estimated_peak_mib": round(estimate.batch_bytes(batch) / 2 ** 20, 1)})
        logger.info("auto batch %s: %s", name, rows[-1])
    return rows


def measured(name: str, auto: int) -> List[Dict]:
    from gluon_robust.model import load_classifier

    estimate = estimate_memory(load_classifier(name, classes=1000, input_size=(3, 224, 224)), (3, 224, 224))
    rows = []
    for batch in sorted({1, max(1, auto // 3), auto}):
        result = child(ATTACK_CHILD, [name, str(batch)])
        rows.append({"net": name, "batch_size": batch, "measured_peak_mib": round(result["maxrss_kib"] / 1024, 1),
                     "estimated_peak_mib": round(estimate.batch_bytes(batch) / 2 ** 20, 1),
                     "pgd_seconds": round(result["seconds"], 2)})
        logger.info("measured %s: %s", name, rows[-1])
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        slope = (last["measured_peak_mib"] - first["measured_peak_mib"]) / (last["batch_size"] - first["batch_size"])
        rows[-1]["measured_per_sample_mib"] = round(slope, 2)
        rows[-1]["estimated_per_sample_mib"] = round(estimate.per_sample_bytes / 2 ** 20, 2)
    return rows


def main(argv=None) -> None:
    setup_logging()
    args = parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        stream = streaming([int(s) for s in args.sizes.split(",")], Path(tmp))
        evaluated = evaluate_standard([int(s) for s in args.evaluate_sizes.split(",") if int(s) > 0], Path(tmp))
    auto = auto_batches([n for n in args.nets.split(",") if n])
    measure = []
    for name in [n for n in args.measure.split(",") if n]:
        chosen = next((r["auto_batch_size"] for r in auto if r["net"] == name), None)
        if chosen is None:
            chosen = auto_batches([name])[0]["auto_batch_size"]
        measure += measured(name, chosen)
    payload = {"streaming": stream, "evaluate_standard": evaluated, "auto_batch": auto, "measured": measure,
               "budget": format_size(DEFAULT_MAX_MEMORY), "seconds": round(time.perf_counter() - start, 1)}
    rows = [["streaming", f"n={r['n']}", r["peak_rss_mib"], ""] for r in stream]
    rows += [["evaluate standard", f"n={r['n']}, {r['attacked']} attacked", r["peak_rss_mib"],
              f"budget {r['budget']}"] for r in evaluated]
    rows += [["auto batch", r["net"], r["estimated_peak_mib"], r["auto_batch_size"]] for r in auto]
    rows += [["measured", f"{r['net']} batch {r['batch_size']}", r["measured_peak_mib"], r["estimated_peak_mib"]]
             for r in measure]
    write_results(args.out, "memory", payload, rows, ["what", "case", "peak / estimate MiB", "batch or estimate MiB"])


if __name__ == "__main__":
    main()

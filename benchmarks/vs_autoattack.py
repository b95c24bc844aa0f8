#!/usr/bin/env python
"""gluon_robust's ``standard`` recipe against reference AutoAttack, same models, digits and budgets.

Reference: Croce & Hein (2020), "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML,
https://arxiv.org/abs/2003.01690, as published by its authors on PyPI
(``pyautoattack``, PyTorch). ``make bench-autoattack`` installs it with PyTorch
(CPU) into the benchmark's own environment ``benchmarks/.venv-autoattack``;
neither is a dependency of the package.

GluonCV refuses to import next to PyTorch 2, so this process never imports
MXNet or gluon_robust's model code. The MXNet side runs in the project's
environment (``--ours-python``, default ``.venv/bin/python``), in subprocesses:

1. ``vs_autoattack.py --dump`` loads a bundled model through gluon_robust and
   writes the held-out digits, the model's logits on them and the raw
   ``.params`` arrays by name;
2. ``python -m gluon_robust.cli evaluate --recipe standard`` evaluates it.

The bundled models (GluonCV ``cifar_resnet20_v1`` on MNIST) are ported to a
plain-PyTorch twin parameter by parameter name (the ``.params`` names are the
Gluon block structure, which the twin copies); the script stops unless the
twin's logits agree with gluon_robust's to 1e-4.

For each model and epsilon (L-inf) it records the robust accuracy after each
stage (cumulative, over all digits), the per-digit agreement of the final
robust masks, and two time ratios ours / reference: ``time_ratio``, the wall
time of the whole ``evaluate`` process (start-up, model loading and report
included) over that of the ``run_standard_evaluation`` call, and
``attack_time_ratio``, of the attack stages' own seconds, and
``cpu_time_ratio``, of the CPU seconds of the same process and call (the
fairest on a machine shared with other work). Each finished (model, eps) is written at once to
``autoattack.json``, so an interrupted run keeps what it finished.
``--threads`` sets both sides' threads (default 1: a per-core comparison).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import git_revision, load_results, setup_logging, write_results  # noqa: E402

logger = logging.getLogger("benchmarks.vs_autoattack")

MODELS = ("mnist_resnet20", "mnist_resnet20_pgdat")
#: AutoAttack's stage names (its log) and ours (the recipe's labels), in order.
REF_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
TOLERANCE = 1e-4


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {text!r}")
        return value
    return parse


def _eps_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--eps must be comma-separated budgets in (0, 1], got {text!r}")
    return values


def _results_name(text: str) -> str:
    if not re.fullmatch(r"autoattack(-[a-z0-9_]+)?", text):
        raise argparse.ArgumentTypeError(f"--name must be autoattack or autoattack-SUFFIX (a-z, 0-9, _), got {text!r}")
    return text


def _model_list(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in MODELS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--models must name some of {', '.join(MODELS)}, got {text!r}")
    return names


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=_positive_int("--limit"), default=200, help="held-out digits (default 200)")
    parser.add_argument("--eps", type=_eps_list, default=[0.1, 0.3], help="L-inf budgets (default 0.1,0.3)")
    parser.add_argument("--models", type=_model_list, default=list(MODELS), help="bundled configs (default both)")
    parser.add_argument("--threads", type=_positive_int("--threads"), default=1,
                        help="threads of each side: torch.set_num_threads and OMP_NUM_THREADS (default 1)")
    parser.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500,
                        help="batch size of both sides (default 500)")
    parser.add_argument("--out", default="benchmarks/results", help="directory of the results file")
    parser.add_argument("--name", type=_results_name, default="autoattack",
                        help="results file NAME.json: autoattack (default) or autoattack-SUFFIX for a partial run")
    parser.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="Python of the project's environment, which runs gluon_robust (default .venv)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other (model, eps) rows of an existing autoattack.json of the same revision")
    parser.add_argument("--dump", nargs=2, metavar=("CONFIG", "NPZ"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- MXNet side (the project's venv)


def dump_mxnet(config_name: str, limit: int, path: str) -> None:
    """Write the digits, gluon_robust's logits and the raw ``.params`` arrays of a bundled model to ``path``."""
    import mxnet as mx

    from gluon_robust.config import load_config
    from gluon_robust.data import load_data
    from gluon_robust.model import load_classifier

    config = load_config(config_name)
    model = load_classifier(config)
    x, y = load_data("mnist-sample", split="test", limit=limit).arrays()
    logits = model.predict(x)
    params = {f"param:{k}": v.asnumpy() for k, v in mx.nd.load(str(config.params)).items()}
    meta = {"mean": list(config.mean), "std": list(config.std), "bounds": list(config.bounds),
            "describe": model.describe()}
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, y=y, logits=logits, meta=json.dumps(meta), **params)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- PyTorch twin


def torch_twin(params: Dict[str, np.ndarray], mean: Sequence[float], std: Sequence[float], classes: int):
    """GluonCV's ``cifar_resnet20_v1`` (He et al. 2016, CIFAR ResNet-20) in plain PyTorch, loaded by name.

    The module tree copies the Gluon block tree (``features.3.0.body.1`` is the
    same layer on both sides), so each ``.params`` name maps to one torch name,
    with Gluon's BatchNorm ``gamma``/``beta`` as torch's ``weight``/``bias``.
    BatchNorm folded into the convolutions (a ``bias`` on a conv) is taken too.
    Every torch parameter and buffer must be set from the file, and every file
    entry must be used, or this raises.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-5), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-5),
            )
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x):
            residual = x if self.downsample is None else self.downsample(x)
            return torch.relu(self.body(x) + residual)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cin = params["features.0.weight"].shape[1]
            # GluonCV's CIFARResNetV1 has no activation after the stem's BatchNorm; the twin copies that.
            layers: List[nn.Module] = [nn.Conv2d(cin, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16, eps=1e-5)]
            channels = 16
            for width, stride in ((16, 1), (32, 2), (64, 2)):
                layers.append(nn.Sequential(*[Block(channels if i == 0 else width, width, stride if i == 0 else 1)
                                              for i in range(3)]))
                channels = width
            layers.append(nn.AdaptiveAvgPool2d(1))
            self.features = nn.Sequential(*layers)
            self.output = nn.Linear(64, classes)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

        def forward(self, x):
            return self.output(self.features((x - self.mean) / self.std).flatten(1))

    net = Net()
    state = net.state_dict()
    rename = {"gamma": "weight", "beta": "bias"}
    loaded = {}
    for name, value in params.items():
        head, _, leaf = name.rpartition(".")
        target = f"{head}.{rename.get(leaf, leaf)}"
        if target not in state:
            # BatchNorm folded into the previous conv: Gluon names the bias of conv k as features...k.bias.
            if leaf == "bias" and f"{head}.weight" in state and state[f"{head}.weight"].dim() == 4:
                raise SystemExit(f"vs_autoattack: {name} is a folded conv bias; the twin expects unfolded params")
            raise SystemExit(f"vs_autoattack: parameter {name!r} has no counterpart {target!r} in the PyTorch twin")
        if tuple(state[target].shape) != tuple(value.shape):
            raise SystemExit(f"vs_autoattack: {name} has shape {value.shape}, the twin's {target} "
                             f"{tuple(state[target].shape)}")
        loaded[target] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = [k for k in state
               if k not in loaded and not k.endswith("num_batches_tracked") and k not in ("mean", "std")]
    if missing:
        raise SystemExit(f"vs_autoattack: the .params file does not set {missing[:5]} of the PyTorch twin")
    loaded.update(mean=state["mean"], std=state["std"])
    net.load_state_dict(loaded, strict=False)
    return net.eval()


# --------------------------------------------------------------------------- reference AutoAttack


class _Collect(logging.Handler):
    """Keeps the messages of AutoAttack's ``auto-attack`` logger (it reports each stage at DEBUG level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_reference(net, x: np.ndarray, y: np.ndarray, eps: float, batch_size: int) -> Dict[str, Any]:
    """Reference AutoAttack, version ``standard``, L-inf, seed 0: per-stage robust accuracy, seconds, final mask."""
    import torch
    from pyautoattack import AutoAttack

    collect = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(collect)
    aa_logger.setLevel(logging.DEBUG)
    aa_logger.propagate = False
    try:
        adversary = AutoAttack(net, norm="Linf", eps=eps, version="standard", device="cpu", seed=0)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        start, cpu = time.perf_counter(), time.process_time()
        x_adv, _ = adversary.run_standard_evaluation(xt, yt, batch_size=batch_size)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    finally:
        aa_logger.removeHandler(collect)
    with torch.no_grad():
        robust = (net(x_adv).argmax(1) == yt).numpy()
    if float((x_adv - xt).abs().max()) > eps + 1e-5:
        raise SystemExit(f"vs_autoattack: reference AutoAttack left the eps {eps} ball")
    stages = parse_reference_log(collect.lines, float(robust.mean()))
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "stages": stages, "robust": robust}


_AFTER = re.compile(r"robust accuracy after (\S+): ([0-9.]+)% \(total time ([0-9.]+) s\)")


def parse_reference_log(lines: Sequence[str], final: float) -> List[Dict[str, Any]]:
    """The stages from AutoAttack's messages: robust accuracy after each (over all digits) and its seconds.

    AutoAttack stops when no digit is left robust; the stages it skipped get
    the final accuracy and 0 seconds.
    """
    found = {}
    previous = 0.0
    for line in lines:
        match = _AFTER.search(line)
        if match:
            total = float(match.group(3))
            found[match.group(1).lower()] = (float(match.group(2)) / 100, total - previous)
            previous = total
    if not found:
        raise SystemExit("vs_autoattack: no per-stage line in reference AutoAttack's log (its format changed?)")
    return [{"stage": stage, "robust_accuracy_after": found.get(stage, (final, 0.0))[0],
             "seconds": found.get(stage, (final, 0.0))[1], "skipped": stage not in found} for stage in REF_STAGES]


# --------------------------------------------------------------------------- gluon_robust


def run_ours(python: str, config: str, eps: float, limit: int, batch_size: int, out_dir: Path,
             env: Dict[str, str]) -> Dict[str, Any]:
    """``gluon-robust evaluate --recipe standard`` in the project's environment; stages, seconds, final mask."""
    command = [python, "-m", "gluon_robust.cli", "evaluate", "--config", config, "--data", "mnist-sample",
               "--split", "test", "--limit", str(limit), "--recipe", "standard", "--eps", f"{eps:g}",
               "--batch-size", str(batch_size), "--seed", "0", "--out", str(out_dir), "--no-progress"]
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall, cpu_seconds = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"vs_autoattack: gluon-robust evaluate failed ({done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    report = json.loads((out_dir / "report.json").read_text())
    key = f"linf@{eps:g}"
    stages = [{"stage": a["name"], "robust_accuracy_after": a["cumulative_robust_accuracy"],
               "seconds": a["seconds"], "attacked": a["attacked"], "broken": a["broken"]} for a in report["attacks"]]
    robust = np.array([row["robust"][key] for row in sorted(report["per_sample"], key=lambda r: r["index"])])
    return {"seconds": sum(s["seconds"] for s in stages), "process_seconds": wall, "cpu_seconds": cpu_seconds,
            "stages": stages,
            "robust": robust, "clean_accuracy": report.get("clean_accuracy")}


# --------------------------------------------------------------------------- main


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _thread_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        env[name] = str(threads)
    env["MXNET_CPU_WORKER_NTHREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _table(results: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for key, entry in results.items():
        ref, ours = entry["reference"], entry["gluon_robust"]
        rows.append([entry["model"], f"{entry['eps']:g}", f"{100 * ref['robust_accuracy']:.1f}%",
                     f"{100 * ours['robust_accuracy']:.1f}%", f"{100 * entry['agreement']:.1f}%",
                     f"{ref['seconds']:.0f}", f"{ours['process_seconds']:.0f}", f"{entry['time_ratio']:.2f}",
                     f"{entry['attack_time_ratio']:.2f}", f"{entry['cpu_time_ratio']:.2f}"])
    return rows


HEADER = ["model", "eps", "AutoAttack", "gluon_robust", "agreement", "ref s", "ours s", "wall ours/ref",
          "attacks ours/ref", "CPU ours/ref"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.dump:
        dump_mxnet(args.dump[0], args.limit, args.dump[1])
        return 0
    setup_logging()
    logger.info("arguments: %s", vars(args))
    if not Path(args.ours_python).is_file():
        raise SystemExit(f"vs_autoattack: --ours-python {args.ours_python!r} is not a file (run make install)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import pyautoattack
    import torch

    torch.set_num_threads(args.threads)
    revision = git_revision()  # at start: the code that runs is the code of this moment
    env = _thread_env(args.threads)
    name = args.name
    results: Dict[str, Any] = {}
    if args.update:
        results = dict(load_results(args.out, name, revision).get("results", {}))
    versions_ref = {"pyautoattack": getattr(pyautoattack, "__version__", "0.2.0"), "torch": torch.__version__}
    settings = {"limit": args.limit, "threads": args.threads, "batch_size": args.batch_size, "norm": "linf",
                "recipe": "standard", "reference": "AutoAttack(version='standard', norm='Linf', seed=0)",
                "data": "mnist-sample test split, first --limit digits"}

    with tempfile.TemporaryDirectory(prefix="vs_autoattack_") as tmp:
        tmp = Path(tmp)
        for config in args.models:
            dump = tmp / f"{config}.npz"
            done = subprocess.run([args.ours_python, str(Path(__file__).resolve()), "--dump", config, str(dump),
                                   "--limit", str(args.limit)], env=env, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"vs_autoattack: loading {config} in {args.ours_python} failed: "
                                 f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            with np.load(dump) as data:
                x, y, logits = data["x"], data["y"], data["logits"]
                meta = json.loads(str(data["meta"]))
                params = {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")}
            net = torch_twin(params, meta["mean"], meta["std"], logits.shape[1])
            with torch.no_grad():
                twin = net(torch.from_numpy(x)).numpy()
            gap = float(np.abs(twin - logits).max())
            if not gap <= TOLERANCE:
                raise SystemExit(f"vs_autoattack: the PyTorch twin of {config} differs from gluon_robust by {gap:.2e} "
                                 f"in the logits (tolerance {TOLERANCE:g})")
            logger.info("%s: PyTorch twin agrees with gluon_robust, max |logit gap| %.2e", config, gap)
            clean = logits.argmax(1) == y
            for eps in args.eps:
                logger.info("%s eps %g: reference AutoAttack", config, eps)
                ref = run_reference(net, x, y, eps, args.batch_size)
                logger.info("%s eps %g: reference %.1f%% in %.0f s; gluon_robust evaluate --recipe standard", config,
                            eps, 100 * ref["robust"].mean(), ref["seconds"])
                ours = run_ours(args.ours_python, config, eps, args.limit, args.batch_size, tmp / f"{config}_{eps:g}",
                                env)
                logger.info("%s eps %g: ours %.1f%% in %.0f s", config, eps, 100 * ours["robust"].mean(),
                            ours["seconds"])
                if len(ours["robust"]) != len(x):
                    raise SystemExit(f"vs_autoattack: ours evaluated {len(ours['robust'])} digits, not {len(x)}")
                results[f"{config}@{eps:g}"] = {
                    "model": config, "eps": eps, "n": int(len(x)), "clean_accuracy": float(clean.mean()),
                    "logit_gap": gap,
                    "reference": {"robust_accuracy": float(ref["robust"].mean()), "seconds": ref["seconds"],
                                  "cpu_seconds": ref["cpu_seconds"], "stages": ref["stages"]},
                    "gluon_robust": {"robust_accuracy": float(ours["robust"].mean()), "seconds": ours["seconds"],
                                     "process_seconds": ours["process_seconds"], "cpu_seconds": ours["cpu_seconds"],
                                     "stages": ours["stages"]},
                    "agreement": float((ref["robust"] == ours["robust"]).mean()),
                    "robust_only_reference": int((ref["robust"] & ~ours["robust"]).sum()),
                    "robust_only_ours": int((~ref["robust"] & ours["robust"]).sum()),
                    # wall: the whole evaluate process against the run_standard_evaluation call;
                    # attack: the attack stages' own seconds on both sides.
                    "time_ratio": ours["process_seconds"] / ref["seconds"],
                    "attack_time_ratio": ours["seconds"] / max(sum(s["seconds"] for s in ref["stages"]), 1e-9),
                    # CPU seconds of the evaluate process against those of the call: robust to a busy machine.
                    "cpu_time_ratio": ours["cpu_seconds"] / max(ref["cpu_seconds"], 1e-9),
                }
                write_results(args.out, name, {"settings": settings, "reference_versions": versions_ref,
                                               "results": results},
                              _table(results), HEADER, revision=revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""PGD-10 side by side: gluon_robust (MXNet) against PyTorch eager (torchattacks) and torch.compile.

For each model the same GluonCV architecture runs on both sides with the same
weights (ported by parameter name, ``weight_port.py``; logits checked to
``--logit-tol`` of the logit scale) and the same inputs:

* ``mnist_resnet20``: the bundled model (GluonCV ``cifar_resnet20_v1`` trained
  on 1x28x28 digits) on the first bundled test digits;
* ``resnet50_v1b`` and ``mobilenetv2_1.0`` at 3x224x224: GluonCV's networks
  with fixed random weights (pretrained ones cannot be downloaded here) and
  random positive BatchNorm statistics, on uniform random images.

Three contestants time L-inf PGD (Madry et al. 2018,
https://arxiv.org/abs/1706.06083), eps 8/255, step 2/255, 10 steps, random
start, on the same batch:

* ``ours``: ``gluon_robust.attacks.PGD`` on the folded, hybridised classifier
  that ``load_classifier`` builds (its two extra forwards, the best-restart
  score and the final prediction, are included);
* ``torchattacks``: ``torchattacks.PGD`` (3.5.1) on the eager twin in eval mode;
* ``compiled``: the same PGD loop in plain torch with the twin under
  ``torch.compile`` (compilation in the warm-up, reported apart).

Each contestant lives in its own worker process (MXNet in this interpreter's
environment, torch in ``--torch-python``'s, since GluonCV refuses to import
next to torch >= 2), so each has its own peak RSS. Repeats are interleaved
(ours, torchattacks, compiled, ours, ...) and medians reported; the JSON
records the load average at the start and the end, and each run's CPU time
over wall time (the cores it kept busy). Every process gets ``--threads``
OpenMP/MKL threads.

Writes ``benchmarks/results/vs_torch.json`` (one entry per thread count and
model, merged into the file, each with the load average before and after it) and, with ``--readme``, the table between the
``vs-torch`` markers. ``--table-only`` regenerates the table from the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

logger = logging.getLogger("benchmarks.vs_torch")

#: model -> (GluonCV architecture, input size, classes, mean, std).
MODELS: Dict[str, tuple] = {
    "mnist_resnet20": ("cifar_resnet20_v1", (1, 28, 28), 10, [0.1307], [0.3081]),
    "resnet50_v1b": ("resnet50_v1b", (3, 224, 224), 1000, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "mobilenetv2_1.0": ("mobilenetv2_1.0", (3, 224, 224), 1000, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
CONTESTANTS = ("ours", "torchattacks", "compiled")
EPS, ALPHA = 8 / 255, 2 / 255
START, END = "<!-- vs-torch:start -->", "<!-- vs-torch:end -->"
DEFAULT_TORCH_PYTHON = HERE / ".venv-autoattack" / "bin" / "python"


# ---------------------------------------------------------------- workers
def _usage() -> Dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": r.ru_utime + r.ru_stime, "peak_rss_mb": r.ru_maxrss / 1024.0}


def _timed(fn) -> Dict[str, float]:
    before, start = _usage(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return {"seconds": wall, "cpu_per_wall": (_usage()["cpu_s"] - before["cpu_s"]) / wall}


class MXNetWorker:
    """Builds the GluonCV net and the gluon_robust classifier; writes weights, inputs and logits for the twins."""

    def setup(self, model: str, batch: int, seed: int, workdir: str) -> Dict[str, Any]:
        import gluon_robust  # noqa: F401 -- first: it sets glibc's allocator before MXNet runs an operator
        import mxnet as mx
        from gluoncv.model_zoo import get_model

        from gluon_robust.attacks import PGD
        from gluon_robust.data import load_data
        from gluon_robust.model import load_classifier

        arch, size, classes, mean, std = MODELS[model]
        mx.random.seed(seed)
        rng = np.random.default_rng(seed)
        if model == "mnist_resnet20":
            net = get_model(arch, classes=classes)
            net.load_parameters(str(REPO / "gluon_robust" / "model_configs" / "mnist_resnet20.params"), ctx=mx.cpu())
            x, _ = load_data("mnist-sample", split="test", limit=batch).arrays()
            x = x.astype(np.float32)
        else:
            net = get_model(arch, classes=classes)
            net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
            net(mx.nd.zeros((1,) + size))
            for name, param in net._collect_params_with_prefix().items():
                shape = param.shape
                if name.endswith("running_var"):
                    param.set_data(mx.nd.array(rng.uniform(0.5, 2.0, shape)))
                elif name.endswith("running_mean"):
                    param.set_data(mx.nd.array(rng.uniform(0.05, 0.5, shape)))
                elif name.endswith("gamma"):
                    param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, shape)))
                elif name.endswith("beta"):
                    param.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, shape)))
            x = rng.uniform(0.0, 1.0, (batch,) + size).astype(np.float32)
        gluon = {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}
        self.model = load_classifier(net, classes=classes, mean=mean, std=std, input_size=size)
        logits = self.model.predict(x)
        y = logits.argmax(axis=1).astype(np.int64) if model != "mnist_resnet20" else \
            load_data("mnist-sample", split="test", limit=batch).arrays()[1].astype(np.int64)
        self.x, self.y = x, y
        self.pgd = PGD
        path = os.path.join(workdir, f"{model}.npz")
        np.savez(path, x=x, y=y, logits=logits, **{"param:" + k: v for k, v in gluon.items()})
        return {"npz": path, "params": len(gluon), "folded": bool(self.model.folded)}

    def run(self, steps: int, seed: int = 0) -> Dict[str, float]:
        attack = self.pgd(eps=EPS, steps=steps, step_size=ALPHA, random_start=True, seed=seed)
        return _timed(lambda: attack(self.model, self.x, self.y))


class TorchWorker:
    """The twin in eager mode (torchattacks) or under torch.compile (a plain PGD loop)."""

    def __init__(self, mode: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.mode = mode

    def setup(self, model: str, npz: str) -> Dict[str, Any]:
        import torch

        from torch_twins import load_twin

        arch, size, classes, mean, std = MODELS[model]
        data = np.load(npz)
        gluon = {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")}
        self.net = load_twin(arch, gluon, mean, std, in_channels=size[0], classes=classes)
        self.x = torch.from_numpy(data["x"])
        self.y = torch.from_numpy(data["y"])
        with torch.no_grad():
            logits = self.net(self.x).numpy()
        reference = data["logits"]
        scale = float(np.abs(reference).max())
        out = {"logit_scale": scale, "logit_max_abs_diff": float(np.abs(logits - reference).max()),
               "same_argmax": bool((logits.argmax(1) == reference.argmax(1)).all()), "torch": torch.__version__}
        if self.mode == "torchattacks":
            import torchattacks

            out["torchattacks"] = torchattacks.__version__
        else:
            self.compiled = torch.compile(self.net)
        return out

    def _loop(self, steps: int, seed: int) -> Any:
        import torch
        from torch.nn import functional as F

        x, y = self.x, self.y
        generator = torch.Generator().manual_seed(seed)
        x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=generator)).clamp(0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(self.compiled(x_adv), y)
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + ALPHA * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
        return x_adv

    def run(self, steps: int, seed: int = 0) -> Dict[str, float]:
        if self.mode == "torchattacks":
            import torch
            import torchattacks

            torch.manual_seed(seed)
            attack = torchattacks.PGD(self.net, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
            return _timed(lambda: attack(self.x, self.y))
        return _timed(lambda: self._loop(steps, seed))


def worker_main(mode: str, threads: int) -> None:
    """Serve JSON-line requests on stdin: {"op": "setup"|"run"|"usage", ...}; answer on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    worker = MXNetWorker() if mode == "ours" else TorchWorker(mode, threads)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            answer = _usage() if op == "usage" else getattr(worker, op)(**request)
            reply = {"ok": True, "result": answer}
        except Exception as error:  # the orchestrator reports it and stops
            logger.exception("worker %s failed on %s", mode, op)
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- orchestrator
class Worker:
    """One worker process, spoken to in JSON lines."""

    def __init__(self, mode: str, python: str, threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   MXNET_OMP_MAX_THREADS=str(threads), PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
        self.mode = mode
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", mode, "--threads",
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)

    def ask(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(dict(kwargs, op=op)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.mode} died (exit {self.proc.wait()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"worker {self.mode}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_model(model: str, args: argparse.Namespace, workdir: str) -> Dict[str, Any]:
    """Set up the three workers on one model, check the logits, time interleaved repeats."""
    batch = args.batch_size
    workers = {"ours": Worker("ours", sys.executable, args.threads)}
    try:
        setup = workers["ours"].ask("setup", model=model, batch=batch, seed=args.seed, workdir=workdir)
        checks = {}
        for mode in ("torchattacks", "compiled"):
            workers[mode] = Worker(mode, args.torch_python, args.threads)
            checks[mode] = workers[mode].ask("setup", model=model, npz=setup["npz"])
            relative = checks[mode]["logit_max_abs_diff"] / max(checks[mode]["logit_scale"], 1e-12)
            checks[mode]["relative_diff"] = relative
            if relative > args.logit_tol:
                raise RuntimeError(f"{model}: the torch twin's logits differ by {relative:.2e} of the logit scale "
                                   f"(tolerance {args.logit_tol:g})")
        logger.info("%s: %d parameters ported, logits agree to %.1e of the scale", model, setup["params"],
                    checks["compiled"]["relative_diff"])
        warmup = {mode: w.ask("run", steps=args.warmup_steps) for mode, w in workers.items()}
        samples: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in CONTESTANTS}
        for repeat in range(args.repeats):
            for mode in CONTESTANTS:
                sample = workers[mode].ask("run", steps=args.steps, seed=repeat)
                samples[mode].append(sample)
                logger.info("%s %s repeat %d: %.2f s", model, mode, repeat, sample["seconds"])
        usage = {mode: w.ask("usage") for mode, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()

    arch, size, *_ = MODELS[model]
    image_steps = batch * args.steps
    out: Dict[str, Any] = {"arch": arch, "input": list(size), "batch": batch, "steps": args.steps,
                           "logit_check": checks["compiled"], "contestants": {}}
    for mode in CONTESTANTS:
        seconds = [s["seconds"] for s in samples[mode]]
        out["contestants"][mode] = {
            "ms_per_image_step": 1000 * statistics.median(seconds) / image_steps,
            "seconds": seconds,
            "cpu_per_wall": statistics.median(s["cpu_per_wall"] for s in samples[mode]),
            "peak_rss_mb": usage[mode]["peak_rss_mb"],
            "warmup_s": warmup[mode]["seconds"],
        }
    ours = out["contestants"]["ours"]["ms_per_image_step"]
    out["ratios"] = {f"ours/{mode}": ours / out["contestants"][mode]["ms_per_image_step"]
                     for mode in CONTESTANTS[1:]}
    return out


# ---------------------------------------------------------------- table
def _revision_text(revision: Optional[Dict[str, Any]]) -> str:
    """A row's commit, short, marked when its code was dirty; "not recorded" for rows older than the column."""
    if not isinstance(revision, dict) or not revision.get("commit"):
        return "not recorded"
    return revision["commit"][:7] + ("+dirty" if revision.get("code_dirty", revision.get("dirty")) else "")


def markdown(payload: Dict[str, Any]) -> str:
    """The README table of a ``vs_torch.json`` payload: one row per thread count and model."""
    lines = ["| threads | model | input | batch | ours ms/img-step | torchattacks | torch.compile | "
             "ours ÷ torchattacks | ours ÷ compile | peak RSS MiB (ours / eager / compile) | revision |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for threads in sorted(payload["runs"], key=int):
        run = payload["runs"][threads]
        for model, row in run["models"].items():
            c = row["contestants"]
            lines.append(
                f"| {threads} | {model} | {'x'.join(map(str, row['input']))} | {row['batch']} | "
                f"{c['ours']['ms_per_image_step']:.2f} | {c['torchattacks']['ms_per_image_step']:.2f} | "
                f"{c['compiled']['ms_per_image_step']:.2f} | {row['ratios']['ours/torchattacks']:.2f} | "
                f"{row['ratios']['ours/compiled']:.2f} | {c['ours']['peak_rss_mb']:.0f} / "
                f"{c['torchattacks']['peak_rss_mb']:.0f} / {c['compiled']['peak_rss_mb']:.0f} | "
                f"{_revision_text(row.get('revision'))} |")
    return "\n".join(lines)


def update_readme(readme: Path, table: str, start: str = START, end: str = END) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``readme`` with ``table``."""
    from gluon_robust.io import atomic_write_text

    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{table}\n{end}{tail}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/MKL/torch threads of every worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logit-tol", type=float, default=1e-4, help="max |logit diff| / max |logit|")
    parser.add_argument("--torch-python", default=str(DEFAULT_TORCH_PYTHON), help="python of the torch venv")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--readme", help="README whose vs-torch table is replaced")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the table from the JSON")
    parser.add_argument("--note", default="", help="free text stored with the run (e.g. a reduced configuration)")
    parser.add_argument("--worker", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("batch_size", "steps", "repeats", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.threads)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from common import git_revision, write_results

    path = Path(args.out) / "vs_torch.json"
    payload = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if not args.table_only:
        if not Path(args.torch_python).exists():
            raise SystemExit(f"--torch-python: {args.torch_python} does not exist; run `make bench-torch`")
        run: Dict[str, Any] = payload["runs"].setdefault(str(args.threads), {"models": {}})
        run.update(eps=EPS, step_size=ALPHA)
        revision = git_revision()  # at the start: the code that is measured
        with tempfile.TemporaryDirectory() as workdir:
            for model in args.models.split(","):
                load_start, started = list(os.getloadavg()), time.perf_counter()
                row = bench_model(model, args, workdir)
                # Rows of several runs share this file: each keeps the revision it measured.
                row.update(revision=revision, repeats=args.repeats, note=args.note, load_average_start=load_start,
                           load_average_end=list(os.getloadavg()), wall_s=time.perf_counter() - started)
                run["models"][model] = row
                rows = [[args.threads, model, f"{row['contestants']['ours']['ms_per_image_step']:.2f}",
                         f"{row['contestants']['torchattacks']['ms_per_image_step']:.2f}",
                         f"{row['contestants']['compiled']['ms_per_image_step']:.2f}",
                         f"{row['ratios']['ours/torchattacks']:.2f}", f"{row['ratios']['ours/compiled']:.2f}"]]
                write_results(args.out, "vs_torch", {"runs": payload["runs"]}, rows,  # after each model
                              ["threads", "model", "ours ms", "torchattacks ms", "compiled ms", "/ta", "/compiled"])
    if args.readme:
        update_readme(Path(args.readme), markdown(payload))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Compatibility matrix of the GluonCV classification zoo: every classifier, proven.

Which names: every name of ``gluoncv.model_zoo.get_model_list()`` whose task is
image classification by :func:`gluon_robust.zoo.zoo_task` (the GluonCV module that
defines the constructor decides; detection, segmentation, pose, action, depth and
tracking names are excluded and listed in the JSON with their task).

Per network, at its family's input size (:func:`gluon_robust.config.family_defaults`),
in a subprocess of its own (a crash or a hang costs one row, not the sweep):

1. build the GluonCV net with ``pretrained=False`` and fixed random weights
   (Xavier, seeded), calibrate every BatchNorm's running statistics on a few random
   batches (each layer gets the mean and variance of its own input, so no net is
   degenerate) and randomise gamma and beta, then save the weights;
2. load it through ``load_classifier(NAME, params=FILE)``, the path of ``--model NAME
   --params FILE`` (BatchNorm folded);
3. ``logits_rel_err``: folded logits against the unfolded GluonCV net's eval-mode
   logits on two random images, max absolute difference over the max absolute logit;
   both run in float64 where the net can (``logits_dtype``), which measures the fold
   apart from float32 rounding; ``logits_rel_err_float32`` is the float32 folded
   model (the one attacks use) against the float32 unfolded net;
4. ``grad_rel_err``: the folded model's input gradient of ``w . logits`` (``w``
   random; the attacks' own :func:`gluon_robust.attacks.base.input_gradient`), computed
   in the finite differences' dtype, against central finite differences of the unfolded
   GluonCV net cast to float64, on random coordinates plus the two largest, as the max
   absolute difference over the max absolute finite difference; ``grad_rel_err_float32``
   is the float32 gradient the attacks use (rows written before it existed were judged
   on that float32 gradient, a stricter test);
5. one PGD step through the CLI: ``gluon_robust.cli.main(["attack", "--model", NAME,
   "--params", FILE, "--data", "npz:FILE", ...])`` on two images;
6. forward plus input-backward time of the folded model at batch 1, and the
   parameter count.

A net is **supported** when the logits agree within 1e-4 (or, for a net so deep that
float32 rounding of its weights alone moves its float64 logits further, within
``ROUNDING_FACTOR`` times that ``logits_rounding_floor``), the gradient within 5e-2
and PGD runs; **refused** when :func:`gluon_robust.zoo.refusal_reason` names a reason
(the CLI is run and must print it); anything else is **failed**, with the stage and
the error. The JSON is rewritten after every net, so the sweep can be resumed with
``--update`` and parts re-run with ``--only``. ``--markdown`` writes ``docs/zoo.md``
from the JSON.

Examples
--------
    nice -n 10 env OMP_NUM_THREADS=1 MXNET_OMP_MAX_THREADS=1 python benchmarks/zoo_matrix.py --update
    python benchmarks/zoo_matrix.py --only resnet50_v1b_gn,nasnet_4_1056
    python benchmarks/zoo_matrix.py --markdown docs/zoo.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from gluon_robust.io import atomic_write_json, atomic_write_text  # noqa: E402

LOGITS_TOL = 1e-4
GRAD_TOL = 5e-2
FD_STEP = {"float64": 1e-5, "float32": 3e-3}  # pixel units; float32 only where a layer has no float64 kernel
ROUNDING_FACTOR = 4.0  # the logits tolerance is at least this many times the net's float32 rounding floor
RANDOM_COORDS = 2
CALIBRATION_BATCHES = 3
CALIBRATION_BATCH_SIZE = 2
RESULT_MARK = "ZOO_MATRIX_ROW "

logger = logging.getLogger("benchmarks.zoo_matrix")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "zoo_matrix.json"), help="results JSON")
    parser.add_argument("--only", help="comma-separated names to (re-)run; their rows replace the old ones")
    parser.add_argument("--update", action="store_true", help="skip names that already have a row (resume)")
    parser.add_argument("--jobs", type=int, default=1, help="networks checked at the same time (default 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per network before it is failed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", nargs="?", const=str(REPO / "docs" / "zoo.md"), metavar="PATH",
                        help="write the Markdown table from the JSON (default docs/zoo.md) and exit")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ one network
def calibrate_batchnorm(net: Any, shape: Tuple[int, ...], rng: np.random.RandomState) -> int:
    """Set each BatchNorm's running statistics from its own input on random batches; randomise gamma, beta.

    Layer by layer in forward order (a pre-hook sets the statistics before the layer
    runs in eval mode), the running mean and variance become those of the layer's
    input over ``CALIBRATION_BATCHES`` random batches (variance floored, see below): far from 0 and 1, so a fold
    that mishandled a statistic would show, while eval-mode activations stay of order
    one through any depth (no degenerate or exploding net). Gamma and beta are random.
    Returns the number of layers calibrated.
    """
    import mxnet as mx

    layers = [b for b in _descendants(net) if hasattr(b, "running_mean") and hasattr(b, "running_var")]
    if not layers:
        return 0
    for block in layers:
        for pname in ("gamma", "beta"):
            param = getattr(block, pname, None)
            if param is not None and param.shape and all(param.shape):
                scale = rng.uniform(0.5, 1.5, param.shape) if pname == "gamma" else rng.normal(0, 0.2, param.shape)
                param.set_data(mx.nd.array(scale))
    batch = mx.nd.array(rng.uniform(0, 1, (CALIBRATION_BATCHES * CALIBRATION_BATCH_SIZE,) + tuple(shape[1:])))
    batch = (batch - 0.45) / 0.225

    def calibrate(block: Any, inputs: Any) -> None:
        x = inputs[0].asnumpy().astype(np.float64)
        axis = int(block._kwargs.get("axis", 1)) % x.ndim
        other = tuple(a for a in range(x.ndim) if a != axis)
        mean, var = x.mean(axis=other), x.var(axis=other)
        # Random images give nearly equal features after a global pooling (ResNeSt's split
        # attention), so the batch variance is tiny and eval mode would blow their differences
        # up block after block until the net is chaotic (a 1e-12 change of the input moved
        # resnest200's float64 logits by 0.2%). On pooled (1x1) inputs the variance is floored
        # at each channel's second moment, so such a layer never amplifies; elsewhere at 1% of
        # the layer's typical second moment (and at 1e-2, for dead channels).
        second = (x ** 2).mean(axis=other)
        pooled = all(x.shape[a] == 1 for a in other if a != 0)
        var = np.maximum(var, second if pooled else 0.0)
        var = np.maximum(var, max(1e-2 * float(np.median(second)), 1e-2))
        block.running_mean.set_data(mx.nd.array(mean))
        block.running_var.set_data(mx.nd.array(var))

    handles = [block.register_forward_pre_hook(calibrate) for block in layers]
    try:
        net(batch)
    finally:
        for handle in handles:
            handle.detach()
    return len(layers)


def _descendants(block: Any) -> List[Any]:
    out = [block]
    for child in block._children.values():
        out += _descendants(child)
    return out


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (list, tuple)) else out


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = next((line for line in lines if "Check failed" in line or "Error" in line), lines[-1] if lines else "")
    return f"{type(err).__name__}: {text}"[:400]


def _cli(argv: List[str]) -> Tuple[int, str, str]:
    """Run ``gluon_robust.cli.main(argv)``; return the exit status, stdout and stderr."""
    from gluon_robust.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


def check_refused(name: str, reason: str, workdir: Path) -> Dict[str, Any]:
    """A refused name: the CLI must stop with the reason on stderr."""
    rc, _, err = _cli(["attack", "--model", name, "--data", "mnist-sample", "--attack", "pgd", "--steps", "1",
                       "--eps", "8/255", "--out", str(workdir / "attack")])
    printed = err.strip().splitlines()[-1] if err.strip() else ""
    row: Dict[str, Any] = {"status": "refused", "reason": reason, "cli_message": printed, "cli_exit": rc}
    if rc == 0 or reason not in printed:
        row.update(status="failed", stage="refusal", error=f"the CLI did not print the refusal (exit {rc}): {printed}")
    return row


def check_network(name: str, workdir: Path, seed: int) -> Dict[str, Any]:
    """Every check of one zoo classifier; returns its row."""
    import mxnet as mx

    from gluon_robust.attacks.base import input_gradient
    from gluon_robust.config import family_defaults
    from gluon_robust.model import load_classifier
    from gluon_robust.zoo import build_zoo_net, refusal_reason

    reason = refusal_reason(name)
    if reason is not None:
        return check_refused(name, reason, workdir)
    defaults = family_defaults(name)
    size, classes = tuple(defaults["input_size"]), int(defaults["classes"])
    row: Dict[str, Any] = {"input_size": list(size), "classes": classes}
    stage = "build"
    start = time.perf_counter()
    try:
        rng = np.random.RandomState(seed)
        mx.random.seed(seed)
        net = build_zoo_net(name, classes, pretrained=False, ctx=mx.cpu())
        net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
        shape = (1,) + size
        out = net(mx.nd.zeros(shape))
        row["outputs"] = len(out) if isinstance(out, (list, tuple)) else 1
        row["calibrated_batchnorms"] = calibrate_batchnorm(net, shape, rng)
        row["params"] = int(sum(int(np.prod(p.shape)) for p in net.collect_params().values()))
        weights = workdir / "net.params"
        net.save_parameters(str(weights))

        stage = "load"
        model = load_classifier(name, params=str(weights))
        report = model.net.fold_report
        row["fold"] = {"folded": report.folded, "rewritten": report.rewritten,
                       "dropout_removed": report.dropout_removed, "mode_free": report.mode_free}
        mean = np.asarray(defaults["mean"], np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(defaults["std"], np.float64).reshape(1, -1, 1, 1)

        stage = "logits"
        x = rng.uniform(0.0, 1.0, (2,) + size).astype(np.float32)
        folded = model.predict(x)
        unfolded = _first(net(mx.nd.array((x - mean) / std, dtype="float32"))).asnumpy()
        scale = max(float(np.abs(unfolded).max()), 1e-30)
        row["logits_rel_err_float32"] = float(np.abs(folded - unfolded).max()) / scale
        row["logits_input_spread"] = float(np.abs(unfolded[0] - unfolded[1]).max()) / scale

        stage = "gradient"
        w = mx.nd.array(rng.normal(size=(1, classes)))
        x1 = mx.nd.array(x[:1])
        grad, _, _ = input_gradient(model, x1, mx.nd.zeros((1,)), None, lambda logits, y, t: (logits * w).sum(axis=1))
        g = grad.asnumpy()[0]
        coords = [tuple(int(rng.randint(0, s)) for s in size) for _ in range(RANDOM_COORDS)]
        coords += [tuple(int(i) for i in np.unravel_index(t, size)) for t in np.argsort(np.abs(g).ravel())[-2:]]
        fd, dtype = finite_differences(net, x[:1].astype(np.float64), mean, std, w.asnumpy()[0], coords)
        # Folded against unfolded in float64 where the net runs so: that is the fold's own error,
        # apart from float32 rounding (which alone is ~1e-4 of the logits in a deep random net).
        exact = _first(net(mx.nd.array((x - mean) / std, dtype=dtype))).asnumpy().astype(np.float64)
        folded_copy = load_classifier(name, params=str(weights), hybridize=False)
        folded_copy.cast(dtype)
        folded_exact = folded_copy(mx.nd.array(x, dtype=dtype)).asnumpy().astype(np.float64)
        row["logits_rel_err"] = float(np.abs(folded_exact - exact).max()) / max(float(np.abs(exact).max()), 1e-30)
        row["logits_dtype"] = dtype
        denom = float(np.abs(fd).max())
        if denom == 0.0:
            raise RuntimeError("degenerate network: every finite difference is zero")
        # The fold's gradient in the finite differences' dtype decides (like the logits); the
        # float32 gradient the attacks use is recorded beside it.
        exact_grad, _, _ = input_gradient(folded_copy, mx.nd.array(x[:1], dtype=dtype), mx.nd.zeros((1,)), None,
                                          lambda logits, y, t: (logits * w.astype(dtype)).sum(axis=1))
        g_exact = exact_grad.asnumpy()[0].astype(np.float64)
        analytic = np.array([g_exact[c] for c in coords], np.float64)
        analytic32 = np.array([g[c] for c in coords], np.float64)
        row.update(grad_rel_err=float(np.abs(analytic - fd).max()) / denom,
                   grad_rel_err_float32=float(np.abs(analytic32 - fd).max()) / denom, grad_dtype=dtype,
                   fd_dtype=dtype, fd_step=FD_STEP[dtype], fd_coords=len(coords), grad_max_abs=float(np.abs(g).max()))
        if dtype == "float64":
            row["logits_rounding_floor"] = rounding_floor(net, x, mean, std, exact, rng)

        stage = "pgd"
        labels = folded.argmax(axis=1).astype(np.int64)
        np.savez(workdir / "images.npz", x=x, y=labels)
        rc, stdout, err = _cli(["attack", "--model", name, "--params", str(weights), "--data",
                                f"npz:{workdir / 'images.npz'}", "--attack", "pgd", "--eps", "8/255", "--steps", "1",
                                "--batch-size", "2", "--seed", str(seed), "--out", str(workdir / "attack")])
        if rc != 0:
            raise RuntimeError(f"the CLI attack exited {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
        summary = json.loads(stdout)
        row["pgd"] = {k: summary[k] for k in ("n", "clean_accuracy", "robust_accuracy", "max_perturbation")}

        stage = "timing"
        from common import time_call

        def step() -> None:
            gr, _, _ = input_gradient(model, x1, mx.nd.zeros((1,)), None, lambda lg, y, t: (lg * w).sum(axis=1))
            gr.wait_to_read()

        row["fwd_bwd_ms"] = time_call(step, repeats=3, warmup=1)["median_ms"]
    except Exception as err:  # noqa: BLE001 -- the benchmark records any failure as a row
        logger.exception("%s failed at %s", name, stage)
        row.update(status="failed", stage=stage, error=_one_line(err))
        return row
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
    logits_tol = max(LOGITS_TOL, ROUNDING_FACTOR * row.get("logits_rounding_floor", 0.0))
    ok = (row["logits_rel_err"] <= logits_tol and row["grad_rel_err"] <= GRAD_TOL
          and row["pgd"]["n"] == len(x))
    row["status"] = "supported" if ok else "failed"
    if not ok:
        row.update(stage="tolerance", error=f"logits {row['logits_rel_err']:.2e} (tol {logits_tol:.2g}), gradient "
                                            f"{row['grad_rel_err']:.2e} (tol {GRAD_TOL:g}), PGD on {row['pgd']['n']}")
    return row


def rounding_floor(net: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, exact: np.ndarray,
                   rng: np.random.RandomState) -> float:
    """How far float32 rounding of the weights alone moves the float64 logits (relative, as ``logits_rel_err``).

    The folded weights are computed in float64 and stored in float32, so the fold can agree
    with the unfolded net no better than this: every weight of the unfolded (float64) net is
    multiplied by ``1 + u``, ``|u| <= 2**-24``, and the logits on ``x`` compared with ``exact``.
    The net's weights are left perturbed (call it last).
    """
    import mxnet as mx

    for param in net.collect_params().values():
        if param.name.endswith("weight"):
            value = param.data().asnumpy()
            param.set_data(mx.nd.array(value * (1 + rng.uniform(-2.0 ** -24, 2.0 ** -24, value.shape)),
                                       dtype=value.dtype))
    moved = _first(net(mx.nd.array((x - mean) / std, dtype="float64"))).asnumpy().astype(np.float64)
    return float(np.abs(moved - exact).max()) / max(float(np.abs(exact).max()), 1e-30)


def finite_differences(net: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, w: np.ndarray,
                       coords: List[Tuple[int, ...]]) -> Tuple[np.ndarray, str]:
    """Central differences of ``w . net((x - mean) / std)`` at ``coords`` of ``x[0]``, eval mode.

    The unfolded GluonCV net is cast to float64; where some layer has no float64
    kernel it stays float32 with a larger step. Returns the differences and the dtype.
    """
    import mxnet as mx

    for dtype in ("float64", "float32"):
        try:
            net.cast(dtype)

            def f(z: np.ndarray) -> float:
                logits = _first(net(mx.nd.array((z - mean) / std, dtype=dtype))).asnumpy().astype(np.float64)
                return float((logits[0] * w).sum())

            f(x)
        except mx.base.MXNetError as err:
            logger.warning("no %s forward (%s); trying float32", dtype, _one_line(err))
            continue
        h = FD_STEP[dtype]
        out = []
        for c in coords:
            plus, minus = x.copy(), x.copy()
            plus[(0,) + c] += h
            minus[(0,) + c] -= h
            out.append((f(plus) - f(minus)) / (2 * h))
        return np.array(out), dtype
    raise RuntimeError("the network runs in neither float64 nor float32")


def worker(name: str, seed: int) -> int:
    """Check one network and print its row (the subprocess side)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="zoo_matrix_") as tmp:
        row = check_network(name, Path(tmp), seed)
    print(RESULT_MARK + json.dumps(row), flush=True)
    return 0


# ------------------------------------------------------------------ the sweep
def run_one(name: str, seed: int, timeout: float) -> Dict[str, Any]:
    """Check ``name`` in a subprocess; a crash or a timeout becomes a failed row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--seed", str(seed)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "stage": "timeout", "error": f"no result within {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 1)}
    rows = [line[len(RESULT_MARK):] for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not rows:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [""]
        return {"status": "failed", "stage": "crash", "error": f"worker exited {proc.returncode}: {tail[0][:300]}",
                "seconds": round(time.perf_counter() - start, 1)}
    return json.loads(rows[-1])


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def metadata() -> Dict[str, Any]:
    import platform

    from gluon_robust.reporting import versions

    return {
        "revision": git_revision(),
        "cpu_count": os.cpu_count(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")},
        "platform": platform.platform(),
        "versions": versions(),
        "tolerances": {"logits_rel_err": LOGITS_TOL, "grad_rel_err": GRAD_TOL},
        "rule": "image classifiers are the names whose constructor GluonCV defines in an image-classification "
                "module (gluon_robust.zoo.zoo_task); the others are excluded with their task",
    }


def same_revision(row: Optional[str], current: str) -> bool:
    """Whether a row's recorded revision is this run's, both clean (``abc1234``, not ``abc1234+dirty``)."""
    return bool(row) and row == current and "+dirty" not in current and current != "unknown"


def load_results(path: Path) -> Dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"networks": {}}


def summarise(results: Dict[str, Any]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for row in results["networks"].values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))


def sweep(args: argparse.Namespace) -> int:
    from gluon_robust.zoo import classifier_names, zoo_names, zoo_task

    path = Path(args.out)
    results = load_results(path)
    names = classifier_names()
    excluded = [{"name": n, "task": zoo_task(n)} for n in zoo_names() if n not in set(names)]
    results["networks"] = {n: r for n, r in results["networks"].items() if n in set(names)}
    if args.only:
        wanted = [n.strip().lower() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"not classification names: {', '.join(unknown)}", file=sys.stderr)
            return 2
        todo = wanted
    else:
        todo = [n for n in names if not (args.update and n in results["networks"])]
    # A row of another revision (or of a dirty tree) is never kept next to new ones: --update re-checks it,
    # --only refuses to add rows to a file that holds such rows.
    current = git_revision()
    stale = sorted(n for n, r in results["networks"].items() if not same_revision(r.get("revision"), current))
    if args.only:
        kept_stale = [n for n in stale if n not in set(todo)]
        if kept_stale:
            print(f"--only: {len(kept_stale)} rows of {path} are from another revision or a dirty tree "
                  f"(e.g. {kept_stale[0]}: {results['networks'][kept_stale[0]].get('revision')}), this run is "
                  f"{current}; re-run the whole sweep so that one table never mixes code versions", file=sys.stderr)
            return 2
    elif args.update and stale:
        print(f"--update: re-checking {len(stale)} rows of another revision or a dirty tree (this run is {current})",
              file=sys.stderr)
        todo = [n for n in names if n in set(todo) | set(stale)]
    print(f"{len(todo)} of {len(names)} classifiers to check ({len(excluded)} names excluded)", file=sys.stderr)

    def record(name: str, row: Dict[str, Any]) -> None:
        row["revision"] = git_revision()
        results["networks"][name] = row
        results.update(meta=metadata(), excluded=excluded, summary=summarise(results))
        results["networks"] = {n: results["networks"][n] for n in names if n in results["networks"]}
        atomic_write_json(path, results)
        detail = row.get("reason") or row.get("error") or (
            f"logits {row['logits_rel_err']:.1e}  grad {row['grad_rel_err']:.1e}  {row['fwd_bwd_ms']:.0f} ms")
        print(f"{name:28s} {row['status']:9s} {row.get('seconds', 0):7.1f}s  {detail}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_one, name, args.seed, args.timeout): name for name in todo}
        for future in as_completed(futures):  # written as each finishes: a slow net holds no other row back
            record(futures[future], future.result())
    print(f"summary: {summarise(results)}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ Markdown
def markdown(results: Dict[str, Any]) -> str:
    """``docs/zoo.md``: one row per network, from the results JSON."""
    meta = results.get("meta", {})
    versions = meta.get("versions", {})
    counts = summarise(results)
    lines = [
        "# GluonCV classification zoo: compatibility matrix",
        "",
        "Generated by `python benchmarks/zoo_matrix.py --markdown` from `benchmarks/results/zoo_matrix.json`;",
        "run the sweep with `make zoo-matrix`. Do not edit by hand.",
        "",
        f"Every image classifier of `gluoncv.model_zoo.get_model_list()` (GluonCV {versions.get('gluoncv', '?')}, "
        f"MXNet {versions.get('mxnet', '?')}), built with fixed random weights and calibrated BatchNorm statistics "
        "at its family's input size, loaded as `--model NAME --params FILE` does, then checked: folded against "
        f"unfolded eval-mode logits (max relative error, tolerance {LOGITS_TOL:g}, or {ROUNDING_FACTOR:g} times the "
        "change that float32 rounding of the weights alone makes where that is larger: the folded weights are "
        "stored in float32), the folded model's input "
        "gradient against float64 central finite differences of the unfolded net (relative error, tolerance "
        f"{GRAD_TOL:g}; the folded gradient in float64 where the row has `grad_rel_err_float32` beside it, "
        "else the stricter float32 one the attacks use), and one PGD step through the CLI. Time is one forward plus input-backward pass of the "
        f"folded model at batch 1 on {meta.get('cpu_count', '?')} CPU cores "
        f"(OMP_NUM_THREADS={meta.get('threads', {}).get('OMP_NUM_THREADS')}), revision {meta.get('revision', '?')}.",
        "",
        "Summary: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".",
        "",
        "A network with several outputs (NASNet's auxiliary head) is used through its first output, the "
        "classifier's logits. Refused models stop `gluon-robust` with the reason shown.",
        "",
        "| network | input | status | logits rel. err. | gradient rel. err. | fwd+bwd ms | parameters | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["networks"].items():
        size = "x".join(str(s) for s in row.get("input_size", [])) or "-"
        notes = row.get("reason") or (f"{row.get('stage')}: {row.get('error')}" if row["status"] == "failed" else "")
        if row["status"] == "supported" and row.get("outputs", 1) > 1:
            notes = f"{row['outputs']} outputs, first used"
        if row["status"] == "supported" and row.get("fd_dtype") == "float32":
            notes = (notes + "; " if notes else "") + "float32 finite differences"
        if row["status"] == "supported" and row.get("grad_rel_err_float32") is not None:
            notes = (notes + "; " if notes else "") + f"float32 gradient {row['grad_rel_err_float32']:.1e}"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            f"`{name}`", size, row["status"], _fmt(row.get("logits_rel_err"), "{:.1e}"),
            _fmt(row.get("grad_rel_err"), "{:.1e}"), _fmt(row.get("fwd_bwd_ms"), "{:.0f}"),
            _fmt(row.get("params"), "{:,}"), notes.replace("|", "/")))
    lines += ["", "## Excluded names (not image classifiers)", "",
              "| name | task |", "|---|---|"]
    lines += [f"| `{e['name']}` | {e['task']} |" for e in results.get("excluded", [])]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.seed)
    if args.markdown:
        atomic_write_text(Path(args.markdown), markdown(load_results(Path(args.out))))
        print(f"wrote {args.markdown}", file=sys.stderr)
        return 0
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())

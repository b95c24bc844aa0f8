"""Complete jobs behind the CLI: attack a data source and write its outputs; the demo.

The CLI only parses flags and calls these; scripts do the same.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .attacks import Attack
from .data import as_source, check_fits, load_data
from .errors import ConfigError
from .interrupts import Interrupted
from .io import StreamingNpzWriter, atomic_write_json, atomic_write_text
from .model import Classifier, load_classifier
from .reporting import format_table, staged_output
from .validation import check_eps

__all__ = ["run_attack_job", "run_demo", "demo_table", "demo_outputs", "demo_report_dir", "contrast_reports",
           "contrast_table", "DEMO_CONFIGS"]

logger = logging.getLogger(__name__)


def run_attack_job(
    model: Classifier,
    source: Any,
    attack: Attack,
    *,
    attack_name: str,
    out_dir: Optional[str | Path],
    batch_size: Optional[int] = None,
    max_memory: Optional[int] = None,
    target_mode: Optional[str] = None,
    seed: int = 0,
    max_images: int = 100,
    options: Optional[Dict[str, Any]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Attack every correctly classified sample of ``source`` and write the outputs.

    Writes into ``out_dir`` (all or nothing): ``adversarial.npz`` (``x_adv``
    for every sample, the clean input where not attacked, plus ``y``,
    ``index``, ``clean_pred``, ``adv_pred``, ``success``, ``distance``),
    ``per_sample.csv``, ``summary.json`` and PNG pairs under ``images/`` for
    the first ``max_images`` attacked samples of 1- or 3-channel data.
    ``progress`` shows a bar labelled ``attack NAME``, counted in samples.

    A source with no correctly classified sample is an ordinary run: nothing
    is attacked, every accuracy is 0 and all files are written. A clean
    accuracy at or below chance (or no samples) is logged, sent to
    :mod:`warnings` and listed under ``warnings`` in the summary (see
    :func:`gluon_robust.evaluation.sanity.accuracy_warnings`).

    The attack's epsilon is checked against ``model.bounds`` first
    (:func:`~gluon_robust.validation.check_eps`: ``eps=8`` for a ``[0, 1]``
    model is refused). Without ``batch_size`` the batch size is the largest
    that fits ``max_memory`` bytes (default 4 GiB, see :mod:`gluon_robust.memory`).

    ``source`` may be anything :func:`~gluon_robust.data.as_source` takes (a
    DataSource, an ``(x, y)`` pair of arrays, a Gluon DataLoader). With
    ``out_dir=None`` nothing is kept: the outputs go to a temporary directory
    that is removed, and only the summary is returned.

    Returns
    -------
    dict
        The summary: ``n``, ``clean_accuracy``, ``robust_accuracy``,
        ``success_rate`` (over attacked points), ``seconds``,
        ``max_perturbation``, ``batch_size`` and ``batch_size_source``
        (``"given"`` or ``"auto"``) and more; for a defended model (see
        :mod:`gluon_robust.defenses`) also ``defense``: the chain, the gradient
        path of each defence and the EOT samples the attack used; ``warnings``.
    """
    from .attack_outputs import (
        NPZ_ARRAYS, AdversarialSink, attack_rows, attack_summary, class_names, write_per_sample,
    )
    from .evaluation import sanity
    from .memory import resolve_batch_size

    source = as_source(source)
    check_fits(model, source)
    check_eps("eps", attack.eps, attack.norm.name, model.bounds, source.sample_shape)
    if out_dir is None:  # run in a scratch directory that goes away: only the summary is kept
        with tempfile.TemporaryDirectory(prefix="gluon_robust_attack_") as scratch:
            return run_attack_job(model, source, attack, attack_name=attack_name, out_dir=Path(scratch) / "out",
                                  batch_size=batch_size, max_memory=max_memory, target_mode=target_mode, seed=seed,
                                  max_images=0, options=options, progress=progress)
    batch_size, batch_source = resolve_batch_size(model, source.sample_shape, batch_size, max_memory)
    start = time.perf_counter()
    with staged_output(out_dir) as stage:
        images = stage / "images" if source.sample_shape[0] in (1, 3) and max_images > 0 else None
        if images is not None:
            images.mkdir()
        names = class_names(model)
        writer = StreamingNpzWriter(stage / "adversarial.npz", "x_adv", (len(source),) + tuple(source.sample_shape),
                                    np.float32)
        sink = AdversarialSink(writer, len(source), images, max_images, model.bounds, names)
        try:
            arrays = attack_rows(model, source, attack, attack_name=attack_name, batch_size=batch_size,
                                 target_mode=target_mode, seed=seed, sink=sink, progress=progress)
        except BaseException:
            writer.abort()
            raise
        writer.close(**{key: arrays[key] for key in NPZ_ARRAYS})
        seconds = time.perf_counter() - start
        summary = attack_summary(arrays, model=model, data=source.name, attack=attack, attack_name=attack_name,
                                 options=options, target_mode=target_mode, seed=seed, batch_size=batch_size,
                                 batch_source=batch_source, seconds=seconds)
        atomic_write_json(stage / "summary.json", summary)
        write_per_sample(stage / "per_sample.csv", arrays, names)
    sanity.emit(summary["warnings"])
    logger.info(
        "%s: clean accuracy %.2f%%, robust accuracy %.2f%%, success rate %.2f%% (%d attacked), %.1f s -> %s",
        attack_name, 100 * summary["clean_accuracy"], 100 * summary["robust_accuracy"], 100 * summary["success_rate"],
        summary["attacked"], seconds, out_dir,
    )
    return summary


#: The models ``make demo`` contrasts: the bundled standard and PGD-AT reference models.
DEMO_CONFIGS = ("mnist_resnet20", "mnist_resnet20_pgdat")


def run_demo(
    out_dir: str | Path,
    *,
    configs: Sequence[str] = DEMO_CONFIGS,
    recipe: str = "standard-lite",
    eps: Sequence[float] = (0.1, 0.3),
    limit: int = 100,
    batch_size: int = 100,
    seed: int = 0,
    ctx: Any = None,
    progress: bool = True,
    workers: int = 1,
) -> Dict[str, Any]:
    """Evaluate bundled models on the same bundled digits with one recipe, and contrast them.

    Runs :func:`gluon_robust.evaluation.evaluate` (the ``standard-lite`` recipe by
    default: PGD-40, then a lighter version of AutoAttack's ``standard`` stages, L-inf) on each
    model and writes its ``report.json``, ``report.md`` and ``report.html``
    into ``out_dir/CONFIG/``, then ``contrast.json`` and ``contrast.md`` (one
    row per model: clean accuracy, PGD-40 and worst-case accuracy per eps)
    into ``out_dir``. Returns ``{"reports": [...], "contrast": {...}}`` and
    prints nothing (the CLI prints the tables).

    ``workers > 1`` runs the evaluations in that many single-threaded worker
    processes (a Dask ``LocalCluster``, see :mod:`gluon_robust.cluster`), each
    model's digits in ``2 * workers`` chunks. Per-sample random streams make
    the figures and the per-sample rows the same as with ``workers=1``; the
    reports then also record the chunks and the per-worker timing.
    """
    from .evaluation import evaluate
    from .validation import check_int

    if not configs:
        raise ConfigError("the demo needs at least one model config")
    workers = check_int("workers", workers)
    reports = []
    try:
        with staged_output(out_dir) as out:  # the whole demo appears at once, without an earlier run's files
            if workers > 1:
                reports = _demo_on_workers(out, configs, workers=workers, recipe=recipe, eps=eps, limit=limit,
                                           batch_size=batch_size, seed=seed, ctx=ctx, progress=progress)
            for config in configs if workers == 1 else ():
                model = load_classifier(config, ctx=ctx)
                source = load_data("mnist-sample", split="test", limit=limit, input_size=model.input_size[1:])
                report = evaluate(model, source, recipe=recipe, eps=eps, norm="linf", batch_size=batch_size,
                                  seed=seed, out_dir=out / demo_report_dir(config, configs), progress=progress,
                                  args=_demo_args(config, recipe, eps, limit, batch_size, seed))
                report["config"] = config
                reports.append(report)
            contrast = contrast_reports(reports)
            if len(configs) > 1:
                atomic_write_json(out / "contrast.json", contrast)
                atomic_write_text(out / "contrast.md", "```\n" + contrast_table(contrast) + "\n```\n")
    except Interrupted as err:
        err.hint = f"nothing partial was published in {out_dir}; the demo has no --resume, run it again"
        raise
    return {"reports": reports, "contrast": contrast}


def demo_report_dir(config: str, configs: Sequence[str]) -> str:
    """Where the demo writes ``config``'s report, relative to its output directory: ``CONFIG/``, or ``.`` alone."""
    return config if len(configs) > 1 else "."


def demo_outputs(out_dir: str | Path, configs: Sequence[str]) -> str:
    """The demo's closing lines: the real path of each report (and of the contrast), as the user typed ``out_dir``."""
    out = Path(out_dir)
    if len(configs) == 1:
        return f"report: {out / 'report.html'} (and report.json, report.md)"
    lines = ["reports (report.html, with report.json and report.md beside it):"]
    lines += [f"  {config}: {out / config / 'report.html'}" for config in configs]
    lines.append(f"contrast: {out / 'contrast.md'} (and contrast.json)")
    return "\n".join(lines)


def _demo_args(config: str, recipe: str, eps: Sequence[float], limit: int, batch_size: int,
               seed: int) -> Dict[str, Any]:
    return {"config": config, "recipe": recipe, "eps": list(eps), "limit": limit, "batch_size": batch_size,
            "seed": seed}


@dataclass(frozen=True)
class DemoLoader:
    """Loads a bundled model and the demo's digits, in the client and in each worker process (it pickles)."""

    config: str
    limit: int
    ctx: Optional[str] = None

    @property
    def key(self) -> str:
        return f"demo:{self.config}:{self.limit}:{self.ctx}"

    def load(self) -> Tuple[Classifier, Any]:
        from .cli_values import parse_ctx

        model = load_classifier(self.config, ctx=parse_ctx(self.ctx)[0] if self.ctx else None)
        return model, load_data("mnist-sample", split="test", limit=self.limit, input_size=model.input_size[1:])


def _demo_on_workers(out: Path, configs: Sequence[str], *, workers: int, recipe: str, eps: Sequence[float],
                     limit: int, batch_size: int, seed: int, ctx: Any, progress: bool) -> list:
    """The demo's evaluations on one local cluster of ``workers`` processes, shared by all the models."""
    import math

    from .cluster import EvaluateSettings, connect, evaluate_on_cluster

    ctx_text = None if ctx is None else f"{ctx.device_type}:{ctx.device_id}"
    settings = EvaluateSettings(recipe=recipe, eps=tuple(float(e) for e in eps), norm="linf", batch_size=batch_size,
                                seed=seed)
    chunk = max(1, math.ceil(limit / (2 * workers)))  # a few chunks per worker: balanced, and batches stay large
    reports = []
    with connect(f"local:{workers}") as client:
        address = client.scheduler.address  # every model's chunks go to the same workers
        for config in configs:
            report = evaluate_on_cluster(DemoLoader(config, limit, ctx_text), settings, cluster=address,
                                         out_dir=out / demo_report_dir(config, configs), chunk_size=chunk,
                                         progress=progress, announce=logger.debug,
                                         args=_demo_args(config, recipe, eps, limit, batch_size, seed))
            report["config"] = config
            reports.append(report)
    return reports


def contrast_reports(reports: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One row per report: clean accuracy, the first stage's and the worst-case accuracy at each eps."""
    from .evaluation.report import stage_accuracies

    rows = []
    for report in reports:
        first = report["attacks"][0]["name"] if report["attacks"] else None
        row: Dict[str, Any] = {"config": report.get("config"), "model": report["model"], "n": report["n"],
                               "clean_accuracy": report["clean_accuracy"], "first_stage_name": first,
                               "first_stage": {}, "worst_case": {}}
        for a, accuracy in zip(report["attacks"], stage_accuracies(report)):
            if a["name"] == first and a["eps"] is not None:
                row["first_stage"][f"{a['eps']:g}"] = accuracy
        for w in report["worst_case"]:
            if w["eps"] is not None:
                row["worst_case"][f"{w['eps']:g}"] = w["robust_accuracy"]
        rows.append(row)
    return {"recipe": reports[0]["recipe"] if reports else None, "rows": rows}


def contrast_table(contrast: Dict[str, Any]) -> str:
    """The contrast as plain text: model, clean, first stage and worst case per eps."""
    rows = contrast["rows"]
    eps_keys = sorted({k for r in rows for k in r["worst_case"]}, key=float)
    first = rows[0]["first_stage_name"] if rows else "first stage"
    header = ["model", "clean"] + [f"{first} @{e}" for e in eps_keys] + [f"worst case @{e}" for e in eps_keys]
    body = [[r["config"] or r["model"], f"{100 * r['clean_accuracy']:.1f}%"]
            + [f"{100 * r['first_stage'][e]:.1f}%" if e in r["first_stage"] else "-" for e in eps_keys]
            + [f"{100 * r['worst_case'][e]:.1f}%" if e in r["worst_case"] else "-" for e in eps_keys] for r in rows]
    return format_table(body, header)


def demo_table(report: Dict[str, Any]) -> str:
    """The demo's printed table: one row per attack stage (the robust accuracy after it, of all digits), then the worst case."""
    from .evaluation.report import summary_table

    return summary_table(report)

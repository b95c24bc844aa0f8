"""Complete jobs behind the CLI: attack a data source and write its outputs; the demo.

The CLI only parses flags and calls these; scripts do the same.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .attacks import Attack
from .data import as_source, check_fits, load_data
from .evaluation.robustness import evaluate_attacks
from .errors import ConfigError
from .interrupts import Interrupted
from .io import StreamingNpzWriter, atomic_write_json, atomic_write_text
from .model import Classifier, load_classifier
from .reporting import format_table, save_png, staged_output, versions
from .validation import check_eps

__all__ = ["run_attack_job", "run_demo", "demo_table", "demo_outputs", "demo_report_dir", "contrast_reports",
           "contrast_table", "DEMO_CONFIGS"]

logger = logging.getLogger(__name__)

class _AdversarialSink:
    """Collects per-sample attack outputs batch by batch and streams ``x_adv`` to disk."""

    def __init__(self, path: Path, n: int, sample_shape: Tuple[int, ...], images_dir: Optional[Path],
                 max_images: int, bounds: Tuple[float, float], class_names: Optional[Sequence[str]] = None) -> None:
        self.writer = StreamingNpzWriter(path, "x_adv", (n,) + tuple(sample_shape), np.float32)
        self.success = np.zeros(n, bool)
        self.adv_pred = np.full(n, -1, np.int64)
        self.targets = np.full(n, -1, np.int64)
        self.images_dir = images_dir
        self.max_images = max_images
        self.bounds = bounds
        self.class_names = class_names
        self._pos = 0

    def _tag(self, label: int) -> str:
        """``3`` or, with class names, ``3-tench`` (a file-name-safe form of the name)."""
        if self.class_names is None or not 0 <= label < len(self.class_names):
            return str(label)
        return f"{label}-{_file_safe(self.class_names[label])}"

    def __call__(self, k: int, batch: Any, result: Any, attacked: np.ndarray) -> None:
        x_adv = batch.x.copy()
        rows = np.arange(self._pos, self._pos + len(batch.y))
        self._pos += len(batch.y)
        if result is None:  # nothing in this batch was attacked: its clean inputs stand
            self.writer.write(x_adv)
            return
        x_adv[attacked] = result.x_adv
        self.success[rows[attacked]] = result.success
        self.adv_pred[rows[attacked]] = result.predictions
        if result.targets is not None:
            self.targets[rows[attacked]] = result.targets
        self.writer.write(x_adv)
        if self.images_dir is not None:
            for j in np.flatnonzero(attacked):
                if rows[j] >= self.max_images:
                    break
                stem = f"{int(batch.index[j]):06d}_label{self._tag(int(batch.y[j]))}"
                save_png(self.images_dir / f"{stem}_clean.png", batch.x[j], self.bounds)
                save_png(self.images_dir / f"{stem}_adv_pred{self._tag(int(self.adv_pred[rows[j]]))}.png", x_adv[j],
                         self.bounds)


def _file_safe(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``-`` and ``_`` only (``great white shark`` -> ``great_white_shark``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "class"


def _csv_field(text: str) -> str:
    """A CSV field, quoted when it holds a comma or a quote."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


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
    from .attacks.targets import choose_targets
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
    targets: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = (
        None if target_mode is None else functools.partial(choose_targets, model, mode=target_mode, seed=seed)
    )
    start = time.perf_counter()
    with staged_output(out_dir) as stage:
        images = stage / "images" if source.sample_shape[0] in (1, 3) and max_images > 0 else None
        if images is not None:
            images.mkdir()
        names = getattr(model, "class_table", None)
        names = list(names.names) if names is not None else None
        sink = _AdversarialSink(stage / "adversarial.npz", len(source), source.sample_shape, images, max_images,
                                model.bounds, names)
        try:
            result = evaluate_attacks(model, source, [(attack_name, attack)], batch_size=batch_size, cascade=False,
                                      targets=targets, on_batch=sink, progress=progress,
                                      desc=f"attack {attack_name}")
        except BaseException:
            sink.writer.abort()
            raise
        outcome = result.outcomes[0]
        sink.writer.close(
            y=result.labels, index=result.index, clean_pred=result.clean_pred, adv_pred=sink.adv_pred,
            success=sink.success, distance=outcome.distance, target=sink.targets,
        )
        attacked = outcome.attacked
        seconds = time.perf_counter() - start
        summary = {
            "n": result.n,
            "clean_accuracy": result.clean_accuracy,
            "robust_accuracy": outcome.robust_accuracy(result.correct),
            "success_rate": float(sink.success[attacked].mean()) if attacked.any() else 0.0,
            "attacked": int(attacked.sum()),
            # correctly classified samples a fixed --target left out because it is their own label
            "not_attacked_target_is_label": int((result.correct & ~attacked).sum()) if target_mode is not None else 0,
            "seconds": round(seconds, 3),
            "max_perturbation": float(np.nanmax(outcome.distance)) if attacked.any() else 0.0,
            "median_perturbation": float(np.nanmedian(outcome.distance[sink.success])) if sink.success.any() else None,
            "mean_queries": float(outcome.queries[attacked].mean()) if attacked.any() else 0.0,
            "max_queries": int(outcome.queries.max()) if attacked.any() else 0,
            "norm": outcome.norm,
            "eps": outcome.eps,
            "attack": {"name": attack_name, "class": type(attack).__name__, "options": options or {}},
            "targeted": target_mode is not None,
            "target": target_mode,
            "model": model.describe(),
            "data": source.name,
            "seed": seed,
            "batch_size": batch_size,
            "batch_size_source": batch_source,
            "versions": versions(),
            "warnings": sanity.accuracy_warnings(result.n, int(result.correct.sum()),
                                                 getattr(model, "num_classes", None)),
        }
        if hasattr(model, "defense_report"):  # a DefendedClassifier: say which gradient path the attack used
            summary["defense"] = dict(model.defense_report(), attack_eot_samples=getattr(attack, "eot_samples", None))
        atomic_write_json(stage / "summary.json", summary)
        lines = ["index,label,clean_prediction,attacked,adversarial_prediction,success,distance,target"]
        if names is not None:  # class names: three more columns, after the original ones
            lines[0] += ",label_name,clean_prediction_name,adversarial_prediction_name"
        for i in range(result.n):
            dist = "" if np.isnan(outcome.distance[i]) else f"{outcome.distance[i]:.6g}"
            target = "" if sink.targets[i] < 0 else str(sink.targets[i])
            line = (
                f"{result.index[i]},{result.labels[i]},{result.clean_pred[i]},{int(attacked[i])},"
                f"{sink.adv_pred[i] if attacked[i] else ''},{int(sink.success[i])},{dist},{target}"
            )
            if names is not None:
                adv = names[sink.adv_pred[i]] if attacked[i] and 0 <= sink.adv_pred[i] < len(names) else ""
                line += "," + ",".join(_csv_field(n) for n in (names[result.labels[i]], names[result.clean_pred[i]], adv))
            lines.append(line)
        atomic_write_text(stage / "per_sample.csv", "\n".join(lines) + "\n")
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
) -> Dict[str, Any]:
    """Evaluate bundled models on the same bundled digits with one recipe, and contrast them.

    Runs :func:`gluon_robust.evaluation.evaluate` (the ``standard-lite`` recipe by
    default: PGD-40, then a lighter version of AutoAttack's ``standard`` stages, L-inf) on each
    model and writes its ``report.json``, ``report.md`` and ``report.html``
    into ``out_dir/CONFIG/``, then ``contrast.json`` and ``contrast.md`` (one
    row per model: clean accuracy, PGD-40 and worst-case accuracy per eps)
    into ``out_dir``. Returns ``{"reports": [...], "contrast": {...}}`` and
    prints nothing (the CLI prints the tables).
    """
    from .evaluation import evaluate

    if not configs:
        raise ConfigError("the demo needs at least one model config")
    reports = []
    try:
        with staged_output(out_dir) as out:  # the whole demo appears at once, without an earlier run's files
            for config in configs:
                model = load_classifier(config, ctx=ctx)
                source = load_data("mnist-sample", split="test", limit=limit, input_size=model.input_size[1:])
                report = evaluate(model, source, recipe=recipe, eps=eps, norm="linf", batch_size=batch_size,
                                  seed=seed, out_dir=out / demo_report_dir(config, configs), progress=progress,
                                  args={"config": config, "recipe": recipe, "eps": list(eps), "limit": limit,
                                        "batch_size": batch_size, "seed": seed})
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

"""AutoAttack-style evaluation: a named recipe, an epsilon sweep, sanity checks, a report.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML, https://arxiv.org/abs/2003.01690.

:func:`evaluate` measures clean accuracy, then runs each stage of a recipe
(:mod:`~gluon_robust.evaluation.recipes`) for each epsilon on the points still
robust (the cascade of :func:`~gluon_robust.evaluation.robustness.evaluate_attacks`);
the result is the worst case per sample. With ``out_dir`` it checkpoints after
every batch (``resume=True`` continues an interrupted run) and writes the
report (:mod:`~gluon_robust.evaluation.report`). ``shard=(k, n)`` evaluates
the ``k``-th of ``n`` contiguous slices; :func:`merge_reports` joins the shard
reports into the report of the whole run.

Every state file and report records the run's fingerprint
(:mod:`~gluon_robust.fingerprint`: SHA-256 of the weights, of the evaluated
data slice and of the recipe's settings). A resume whose fingerprint differs
from the state's, and a merge of shards whose weights or recipe differ, are
refused with a one-line error naming the part that differs.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..data import as_source, check_fits
from ..errors import ConfigError
from ..fingerprint import (
    RunFingerprint, attack_settings, combine, data_fingerprint, mismatch, recipe_fingerprint, weights_fingerprint,
)
from ..integrity import load_npz, refuse_pickle
from ..interrupts import set_hint
from ..reporting import prepare_output_dir, staged_output, versions
from ..memory import resolve_batch_size
from ..validation import check_distinct_paths, check_eps, check_out_dir
from . import sanity
from .recipes import build_attacks, custom_recipe, describe, deviations, get_recipe
from .report import EXAMPLE_KEYS, empty_examples, write_report
from .robustness import RobustnessResult, evaluate_attacks
from .state import STATE_NAME, StateFile

__all__ = ["evaluate", "merge_reports", "parse_shard", "shard_slice", "run_fingerprint", "prepare", "Prepared",
           "merge_loaded", "load_shard"]

logger = logging.getLogger(__name__)


def parse_shard(text: str) -> Tuple[int, int]:
    """Parse ``"K/N"`` (0-based shard ``K`` of ``N``)."""
    k, sep, n = str(text).partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or not int(k) < int(n):
        raise ConfigError(f"shard must be K/N with integers 0 <= K < N, got {text!r}")
    return int(k), int(n)


def _check_shard(shard: Any) -> Tuple[int, int]:
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    return k, n


def shard_slice(size: int, shard: Tuple[int, int]) -> slice:
    """The contiguous positions of shard ``k`` of ``n`` of a source of ``size`` samples."""
    k, n = _check_shard(shard)
    return slice(k * size // n, (k + 1) * size // n)


class _Examples:
    """Keeps the adversarial examples (at the largest epsilon) of the lowest source indices, for the image grid."""

    def __init__(self, attacks: Sequence[Tuple[str, Any]], sample_shape: tuple, limit: int) -> None:
        bounded = [a.eps for _, a in attacks if a.eps is not None]
        top = max(bounded) if bounded else None
        self.wanted = {k for k, (_, a) in enumerate(attacks) if a.eps == top}
        self.limit = limit
        self.data = empty_examples(sample_shape)

    def __call__(self, k: int, batch: Any, result: Any, attacked: np.ndarray) -> None:
        if k not in self.wanted or self.limit <= 0 or result is None:
            return
        sel = np.flatnonzero(attacked)
        broken = result.predictions != batch.y[sel]
        if not broken.any():
            return
        rows = sel[broken]
        adv = result.x_adv if isinstance(result.x_adv, np.ndarray) else result.x_adv.asnumpy()
        new = {
            "x": batch.x[rows], "x_adv": adv[broken].astype(np.float32), "y": batch.y[rows],
            "pred": result.predictions[broken].astype(np.int64), "index": batch.index[rows].astype(np.int64),
            "attack": np.full(len(rows), k, np.int64),
        }
        self.set({key: np.concatenate([self.data[key], new[key]]) for key in EXAMPLE_KEYS})

    def get(self) -> Dict[str, np.ndarray]:
        return dict(self.data)

    def set(self, data: Dict[str, np.ndarray]) -> None:
        if not data:
            return
        order = np.argsort(data["index"], kind="stable")[: self.limit]
        self.data = {key: data[key][order] for key in EXAMPLE_KEYS}


def evaluate(
    model: Any,
    source: Any,
    labels: Any = None,
    *,
    recipe: str = "standard",
    attacks: Optional[Sequence[str]] = None,
    eps: Sequence[float] = (8 / 255,),
    norm: str = "linf",
    batch_size: Optional[int] = None,
    seed: int = 0,
    out_dir: Optional[str | Path] = None,
    resume: bool = False,
    shard: Optional[Tuple[int, int]] = None,
    probe_size: int = 32,
    max_examples: int = 8,
    progress: bool = True,
    args: Optional[Dict[str, Any]] = None,
    max_memory: Optional[int] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` on ``source`` with a recipe (or a custom list of attacks) over an epsilon sweep.

    Parameters
    ----------
    model : Classifier
        The model under evaluation (pixel inputs inside ``model.bounds``).
    source : DataSource, arrays, DataLoader or Dataset
        The evaluation data; with ``shard`` only its slice is attacked. Image
        arrays (NumPy or NDArray) take their ``labels``; see
        :func:`~gluon_robust.data.as_source`.
    labels : array-like, optional
        The labels of image arrays.
    recipe : str
        A name of :data:`~gluon_robust.evaluation.recipes.RECIPES`: ``"standard"`` (AutoAttack's standard
        version), ``"plus"``, ``"rand"``, or a lighter ``"standard-lite"`` or ``"apgd-lite"``.
    attacks : sequence of str, optional
        Registered attack names to run instead of the recipe, with default hyperparameters.
    eps : sequence of float
        The budgets, in pixel units (the scale of ``model.bounds``: ``8/255``
        for ``[0, 1]`` images); see :func:`~gluon_robust.validation.check_eps`.
    norm : str
        ``"linf"`` or ``"l2"``.
    batch_size : int, optional
        Samples per batch (and per checkpoint); None: the largest that fits
        ``max_memory`` (see :mod:`gluon_robust.memory`).
    seed : int
        Seed of every attack and of MXNet's and NumPy's global generators.
    out_dir : path, optional
        Write the report here (all or nothing) and keep the resumable state
        file here while running.
    resume : bool
        Continue from the state file in ``out_dir`` without redoing finished batches.
    shard : (int, int), optional
        ``(k, n)``: evaluate only the ``k``-th of ``n`` contiguous slices.
    probe_size : int
        Samples (the first of the *whole* source) for the model sanity checks.
    max_examples : int
        Adversarial examples kept for the report's image grid.
    progress : bool
        Show progress bars.
    args : dict, optional
        The command-line arguments, recorded in the report.
    max_memory : int, optional
        Memory budget in bytes for the automatic batch size (default 4 GiB).

    Returns
    -------
    dict
        The report (see :meth:`RobustnessResult.to_report`) plus ``recipe``,
        ``stages``, ``norm``, ``eps``, ``seed``, ``versions``, ``sanity``,
        ``warnings``, ``batch_size``, ``batch_size_source`` (``"given"`` or
        ``"auto"``), ``fingerprint`` (``{"weights", "data", "recipe"}``, see
        :func:`run_fingerprint`) and more.

    Raises
    ------
    ConfigError
        For an unknown recipe or attack, a bad epsilon, norm, shard or batch size; with ``resume``, for
        a state file that is corrupt, truncated, edited, or written by a run with other weights, recipe,
        batch size, shard or model.
    DataError
        With ``resume``, for a state file written by a run on other data (see :func:`run_fingerprint`).
    """
    return _evaluate(model, source, labels, recipe=recipe, attacks=attacks, eps=eps, norm=norm, batch_size=batch_size,
                     seed=seed, out_dir=out_dir, resume=resume, shard=shard, probe_size=probe_size,
                     max_examples=max_examples, progress=progress, args=args, max_memory=max_memory)[0]


@dataclass(frozen=True)
class Prepared:
    """An evaluation's validated settings: its source, recipe stages, configured attacks and batch size."""

    source: Any
    stages: Tuple[Any, ...]
    recipe: str
    built: List[Tuple[str, Any]]
    differs: List[str]
    norm: str
    eps: List[float]
    batch_size: int
    batch_source: str


def prepare(
    model: Any, source: Any, labels: Any = None, *, recipe: str = "standard", attacks: Optional[Sequence[str]] = None,
    eps: Sequence[float] = (8 / 255,), norm: str = "linf", batch_size: Optional[int] = None, seed: int = 0,
    max_memory: Optional[int] = None,
) -> Prepared:
    """Validate an evaluation's settings and configure its attacks, as :func:`evaluate` does before any work.

    The parameters are :func:`evaluate`'s. Used by :func:`evaluate` and by the
    cluster client (:mod:`gluon_robust.cluster`), which fingerprints the whole
    run before it hands out chunks.

    Raises
    ------
    ConfigError
        For an unknown recipe or attack, a bad epsilon, norm or batch size.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    source = as_source(source, labels)
    check_fits(model, source)
    stages = custom_recipe(attacks) if attacks is not None else get_recipe(recipe)
    recipe_name = "custom" if attacks is not None else str(recipe).strip().lower()
    stages = _with_eot(stages, int(getattr(model, "eot_samples", 1)))
    eps = [float(e) for e in eps] if not isinstance(eps, (int, float)) else [float(eps)]
    built = build_attacks(stages, eps=eps, norm=norm, seed=seed)
    differs = deviations(stages) if attacks is None else ["a custom list of attacks, not AutoAttack's standard version"]
    norm = built[0][1].norm.name
    for value in eps:  # in the units of the model's bounds: 8 for a [0, 1] model is refused
        check_eps("eps", value, norm, getattr(model, "bounds", (0.0, 1.0)), source.sample_shape)
    batch_size, batch_source = resolve_batch_size(model, source.sample_shape, batch_size, max_memory)
    return Prepared(source=source, stages=tuple(stages), recipe=recipe_name, built=list(built), differs=list(differs),
                    norm=norm, eps=eps, batch_size=batch_size, batch_source=batch_source)


def sanity_probe(
    model: Any, source: Any, *, norm: str, seed: int, probe_size: int = 32,
) -> Tuple[Dict[str, Any], List[str]]:
    """The model sanity checks of :func:`evaluate` on the first ``probe_size`` samples of the *whole* source.

    Seeds MXNet's, NumPy's and Python's global generators with ``seed`` first,
    as :func:`evaluate` does, so that every process measures the same numbers;
    see :func:`~gluon_robust.evaluation.sanity.probe_model`.
    """
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    probe = source.subset(slice(0, min(probe_size, len(source))))
    px, py = probe.arrays()
    return sanity.probe_model(model, px, py, norm=norm, seed=seed)


def _evaluate(
    model: Any, source: Any, labels: Any = None, *, recipe: str = "standard", attacks: Optional[Sequence[str]] = None,
    eps: Sequence[float] = (8 / 255,), norm: str = "linf", batch_size: Optional[int] = None, seed: int = 0,
    out_dir: Optional[str | Path] = None, resume: bool = False, shard: Optional[Tuple[int, int]] = None,
    probe_size: int = 32, max_examples: int = 8, progress: bool = True, args: Optional[Dict[str, Any]] = None,
    max_memory: Optional[int] = None, probe_cache: Optional[Dict[Any, Any]] = None, weights: Optional[str] = None,
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """:func:`evaluate`, returning the report and its examples (the arrays of ``examples.npz``).

    ``probe_cache`` (a dict kept with the model, e.g. on a cluster worker) keeps
    the sanity probe's result per norm, seed and probe size, so that the chunks
    of one evaluation run it once; ``weights`` is the model's known weights
    fingerprint (not recomputed).
    """
    if isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 1:
        raise ConfigError(f"probe_size must be a positive integer, got {probe_size!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ConfigError(f"max_examples must be a non-negative integer, got {max_examples!r}")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir, where the state file is")
    prepared = prepare(model, source, labels, recipe=recipe, attacks=attacks, eps=eps, norm=norm,
                       batch_size=batch_size, seed=seed, max_memory=max_memory)
    source, stages, recipe_name, built = prepared.source, prepared.stages, prepared.recipe, prepared.built
    differs, norm, eps = prepared.differs, prepared.norm, prepared.eps
    batch_size, batch_source = prepared.batch_size, prepared.batch_source
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    probe_key = (norm, int(seed), probe_size)
    if probe_cache is not None and probe_key in probe_cache:
        measurements, probe_warnings = probe_cache[probe_key]
    else:
        measurements, probe_warnings = sanity_probe(model, source, norm=norm, seed=seed, probe_size=probe_size)
        if probe_cache is not None:
            probe_cache[probe_key] = (measurements, probe_warnings)

    full_size = len(source)
    shard_info = None
    if shard is not None:
        k, n_shards = _check_shard(shard)
        part = shard_slice(full_size, (k, n_shards))
        source = source.subset(part)
        shard_info = {"k": k, "n": n_shards, "start": part.start, "stop": part.stop, "size": full_size}

    model_name = model.describe() if hasattr(model, "describe") else type(model).__name__
    fingerprint = run_fingerprint(model, source, built, stages=stages, recipe=recipe_name, eps=eps, norm=norm,
                                  seed=seed, batch_size=batch_size, weights=weights)
    examples = _Examples(built, source.sample_shape, max_examples)
    checkpoint = None
    if out_dir is not None:
        identity = {**fingerprint.to_dict(), "batch_size": batch_size, "n": len(source), "shard": shard_info,
                    "model": model_name}
        prepare_output_dir(out_dir)
        checkpoint = StateFile(out_dir, identity, resume=resume, extra_state=(examples.get, examples.set))

    logger.info("evaluate: recipe %s, %s eps %s, %d samples, stages %s", recipe_name, norm, eps, len(source),
                [label for label, _ in built])
    try:
        result = evaluate_attacks(model, source, built, batch_size=batch_size, cascade=True, on_batch=examples,
                                  progress=progress, checkpoint=checkpoint)
    except KeyboardInterrupt as err:
        if checkpoint is not None and checkpoint.path.exists():
            set_hint(err, f"the results up to the last finished batch are kept in {checkpoint.path}; "
                          f"resume with the same command plus --resume")
        raise
    report = _finish(result.to_report(), stages=stages, recipe=recipe_name, norm=norm, eps=eps, seed=seed,
                     differs=differs, measurements=measurements, probe_warnings=probe_warnings,
                     model=model_name, data=source.name, args=args, shard=shard_info, fingerprint=fingerprint,
                     bounds=getattr(model, "bounds", (0.0, 1.0)), max_examples=max_examples,
                     defense=_defense(model, built), num_classes=getattr(model, "num_classes", None),
                     class_names=_class_names(model))
    report.update(batch_size=batch_size, batch_size_source=batch_source)
    sanity.emit(report["warnings"])
    if out_dir is not None:
        with staged_output(out_dir, replaces=(STATE_NAME,)) as stage:  # the finished run's state goes with it
            write_report(stage, report, examples.get(), bounds=tuple(report["bounds"]))
        logger.info("report: %s", Path(out_dir) / "report.html")
    return report, examples.get()


def _class_names(model: Any) -> Optional[List[str]]:
    """The name of each output of ``model`` (its class table), or None when unknown."""
    table = getattr(model, "class_table", None)
    return list(table.names) if table is not None else None


def _finish(
    report: Dict[str, Any], *, stages: Sequence[Any], recipe: str, norm: str, eps: Sequence[float], seed: int,
    differs: List[str], measurements: Dict[str, Any], probe_warnings: List[str], model: str, data: str,
    args: Optional[Dict[str, Any]], shard: Optional[Dict[str, Any]], bounds: Sequence[float], max_examples: int,
    fingerprint: RunFingerprint, defense: Optional[Dict[str, Any]] = None, num_classes: Optional[int] = None,
    class_names: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Add the run's description, fingerprint and sanity checks to a result's report."""
    report["num_classes"] = num_classes  # before report_warnings, which checks clean accuracy against chance
    report.update({
        "class_names": class_names,
        "defense": defense,
        "recipe": recipe,
        "stages": describe(stages),
        "differs_from_standard": list(differs),
        "norm": norm,
        "eps": list(eps),
        "seed": seed,
        "model": model,
        "data": data,
        "bounds": [float(b) for b in bounds],
        "max_examples": int(max_examples),
        "sanity": {**measurements, "probe_warnings": list(probe_warnings)},
        "warnings": list(probe_warnings) + sanity.report_warnings(report),
        "versions": versions(),
        "args": _jsonable(args or {}),
        "shard": shard,
        "fingerprint": fingerprint.to_dict(),
    })
    return report


def run_fingerprint(
    model: Any, source: Any, attacks: Sequence[Tuple[str, Any]], *, stages: Sequence[Any], recipe: str,
    eps: Sequence[float], norm: str, seed: int, batch_size: int, weights: Optional[str] = None,
) -> RunFingerprint:
    """The fingerprint of an evaluation: its model's weights, its data slice and every setting of its recipe.

    Parameters
    ----------
    model : Classifier
        The model under evaluation.
    source : DataSource
        The evaluated slice (after sharding); read once, ``batch_size`` samples at a time.
    attacks : sequence of (label, Attack)
        The configured attacks, whose full hyperparameters (defaults included) enter the recipe part.
    stages : sequence of Stage
        The recipe's stages.
    recipe : str
        The recipe's name (``"custom"`` for a list of attacks).
    eps : sequence of float
        The budgets.
    norm : str
        The threat model's norm.
    seed : int
        The seed of every attack.
    batch_size : int
        Samples per read of ``source`` (the digest does not depend on it).
    weights : str, optional
        The model's weights fingerprint when already known (a cluster worker
        computes it once per loaded model); else it is computed.

    Returns
    -------
    RunFingerprint
    """
    start = time.perf_counter()
    settings = {
        "recipe": recipe, "stages": describe(stages), "attacks": [[label, attack_settings(a)] for label, a in attacks],
        "eps": [float(e) for e in eps], "norm": norm, "seed": int(seed),
        "bounds": [float(b) for b in getattr(model, "bounds", (0.0, 1.0))],
        "defense": model.defense_report() if hasattr(model, "defense_report") else None,
    }
    fingerprint = RunFingerprint(weights=weights or weights_fingerprint(model), data=data_fingerprint(source, batch_size),
                                 recipe=recipe_fingerprint(settings))
    logger.info("run fingerprint: %s (%.2f s)", fingerprint, time.perf_counter() - start)
    return fingerprint


def _with_eot(stages: Sequence[Any], eot_samples: int) -> Tuple[Any, ...]:
    """``stages`` with ``eot_samples`` added to every attack that takes it and does not set it.

    A defended model whose gradient mode uses Expectation over Transformation
    (see :mod:`gluon_robust.defenses`) asks for ``eot_samples > 1``; black-box
    attacks have no such parameter and query the randomised model as it is.
    """
    from types import MappingProxyType

    from ..attacks import ATTACKS

    if eot_samples <= 1:
        return tuple(stages)
    out = []
    for stage in stages:
        takes = stage.attack in ATTACKS and "eot_samples" in ATTACKS.parameters(stage.attack)
        if takes and "eot_samples" not in stage.options:
            stage = stage._replace(options=MappingProxyType(dict(stage.options, eot_samples=eot_samples)))
        out.append(stage)
    return tuple(out)


def _defense(model: Any, attacks: Sequence[Tuple[str, Any]]) -> Optional[Dict[str, Any]]:
    """The defence chain and gradient path of a defended model, with the EOT samples each stage used; else None."""
    if not hasattr(model, "defense_report"):
        return None
    report = dict(model.defense_report())
    report["stage_eot_samples"] = {label: getattr(a, "eot_samples", None) for label, a in attacks}
    return report


def _jsonable(args: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(args, default=str))


def _load_shard(directory: Path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], RunFingerprint]:
    """The report, examples and run fingerprint of one shard directory, read as data only (no pickle).

    Raises
    ------
    ConfigError
        If ``report.json`` or ``examples.npz`` is missing, a pickle, unreadable,
        holds an object array, or the report is not a shard's, has malformed
        shard bookkeeping or no run fingerprint.
    """
    fix = "evaluate that shard again"
    path = directory / "report.json"
    if not path.is_file():
        raise ConfigError(f"no report.json in {directory}")
    refuse_pickle(path, "shard report", fix=fix)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"shard report {path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(report, dict):
        raise ConfigError(f"shard report {path} is not a JSON object; {fix}")
    if not report.get("shard"):
        raise ConfigError(f"{directory} holds the report of an unsharded run, not a shard")
    shard = report["shard"]
    fields = ("k", "n", "start", "stop", "size")
    if not isinstance(shard, dict) or not all(isinstance(shard.get(f), int) and not isinstance(shard.get(f), bool)
                                              for f in fields):
        raise ConfigError(f"shard report {path} has malformed shard bookkeeping {shard!r} (needs integers "
                          f"{', '.join(fields)}); {fix}")
    fingerprint = RunFingerprint.from_dict(report.get("fingerprint"), f"shard report {path}")
    examples = directory / "examples.npz"
    if not examples.is_file():
        raise ConfigError(f"no examples.npz in {directory}; {fix}")
    arrays = load_npz(examples, "shard examples", fix=fix)
    missing = [k for k in EXAMPLE_KEYS if k not in arrays]
    if missing:
        raise ConfigError(f"shard examples {examples} lack the arrays {missing}; {fix}")
    return report, {k: arrays[k] for k in EXAMPLE_KEYS}, fingerprint


def _check_shards(loaded: Sequence[Tuple[Dict[str, Any], Any, RunFingerprint, str]]) -> None:
    """Refuse shards of different evaluations (weights, recipe, settings) or inconsistent bookkeeping.

    ``loaded`` is sorted by shard number. Shards differ in their data slice by
    design, so only their weights and recipe fingerprints must be equal; each
    shard's slice must be the one ``evaluate --shard k/n`` takes, hold that many
    samples, and no source index may appear in two shards.
    """
    first, _, first_fp, first_dir = loaded[0]
    fix = "merge only the shards of one evaluation"
    keys = ("recipe", "stages", "norm", "eps", "seed", "model", "data", "differs_from_standard", "sanity", "bounds",
            "max_examples", "defense", "num_classes")
    total, size = first["shard"]["n"], first["shard"]["size"]
    for report, _, fingerprint, d in loaded[1:]:
        for part in ("weights", "recipe"):
            if getattr(fingerprint, part) != getattr(first_fp, part):
                raise mismatch(part, getattr(first_fp, part), getattr(fingerprint, part), f"shard {d}",
                               f"shard {first_dir}", fix)
        different = [k for k in keys if report.get(k) != first.get(k)]
        if report["shard"]["n"] != total or report["shard"]["size"] != size:
            different.append("shard")
        if different:
            raise ConfigError(f"{d} is not a shard of the same evaluation as {first_dir} (differs in "
                              f"{', '.join(different)})")
    found = [r["shard"]["k"] for r, _, _, _ in loaded]
    if found != list(range(total)):
        raise ConfigError(f"merge-reports needs each shard 0..{total - 1} of {total} exactly once, got {found}")
    seen: Dict[int, str] = {}
    for report, _, _, d in loaded:
        shard = report["shard"]
        part = shard_slice(size, (shard["k"], total))
        count = part.stop - part.start
        if (shard["start"], shard["stop"]) != (part.start, part.stop) or report.get("n") != count \
                or len(report.get("per_sample", ())) != count:
            raise ConfigError(f"shard {d}: its bookkeeping is inconsistent (shard {shard['k']}/{total} of {size} "
                              f"samples is positions {part.start}..{part.stop}, {count} samples; the report says "
                              f"{shard['start']}..{shard['stop']}, n={report.get('n')}, "
                              f"{len(report.get('per_sample', ()))} per-sample rows); {fix}")
        for row in report["per_sample"]:
            index = row.get("index")
            if index in seen:
                raise ConfigError(f"source index {index} appears in shard {seen[index]} and in shard {d}; {fix}")
            seen[index] = d


def merge_reports(dirs: Sequence[str | Path], out_dir: Optional[str | Path] = None) -> Dict[str, Any]:
    """Combine shard reports into the report of the whole evaluation.

    The aggregate is recomputed from the per-sample data, so the result equals
    the unsharded run's report except for :data:`~gluon_robust.evaluation.report.TIMING_KEYS`
    (timing is summed over shards; ``args`` lists the merged directories) and
    the data fingerprint: the merged report's ``fingerprint["data"]`` is the
    SHA-256 of its shards' data fingerprints (:func:`~gluon_robust.fingerprint.combine`),
    which ``merged_shards`` lists with each shard's slice.

    Parameters
    ----------
    dirs : sequence of path
        Report directories of the shards ``0/N`` to ``N-1/N``, in any order.
    out_dir : path, optional
        Where to write the merged report (all or nothing).

    Raises
    ------
    ConfigError
        If a report is missing, is not a shard, has no run fingerprint, or the
        shards do not belong together (other weights or recipe fingerprint, or
        settings), miss one, or their bookkeeping (slices, sizes, indices) is inconsistent.
    """
    if not dirs:
        raise ConfigError("merge-reports needs at least one report directory")
    if out_dir is not None:
        check_out_dir("out_dir", out_dir)
        check_distinct_paths("out_dir", out_dir, dirs, "shard directory")
    loaded = []
    for d in dirs:
        report, ex, fingerprint = _load_shard(Path(d))
        loaded.append((report, ex, fingerprint, str(d)))
    merged, examples = merge_loaded(loaded)
    if out_dir is not None:
        bounds = tuple(merged["bounds"])
        with staged_output(out_dir) as stage:
            write_report(stage, merged, examples, bounds=bounds)
    return merged


#: Read one shard directory: ``(report, examples, fingerprint)`` (see :func:`merge_reports` for what is refused).
load_shard = _load_shard


def merge_loaded(
    loaded: Sequence[Tuple[Dict[str, Any], Dict[str, np.ndarray], RunFingerprint, str]],
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Merge shards already read by :func:`load_shard`: ``(report, examples, fingerprint, directory)`` each.

    Returns the merged report and its examples; the checks and the result are
    :func:`merge_reports`'s. The cluster client (:mod:`gluon_robust.cluster`)
    merges its chunks with it.
    """
    if not loaded:
        raise ConfigError("merge-reports needs at least one report directory")
    loaded = sorted(loaded, key=lambda item: item[0]["shard"]["k"])
    _check_shards(loaded)
    first, _, first_fp, _ = loaded[0]
    shards = [{"k": r["shard"]["k"], "start": r["shard"]["start"], "stop": r["shard"]["stop"], "data": fp.data}
              for r, _, fp, _ in loaded]
    fingerprint = RunFingerprint(weights=first_fp.weights, data=combine([s["data"] for s in shards]),
                                 recipe=first_fp.recipe)
    result = RobustnessResult.concatenate([RobustnessResult.from_report(r) for r, _, _, _ in loaded])
    merged = _finish(
        result.to_report(), stages=[], recipe=first["recipe"], norm=first["norm"], eps=first["eps"], seed=first["seed"],
        differs=first["differs_from_standard"], measurements={k: v for k, v in first["sanity"].items() if k != "probe_warnings"},
        probe_warnings=first["sanity"]["probe_warnings"], model=first["model"], data=first["data"],
        args={"merged_from": [d for _, _, _, d in loaded]}, shard=None, fingerprint=fingerprint, bounds=first["bounds"],
        max_examples=first["max_examples"], defense=first.get("defense"), num_classes=first.get("num_classes"),
        class_names=first.get("class_names"),
    )
    merged["stages"] = first["stages"]
    merged.update(batch_size=first.get("batch_size"), batch_size_source=first.get("batch_size_source"),
                  merged_shards=shards)
    parts = [ex for _, ex, _, _ in loaded]
    examples = {k: np.concatenate([p[k] for p in parts]) for k in EXAMPLE_KEYS}
    limit = int(first.get("max_examples", 8))
    order = np.argsort(examples["index"], kind="stable")[:limit]
    examples = {k: v[order] for k, v in examples.items()}
    sanity.emit(merged["warnings"])
    return merged, examples


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

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..data import as_source, check_fits
from ..errors import ConfigError
from ..interrupts import set_hint
from ..reporting import prepare_output_dir, staged_output
from ..memory import resolve_batch_size
from ..validation import check_eps
from . import sanity
from .recipes import build_attacks, custom_recipe, deviations, get_recipe
from .report import EXAMPLE_KEYS, empty_examples, write_report
from .robustness import evaluate_attacks
from .run_info import _class_names, _defense, _finish, _with_eot, run_fingerprint
from .shards import _check_shard, load_shard, merge_loaded, merge_reports, parse_shard, shard_slice
from .state import STATE_NAME, StateFile

__all__ = ["evaluate", "merge_reports", "parse_shard", "shard_slice", "run_fingerprint", "prepare", "Prepared",
           "merge_loaded", "load_shard"]

logger = logging.getLogger(__name__)


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
    _check_run_options(probe_size, max_examples, resume, out_dir)
    prepared = prepare(model, source, labels, recipe=recipe, attacks=attacks, eps=eps, norm=norm,
                       batch_size=batch_size, seed=seed, max_memory=max_memory)
    source, stages, recipe_name, built = prepared.source, prepared.stages, prepared.recipe, prepared.built
    differs, norm, eps = prepared.differs, prepared.norm, prepared.eps
    batch_size, batch_source = prepared.batch_size, prepared.batch_source
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    measurements, probe_warnings = _cached_probe(model, source, norm, seed, probe_size, probe_cache)
    source, shard_info = _shard_of(source, shard)

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


def _check_run_options(probe_size: Any, max_examples: Any, resume: bool, out_dir: Optional[str | Path]) -> None:
    """Refuse a bad probe size or example count, and ``resume`` without ``out_dir``."""
    if isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 1:
        raise ConfigError(f"probe_size must be a positive integer, got {probe_size!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ConfigError(f"max_examples must be a non-negative integer, got {max_examples!r}")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir, where the state file is")


def _cached_probe(model: Any, source: Any, norm: str, seed: int, probe_size: int,
                  probe_cache: Optional[Dict[Any, Any]]) -> Tuple[Dict[str, Any], List[str]]:
    """The sanity probe's measurements and warnings, from ``probe_cache`` when it holds them (then kept there)."""
    probe_key = (norm, int(seed), probe_size)
    if probe_cache is not None and probe_key in probe_cache:
        return probe_cache[probe_key]
    measurements, probe_warnings = sanity_probe(model, source, norm=norm, seed=seed, probe_size=probe_size)
    if probe_cache is not None:
        probe_cache[probe_key] = (measurements, probe_warnings)
    return measurements, probe_warnings


def _shard_of(source: Any, shard: Optional[Tuple[int, int]]) -> Tuple[Any, Optional[Dict[str, int]]]:
    """The slice of ``source`` that shard ``(k, n)`` evaluates and its bookkeeping; ``source`` itself without one."""
    if shard is None:
        return source, None
    full_size = len(source)
    k, n_shards = _check_shard(shard)
    part = shard_slice(full_size, (k, n_shards))
    return source.subset(part), {"k": k, "n": n_shards, "start": part.start, "stop": part.stop, "size": full_size}

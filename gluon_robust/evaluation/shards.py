"""Sharded evaluation: the slice each shard evaluates, and the merge of shard reports into one.

``evaluate --shard k/n`` evaluates the ``k``-th of ``n`` contiguous slices
(:func:`shard_slice`); :func:`merge_reports` checks that the shards belong to
one evaluation (equal weights and recipe fingerprints, settings, consistent
bookkeeping) and recomputes the report of the whole run from their per-sample
data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from ..fingerprint import RunFingerprint, combine, mismatch
from ..integrity import load_npz, refuse_pickle
from ..reporting import staged_output
from ..validation import check_distinct_paths, check_out_dir
from . import sanity
from .report import EXAMPLE_KEYS, write_report
from .robustness import RobustnessResult
from .run_info import _finish

__all__ = ["parse_shard", "shard_slice", "merge_reports", "merge_loaded", "load_shard"]


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


#: Read one shard directory: ``(report, examples, fingerprint)`` (see :func:`merge_reports` for what is refused).
load_shard = _load_shard


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

"""The per-sample arrays of an attack run and the files ``attack`` writes from them.

:func:`attack_rows` attacks every correctly classified sample of a source and
returns its per-sample arrays (see :data:`SAMPLE_ARRAYS`);
:func:`attack_summary` and :func:`write_per_sample` turn them into
``summary.json`` and ``per_sample.csv``. The single-process ``attack``
(:func:`gluon_robust.jobs.run_attack_job`) and ``attack --cluster``
(:mod:`gluon_robust.cluster.attack`, which concatenates the arrays of its
chunks) share them, so both write the same files.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .io import atomic_write_text
from .reporting import save_png, versions

__all__ = ["AdversarialSink", "MemoryWriter", "attack_rows", "attack_summary", "write_per_sample", "class_names",
           "save_pair", "NPZ_ARRAYS", "SAMPLE_ARRAYS"]

#: The small arrays of ``adversarial.npz``, in the order they are written after ``x_adv``.
NPZ_ARRAYS = ("y", "index", "clean_pred", "adv_pred", "success", "distance", "target")

#: Every per-sample array of a run (``x_adv`` aside): those of ``adversarial.npz`` and the attack's bookkeeping.
SAMPLE_ARRAYS = NPZ_ARRAYS + ("attacked", "broken", "queries")


class MemoryWriter:
    """The ``x_adv`` batches of a run, kept in memory (a cluster chunk's), with the interface of ``StreamingNpzWriter``."""

    def __init__(self, sample_shape: Tuple[int, ...]) -> None:
        self.sample_shape = tuple(sample_shape)
        self.parts: list = []

    def write(self, chunk: np.ndarray) -> None:
        """Keep one batch of ``x_adv``."""
        self.parts.append(np.asarray(chunk, np.float32))

    def abort(self) -> None:
        """Drop what was kept."""
        self.parts = []

    def array(self) -> np.ndarray:
        """Every batch kept, in order."""
        if not self.parts:
            return np.zeros((0,) + self.sample_shape, np.float32)
        return np.concatenate(self.parts)


class AdversarialSink:
    """Collects per-sample attack outputs batch by batch and passes ``x_adv`` to ``writer``.

    PNG pairs of the first ``max_images`` attacked samples go to ``images_dir`` (None: none).
    """

    def __init__(self, writer: Any, n: int, images_dir: Optional[Path], max_images: int,
                 bounds: Tuple[float, float], class_names: Optional[Sequence[str]] = None) -> None:
        self.writer = writer
        self.success = np.zeros(n, bool)
        self.adv_pred = np.full(n, -1, np.int64)
        self.targets = np.full(n, -1, np.int64)
        self.images_dir = images_dir
        self.max_images = max_images
        self.bounds = bounds
        self.class_names = class_names
        self._pos = 0

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
                save_pair(self.images_dir, int(batch.index[j]), int(batch.y[j]), int(self.adv_pred[rows[j]]),
                          batch.x[j], x_adv[j], self.bounds, self.class_names)


def save_pair(images_dir: Path, index: int, label: int, adv_pred: int, x: np.ndarray, x_adv: np.ndarray,
              bounds: Tuple[float, float], names: Optional[Sequence[str]]) -> None:
    """Write the PNG pair of one attacked sample: ``INDEX_labelL_clean.png`` and ``INDEX_labelL_adv_predP.png``."""
    stem = f"{index:06d}_label{_tag(label, names)}"
    save_png(images_dir / f"{stem}_clean.png", x, bounds)
    save_png(images_dir / f"{stem}_adv_pred{_tag(adv_pred, names)}.png", x_adv, bounds)


def _tag(label: int, names: Optional[Sequence[str]]) -> str:
    """``3`` or, with class names, ``3-tench`` (a file-name-safe form of the name)."""
    if names is None or not 0 <= label < len(names):
        return str(label)
    return f"{label}-{_file_safe(names[label])}"


def _file_safe(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``-`` and ``_`` only (``great white shark`` -> ``great_white_shark``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "class"


def _csv_field(text: str) -> str:
    """A CSV field, quoted when it holds a comma or a quote."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def class_names(model: Any) -> Optional[list]:
    """The model's class names, or None."""
    names = getattr(model, "class_table", None)
    return list(names.names) if names is not None else None


def attack_rows(model: Any, source: Any, attack: Any, *, attack_name: str, batch_size: int,
                target_mode: Optional[str], seed: int, sink: AdversarialSink, progress: bool) -> Dict[str, np.ndarray]:
    """Attack every correctly classified sample of ``source``: the per-sample arrays of :data:`SAMPLE_ARRAYS`.

    ``x_adv`` goes batch by batch to ``sink`` (see :class:`AdversarialSink`);
    random targets (``target_mode="random"``) are drawn per sample from ``seed``.
    """
    from .attacks.targets import choose_targets
    from .evaluation.robustness import evaluate_attacks

    targets: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = (
        None if target_mode is None else functools.partial(choose_targets, model, mode=target_mode, seed=seed)
    )
    result = evaluate_attacks(model, source, [(attack_name, attack)], batch_size=batch_size, cascade=False,
                              targets=targets, on_batch=sink, progress=progress, desc=f"attack {attack_name}")
    outcome = result.outcomes[0]
    return {"y": result.labels, "index": result.index, "clean_pred": result.clean_pred, "adv_pred": sink.adv_pred,
            "success": sink.success, "distance": outcome.distance, "target": sink.targets,
            "attacked": outcome.attacked, "broken": outcome.broken, "queries": outcome.queries}


def attack_summary(arrays: Dict[str, np.ndarray], *, model: Any, data: str, attack: Any, attack_name: str,
                   options: Optional[Dict[str, Any]], target_mode: Optional[str], seed: int, batch_size: int,
                   batch_source: str, seconds: float) -> Dict[str, Any]:
    """The run's ``summary.json``, from its per-sample ``arrays`` (see :func:`attack_rows`)."""
    from .evaluation import sanity

    n = len(arrays["y"])
    correct = arrays["clean_pred"] == arrays["y"]
    attacked, success, distance, queries = (arrays[k] for k in ("attacked", "success", "distance", "queries"))
    summary = {
        "n": n,
        "clean_accuracy": float(correct.mean()) if n else 0.0,
        "robust_accuracy": float((correct & ~arrays["broken"]).mean()) if len(correct) else 0.0,
        "success_rate": float(success[attacked].mean()) if attacked.any() else 0.0,
        "attacked": int(attacked.sum()),
        # correctly classified samples a fixed --target left out because it is their own label
        "not_attacked_target_is_label": int((correct & ~attacked).sum()) if target_mode is not None else 0,
        "seconds": round(seconds, 3),
        "max_perturbation": float(np.nanmax(distance)) if attacked.any() else 0.0,
        "median_perturbation": float(np.nanmedian(distance[success])) if success.any() else None,
        "mean_queries": float(queries[attacked].mean()) if attacked.any() else 0.0,
        "max_queries": int(queries.max()) if attacked.any() else 0,
        "norm": attack.norm.name,
        "eps": attack.eps,
        "attack": {"name": attack_name, "class": type(attack).__name__, "options": options or {}},
        "targeted": target_mode is not None,
        "target": target_mode,
        "model": model.describe(),
        "data": data,
        "seed": seed,
        "batch_size": batch_size,
        "batch_size_source": batch_source,
        "versions": versions(),
        "warnings": sanity.accuracy_warnings(n, int(correct.sum()), getattr(model, "num_classes", None)),
    }
    if hasattr(model, "defense_report"):  # a DefendedClassifier: say which gradient path the attack used
        summary["defense"] = dict(model.defense_report(), attack_eot_samples=getattr(attack, "eot_samples", None))
    return summary


def write_per_sample(path: Path, arrays: Dict[str, np.ndarray], names: Optional[Sequence[str]]) -> None:
    """Write ``per_sample.csv``: one row per sample, with three class-name columns when ``names`` are known."""
    attacked, distance, targets, adv_pred = (arrays[k] for k in ("attacked", "distance", "target", "adv_pred"))
    lines = ["index,label,clean_prediction,attacked,adversarial_prediction,success,distance,target"]
    if names is not None:  # class names: three more columns, after the original ones
        lines[0] += ",label_name,clean_prediction_name,adversarial_prediction_name"
    for i in range(len(arrays["y"])):
        dist = "" if np.isnan(distance[i]) else f"{distance[i]:.6g}"
        target = "" if targets[i] < 0 else str(targets[i])
        line = (
            f"{arrays['index'][i]},{arrays['y'][i]},{arrays['clean_pred'][i]},{int(attacked[i])},"
            f"{adv_pred[i] if attacked[i] else ''},{int(arrays['success'][i])},{dist},{target}"
        )
        if names is not None:
            adv = names[adv_pred[i]] if attacked[i] and 0 <= adv_pred[i] < len(names) else ""
            line += "," + ",".join(_csv_field(n) for n in (names[arrays["y"][i]], names[arrays["clean_pred"][i]], adv))
        lines.append(line)
    atomic_write_text(path, "\n".join(lines) + "\n")

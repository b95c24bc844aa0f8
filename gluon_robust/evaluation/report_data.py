"""The numbers of an evaluation report, read from ``report.json``: per-stage accuracies and counts, labels.

Every per-stage figure has one denominator: all evaluated samples. In the
cascade (Croce & Hein 2020, https://arxiv.org/abs/2003.01690) a stage attacks
only the samples every earlier stage of its threat model left robust, so the
figure after a stage is cumulative, and after the last stage it is the worst case.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["stage_accuracies", "stage_counts", "grid_budget", "class_label", "EXAMPLE_KEYS", "TIMING_KEYS",
           "DENOMINATOR_NOTE", "comparable", "empty_examples"]


#: Arrays of ``examples.npz``: clean and adversarial images, label, adversarial prediction, source index, attack.
EXAMPLE_KEYS = ("x", "x_adv", "y", "pred", "index", "attack")


#: Report fields that depend on the run, not on the result: timing, arguments, the shard and the cluster
#: (its chunks and per-worker timing).
TIMING_KEYS = ("seconds", "args", "shard", "cluster")


def comparable(report: Dict[str, Any]) -> Dict[str, Any]:
    """``report`` without :data:`TIMING_KEYS` (top level and per attack): what sharding must not change."""
    out = {k: v for k, v in report.items() if k not in TIMING_KEYS}
    out["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in report["attacks"]]
    return out


def empty_examples(sample_shape: tuple) -> Dict[str, np.ndarray]:
    """An empty set of examples for images of ``sample_shape``."""
    return {
        "x": np.zeros((0,) + tuple(sample_shape), np.float32), "x_adv": np.zeros((0,) + tuple(sample_shape), np.float32),
        "y": np.zeros(0, np.int64), "pred": np.zeros(0, np.int64), "index": np.zeros(0, np.int64),
        "attack": np.zeros(0, np.int64),
    }


def stage_accuracies(report: Dict[str, Any]) -> List[float]:
    """Per attack stage, the robust accuracy after it, over *all* evaluated samples (cumulative in the cascade).

    Reads every version of ``report.json``: the ``cumulative_robust_accuracy``
    of current reports; for older ones, recomputed from their per-sample rows
    (the older per-stage ``robust_accuracy`` counted only what the stage itself
    broke), or their ``robust_accuracy_after``, which had the same meaning.

    Raises
    ------
    ConfigError
        For an old report with neither per-sample rows nor ``robust_accuracy_after``.
    """
    attacks = report["attacks"]
    if all("cumulative_robust_accuracy" in a for a in attacks):
        return [float(a["cumulative_robust_accuracy"]) for a in attacks]
    if report.get("per_sample") is not None:
        from .robustness import RobustnessResult

        return RobustnessResult.from_report(report).cumulative_robust_accuracy()
    if all("robust_accuracy_after" in a for a in attacks):
        return [float(a["robust_accuracy_after"]) for a in attacks]
    raise ConfigError("the report has no cumulative robust accuracy per stage (cumulative_robust_accuracy) and no "
                      "per-sample rows to recompute it from; evaluate again")


def _eps_text(eps: Optional[float]) -> str:
    return "-" if eps is None else f"{eps:g}"


#: What every per-stage percentage of the tables means.
DENOMINATOR_NOTE = ("robust accuracy after a stage: the fraction of all {n} evaluated samples still classified "
                    "correctly after it and every earlier stage of its threat model (each stage attacks only the "
                    "samples still robust)")


def stage_counts(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per threat model, how all ``n`` samples end: misclassified clean, broken first by each stage, or robust.

    Returns
    -------
    list of dict
        ``{"norm", "eps", "misclassified", "broken": {stage name: count}, "robust"}``
        per threat model, in the order of ``report["worst_case"]``; the counts
        of one threat model add up to ``n``.
    """
    samples = report["per_sample"]
    out = []
    for w in report["worst_case"]:
        ks = [k for k, a in enumerate(report["attacks"]) if (a["norm"], a["eps"]) == (w["norm"], w["eps"])]
        broken: Dict[str, int] = {report["attacks"][k]["name"]: 0 for k in ks}
        misclassified = robust = 0
        for s in samples:
            if s["label"] != s["clean_prediction"]:
                misclassified += 1
                continue
            first = next((k for k in ks if s["outcomes"][k]["broken"]), None)
            if first is None:
                robust += 1
            else:
                broken[report["attacks"][first]["name"]] += 1
        out.append({"norm": w["norm"], "eps": w["eps"], "misclassified": misclassified, "broken": broken,
                    "robust": robust})
    return out


def class_label(value: int, class_names: Optional[Sequence[str]]) -> str:
    """``'3'``, or ``'3 (tench)'`` when the model's class names are known."""
    value = int(value)
    if class_names is None or not 0 <= value < len(class_names):
        return str(value)
    return f"{value} ({class_names[value]})"


def grid_budget(report: Dict[str, Any], examples: Dict[str, np.ndarray]) -> str:
    """The threat model(s) of the image grid's examples, e.g. ``"linf eps=0.3"``."""
    attacks = report["attacks"]
    seen = dict.fromkeys((attacks[int(k)]["norm"], attacks[int(k)]["eps"]) for k in examples["attack"])
    return ", ".join(f"{norm} eps={eps:g}" if eps is not None else f"{norm} (unbounded)" for norm, eps in seen)

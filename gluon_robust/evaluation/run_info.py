"""What an evaluation's report says about its run: settings, fingerprint, defence and sanity warnings."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..fingerprint import RunFingerprint, attack_settings, data_fingerprint, recipe_fingerprint, weights_fingerprint
from ..reporting import versions
from . import sanity
from .recipes import describe

__all__ = ["run_fingerprint"]

logger = logging.getLogger("gluon_robust.evaluation.evaluate")


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

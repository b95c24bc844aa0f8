"""Named evaluation recipes: fixed lists of attack stages, as data.

The recipes follow AutoAttack (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks",
ICML, https://arxiv.org/abs/2003.01690): APGD-CE, then APGD-T on the
targeted DLR loss, then FAB-T, then Square. A recipe is a tuple of
:class:`Stage` entries (a report label, a registered attack name, and keyword
arguments); :func:`build_attacks` turns it into configured attacks for each
epsilon. Nothing here branches on the recipe name, and the orchestrator never
changes an attack once built.

``standard`` states every hyperparameter of AutoAttack's standard version
explicitly, so that a change of an attack's default can never change it. A
recipe that is lighter than ``standard`` says so in its name (``-lite``), and
:func:`deviations` lists, from the stage data alone, exactly what it changes;
reports record that list.

Attack names are resolved when the recipe is built, not when this module is
imported. A stage whose attack is not registered is a :class:`ConfigError`:
silently dropping a stage would report a weaker evaluation under the recipe's
name.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

from ..attacks.base import Attack
from ..errors import ConfigError

__all__ = [
    "Stage", "RECIPES", "RECIPE_SUMMARIES", "get_recipe", "custom_recipe", "build_attacks", "recipe_names",
    "describe", "deviations",
]

logger = logging.getLogger(__name__)


class Stage(NamedTuple):
    """One stage of a recipe.

    Attributes
    ----------
    label : str
        The name the stage has in the report (``"apgd-ce"``).
    attack : str
        The registered attack name (``"apgd"``).
    options : mapping
        Keyword arguments of the attack, besides ``eps``, ``norm`` and ``seed``.
    """

    label: str
    attack: str
    options: Mapping[str, Any]


def _stage(label: str, attack: str, **options: Any) -> Stage:
    return Stage(label, attack, MappingProxyType(dict(options)))


#: APGD as AutoAttack runs it: 100 iterations, momentum 0.75, checkpoint threshold 0.75, one run.
_APGD = {"steps": 100, "restarts": 1, "rho": 0.75, "alpha": 0.75}
#: FAB as AutoAttack runs it (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
#: boundary attack"): 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9.
_FAB = {"steps": 100, "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}
#: Square as AutoAttack runs it: 5,000 iterations after the start (AutoAttack's ``n_queries=5000`` counts
#: iterations; our ``max_queries`` counts the start too), p_init 0.8, the schedule not rescaled to the budget.
_SQUARE = {"max_queries": 5001, "p_init": 0.8, "rescale_schedule": False}

_STANDARD = (
    _stage("apgd-ce", "apgd", loss="ce", **_APGD),
    _stage("apgd-t", "apgd-t", loss="dlr", n_target_classes=9, **_APGD),
    _stage("fab-t", "fab-t", n_target_classes=9, **_FAB),
    _stage("square", "square", **_SQUARE),
)


def _with(stage: Stage, **changes: Any) -> Stage:
    return Stage(stage.label, stage.attack, MappingProxyType({**stage.options, **changes}))


_APGD_CE, _APGD_T, _FAB_T, _SQUARE_STAGE = _STANDARD

#: The named recipes.
RECIPES: Mapping[str, Tuple[Stage, ...]] = MappingProxyType({
    "standard": _STANDARD,
    "plus": (
        _stage("apgd-ce", "apgd", loss="ce", **{**_APGD, "restarts": 5}),
        _stage("apgd-dlr", "apgd", loss="dlr", **{**_APGD, "restarts": 5}),
        _stage("fab", "fab", **{**_FAB, "restarts": 5}),
        _SQUARE_STAGE,
        _APGD_T,
        _FAB_T,
    ),
    "rand": (
        _stage("apgd-ce", "apgd", loss="ce", eot_samples=20, **_APGD),
        _stage("apgd-dlr", "apgd", loss="dlr", eot_samples=20, **_APGD),
    ),
    "standard-lite": (
        _stage("pgd-40", "pgd", steps=40),
        _APGD_CE,
        _with(_APGD_T, n_target_classes=3),
        # At a fifth of the budget, AutoAttack's p_init 0.8 on the raw schedule spends most queries on large
        # squares: on the bundled digits at eps 0.1 it fools 13% where the paper's small start stretched to the
        # budget fools 36%. A lite recipe should be lighter, not blunter.
        _with(_SQUARE_STAGE, max_queries=1000, p_init=0.05, rescale_schedule=True),
    ),
    "apgd-lite": (
        _with(_APGD_CE, steps=20),
        _with(_APGD_T, steps=20, n_target_classes=3),
    ),
})

#: One line per recipe, for ``gluon-robust list recipes`` and the reports.
RECIPE_SUMMARIES: Mapping[str, str] = MappingProxyType({
    "standard": "AutoAttack's standard version, parameter for parameter: APGD-CE, APGD-T (DLR, 9 targets), "
                "FAB-T (9 targets), Square (5,000 iterations, p_init 0.8, schedule not rescaled)",
    "plus": "AutoAttack's plus version: APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square, "
            "APGD-T, FAB-T",
    "rand": "AutoAttack's rand version, for randomised defences: APGD-CE and APGD-DLR with 20 EOT samples",
    "standard-lite": "lighter than standard, for demos: PGD-40 first, APGD-T on 3 targets, no FAB-T, "
                     "Square with 1,000 queries (p_init 0.05, schedule rescaled to the budget)",
    "apgd-lite": "lighter than standard, for quick checks: APGD-CE and APGD-T (3 targets) with 20 iterations, "
                 "no FAB-T or Square",
})


def recipe_names() -> List[str]:
    """The names of the recipes."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Tuple[Stage, ...]:
    """The stages of a named recipe; ConfigError listing the valid names otherwise."""
    key = str(name).strip().lower()
    if key not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(recipe_names())}")
    return RECIPES[key]


def custom_recipe(names: Sequence[str]) -> Tuple[Stage, ...]:
    """A recipe of registered attacks with their default hyperparameters, e.g. ``["fgsm", "pgd"]``.

    An unknown name is a ConfigError listing the valid names.
    """
    from ..attacks import ATTACKS

    for name in names:
        if str(name).strip():
            ATTACKS.resolve(str(name))
    stages = tuple(_stage(str(n).strip().lower(), str(n).strip().lower()) for n in names if str(n).strip())
    if not stages:
        raise ConfigError(f"attacks must name at least one attack, got {list(names)!r}")
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"attacks must not repeat a name, got {labels!r}")
    return stages


def check_stages(stages: Sequence[Stage]) -> None:
    """ConfigError naming the first stage whose attack is not registered, and the valid attack names."""
    from ..attacks import ATTACKS

    for stage in stages:
        if stage.attack not in ATTACKS:
            raise ConfigError(
                f"stage {stage.label!r} names attack {stage.attack!r}, which is not registered; "
                f"valid attacks: {', '.join(ATTACKS.names())}"
            )


def build_attacks(
    stages: Sequence[Stage],
    *,
    eps: Sequence[float],
    norm: str,
    seed: int = 0,
) -> List[Tuple[str, Attack]]:
    """Configure every stage for every epsilon, in the order eps-major then stage.

    Parameters
    ----------
    stages : sequence of Stage
        A recipe. Every stage's attack must be registered (see :func:`check_stages`).
    eps : sequence of float
        The budgets of the sweep (pixel units), each > 0.
    norm : str
        ``"linf"`` or ``"l2"``.
    seed : int
        Seed of every attack.

    Returns
    -------
    list of (label, Attack)
        Ready to pass to :func:`~gluon_robust.evaluation.robustness.evaluate_attacks`.
        An attack without an ``eps`` parameter (a minimal-perturbation attack
        such as DeepFool) is built once, as its own unbounded threat model.

    Raises
    ------
    ConfigError
        For a bad epsilon list or a stage whose attack is not registered.
    """
    from ..attacks import ATTACKS, make_attack

    if not eps:
        raise ConfigError("eps must hold at least one budget, got an empty list")
    for value in eps:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"eps must be positive numbers, got {value!r}")
    if len(set(eps)) != len(eps):
        raise ConfigError(f"eps must not repeat a value, got {list(eps)!r}")
    check_stages(stages)
    out: List[Tuple[str, Attack]] = []
    unbounded_done = set()
    for e in eps:
        for stage in stages:
            params = ATTACKS.parameters(stage.attack)
            options = dict(stage.options, norm=norm, seed=seed)
            if "eps" in params:
                options["eps"] = float(e)
            elif stage.label in unbounded_done:
                continue
            else:
                unbounded_done.add(stage.label)
            out.append((stage.label, make_attack(stage.attack, options)))
    return out


def describe(stages: Sequence[Stage]) -> List[Dict[str, Any]]:
    """JSON-ready description of a recipe."""
    return [{"label": s.label, "attack": s.attack, "options": dict(s.options)} for s in stages]


def deviations(stages: Sequence[Stage]) -> List[str]:
    """What a recipe changes with respect to ``standard``, one phrase per change; empty for ``standard`` itself.

    Computed from the stage data: a standard stage that is missing (``"no fab-t"``), an option whose value
    differs (``"apgd-t n_target_classes=3 (standard: 9)"``), an option standard leaves unset, and a stage
    standard does not have (``"adds pgd-40"``). Stages are matched by label; the phrases follow the recipe's
    order, missing stages last.

    Examples
    --------
    >>> deviations(RECIPES["standard-lite"])
    ['adds pgd-40', 'apgd-t n_target_classes=3 (standard: 9)', 'square max_queries=1000 (standard: 5001)', 'square p_init=0.05 (standard: 0.8)', 'square rescale_schedule=True (standard: False)', 'no fab-t']
    """
    reference = {s.label: s for s in _STANDARD}
    given = {s.label: s for s in stages}
    out: List[str] = []
    for stage in stages:
        base = reference.get(stage.label)
        if base is None or base.attack != stage.attack:
            out.append(f"adds {stage.label}" if base is None else f"{stage.label} runs {stage.attack!r} "
                       f"(standard: {base.attack!r})")
            continue
        for key in sorted(set(base.options) | set(stage.options)):
            ours, theirs = stage.options.get(key, "unset"), base.options.get(key, "unset")
            if ours != theirs:
                out.append(f"{stage.label} {key}={ours} (standard: {theirs})")
    return out + [f"no {label}" for label in reference if label not in given]

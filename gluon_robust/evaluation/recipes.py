"""Named evaluation recipes: fixed lists of attack stages, as data.

The recipes follow AutoAttack (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks",
ICML, https://arxiv.org/abs/2003.01690): APGD-CE, then APGD-T on the
targeted DLR loss, then FAB-T, then Square. A recipe is a tuple of
:class:`Stage` entries (a report label, a registered attack name, and keyword
arguments); :func:`build_attacks` turns it into configured attacks for each
epsilon. Nothing here branches on the recipe name, and the orchestrator never
changes an attack once built.

Attack names are resolved when the recipe is built, not when this module is
imported: a stage whose attack is not registered (a black-box attack still
being added, say) is skipped with a warning.
"""

from __future__ import annotations

import logging
import warnings
from types import MappingProxyType
from typing import Any, List, Mapping, NamedTuple, Sequence, Tuple

from ..attacks.base import Attack
from ..errors import ConfigError

__all__ = ["Stage", "RECIPES", "get_recipe", "custom_recipe", "build_attacks", "recipe_names", "describe"]

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


_STANDARD = (
    _stage("apgd-ce", "apgd", loss="ce", steps=100),
    _stage("apgd-t", "apgd-t", loss="dlr", steps=100, n_target_classes=9),
    _stage("fab-t", "fab-t", steps=100, n_target_classes=9),
    _stage("square", "square", max_queries=5000),
)

#: The named recipes. ``standard`` is AutoAttack's standard version; ``plus`` adds restarts and the untargeted variants;
#: ``rand`` uses Expectation over Transformation (Athalye et al. 2018) for
#: randomised models; ``fast`` is for quick checks only; ``demo`` puts the
#: classic PGD-40 in front of a lighter ``standard`` (APGD-T on 3 target classes, no
#: FAB-T, Square with 1,000 queries), to show in a few minutes what each later stage adds.
RECIPES: Mapping[str, Tuple[Stage, ...]] = MappingProxyType({
    "standard": _STANDARD,
    "demo": (
        _stage("pgd-40", "pgd", steps=40),
        _stage("apgd-ce", "apgd", loss="ce", steps=100),
        _stage("apgd-t", "apgd-t", loss="dlr", steps=100, n_target_classes=3),
        _stage("square", "square", max_queries=1000),
    ),
    "plus": (
        _stage("apgd-ce", "apgd", loss="ce", steps=100, restarts=5),
        _stage("apgd-dlr", "apgd", loss="dlr", steps=100, restarts=5),
        _stage("fab", "fab", steps=100, restarts=5),
        _stage("square", "square", max_queries=5000),
        _stage("apgd-t", "apgd-t", loss="dlr", steps=100, n_target_classes=9),
        _stage("fab-t", "fab-t", steps=100, n_target_classes=9),
    ),
    "rand": (
        _stage("apgd-ce", "apgd", loss="ce", steps=100, eot_samples=20),
        _stage("apgd-dlr", "apgd", loss="dlr", steps=100, eot_samples=20),
    ),
    "fast": (
        _stage("apgd-ce", "apgd", loss="ce", steps=20),
        _stage("apgd-t", "apgd-t", loss="dlr", steps=20, n_target_classes=3),
    ),
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

    Unlike a named recipe's stages, an unknown name here is a ConfigError listing the valid names.
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


def build_attacks(
    stages: Sequence[Stage],
    *,
    eps: Sequence[float],
    norm: str,
    seed: int = 0,
) -> Tuple[List[Tuple[str, Attack]], List[str]]:
    """Configure every stage for every epsilon, in the order eps-major then stage.

    Parameters
    ----------
    stages : sequence of Stage
        A recipe.
    eps : sequence of float
        The budgets of the sweep (pixel units), each > 0.
    norm : str
        ``"linf"`` or ``"l2"``.
    seed : int
        Seed of every attack.

    Returns
    -------
    attacks : list of (label, Attack)
        Ready to pass to :func:`~gluon_robust.evaluation.robustness.evaluate_attacks`.
        An attack without an ``eps`` parameter (a minimal-perturbation attack
        such as DeepFool) is built once, as its own unbounded threat model.
    skipped : list of str
        Labels of stages whose attack is not registered.
    """
    from ..attacks import ATTACKS, make_attack

    if not eps:
        raise ConfigError("eps must hold at least one budget, got an empty list")
    for value in eps:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"eps must be positive numbers, got {value!r}")
    if len(set(eps)) != len(eps):
        raise ConfigError(f"eps must not repeat a value, got {list(eps)!r}")
    out: List[Tuple[str, Attack]] = []
    skipped: List[str] = []
    unbounded_done = set()
    for e in eps:
        for stage in stages:
            if stage.attack not in ATTACKS:
                if stage.label not in skipped:
                    skipped.append(stage.label)
                    message = f"attack {stage.attack!r} is not registered; stage {stage.label!r} skipped"
                    logger.warning(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                continue
            params = ATTACKS.parameters(stage.attack)
            options = dict(stage.options, norm=norm, seed=seed)
            if "eps" in params:
                options["eps"] = float(e)
            elif stage.label in unbounded_done:
                continue
            else:
                unbounded_done.add(stage.label)
            out.append((stage.label, make_attack(stage.attack, options)))
    return out, skipped


def describe(stages: Sequence[Stage]) -> List[dict]:
    """JSON-ready description of a recipe."""
    return [{"label": s.label, "attack": s.attack, "options": dict(s.options)} for s in stages]


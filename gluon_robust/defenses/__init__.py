"""Preprocessing defences with declared gradient paths, for adaptive evaluation.

Every defence is a :class:`~gluon_robust.defenses.base.Preprocessor` on
pixel-space batches that declares how attacks get gradients through it
(``exact``, ``bpda`` or ``eot``); :class:`DefendedClassifier` chains them in
front of a classifier and is attacked like one. Build chains from spec
strings such as ``"jpeg:quality=75+bitdepth:bits=4"`` with
:func:`parse_defense_spec`, or in one step with :func:`defend`.

Examples
--------
>>> from gluon_robust.defenses import defend
>>> defended = defend(model, "jpeg:quality=75", gradient="bpda")
>>> result = get_attack("pgd", eps=0.1, eot_samples=defended.eot_samples)(defended, x, y)
>>> defended.defense_report()["summary"]
'bpda (jpeg: bpda)'
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import ConfigError
from ..registry import Registry, parse_value
from .base import (
    DEFAULT_EOT_SAMPLES, GRADIENT_MODES, GRADIENT_PATHS, BPDAFunction, DefendedClassifier, DefenseChain,
    Preprocessor, bpda,
)
from .bitdepth import BitDepthReduction
from .ensemble import ENSEMBLE_MODES, Ensemble
from .gaussian_noise import GaussianNoise
from .jpeg import JPEGCompression
from .resize_pad import RandomResizePad
from .smoothing import (
    ABSTAIN, Certification, SmoothedClassifier, SoftSmoothed, certified_accuracy, clopper_pearson_lower, decide,
)
from .smoothing_filters import MedianFilter, SpatialSmoothing
from .tv import TVMinimization
from .wrap import WrapDefense

__all__ = [
    "DEFENSES", "Preprocessor", "DefenseChain", "DefendedClassifier", "BPDAFunction", "bpda", "defend",
    "parse_defense_spec", "get_defense", "defense_names", "GRADIENT_MODES", "GRADIENT_PATHS", "DEFAULT_EOT_SAMPLES",
    "JPEGCompression", "BitDepthReduction", "MedianFilter", "SpatialSmoothing", "GaussianNoise", "RandomResizePad",
    "TVMinimization", "WrapDefense",
    # model-level defences (not preprocessors, so not in DEFENSES)
    "Ensemble", "ENSEMBLE_MODES", "SmoothedClassifier", "SoftSmoothed", "Certification", "ABSTAIN",
    "certified_accuracy", "clopper_pearson_lower", "decide",
]

# A TypeError is a missing required parameter, such as wrap's fn.
DEFENSES: Registry[Preprocessor] = Registry("defense", name_errors=True, no_options="it takes no parameters",
                                            keyword_only=True, check_required=False,
                                            wrap_errors=(ConfigError, TypeError))
DEFENSES.register("jpeg", "jpeg-compression")(JPEGCompression)
DEFENSES.register("bitdepth", "bit-depth", "bits")(BitDepthReduction)
DEFENSES.register("median", "median-filter")(MedianFilter)
DEFENSES.register("spatial", "spatial-smoothing", "blur")(SpatialSmoothing)
DEFENSES.register("noise", "gaussian-noise", "gaussian")(GaussianNoise)
DEFENSES.register("resize-pad", "resize_pad", "randomization", "xie")(RandomResizePad)
DEFENSES.register("tv", "tv-min", "total-variation")(TVMinimization)
DEFENSES.register("wrap")(WrapDefense)


def defense_names() -> List[str]:
    """Names of every registered defence."""
    return DEFENSES.names()


def get_defense(name: str, **kwargs: Any) -> Preprocessor:
    """Build a registered defence with keyword hyperparameters; unknown ones are a ConfigError naming them."""
    return DEFENSES.make(name, kwargs)


def parse_defense_spec(spec: str) -> List[Preprocessor]:
    """Build the defences of a spec string: ``name:key=value,key=value+name2:...``.

    Parameters
    ----------
    spec : str
        For example ``"jpeg:quality=75"``, ``"bitdepth:bits=4+median:size=3"``.
        Values are numbers (``8/255`` allowed; no ``+`` in exponents, since
        ``+`` separates defences), ``true``/``false``, ``none`` or strings;
        dashes in keys become underscores (``max-ratio``).

    Returns
    -------
    list of Preprocessor
        In chain order.

    Raises
    ------
    ConfigError
        Naming the unknown defence (with the valid names), the unknown
        parameter (with the accepted ones) or the bad value.
    """
    text = str(spec).strip()
    if not text:
        raise ConfigError("empty defense spec; expected name:key=value,...+name2:... "
                          f"with names {', '.join(defense_names())}")
    defenses = []
    for part in text.split("+"):
        name, _, args = part.strip().partition(":")
        if not name.strip():
            raise ConfigError(f"empty defense in spec {spec!r}; expected name:key=value,...+name2:...")
        kwargs: Dict[str, Any] = {}
        for item in (a for a in args.split(",") if a.strip()):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"defense {name.strip()}: parameters must be key=value, got {item.strip()!r}")
            if key in kwargs:
                raise ConfigError(f"defense {name.strip()}: parameter {key} given twice")
            kwargs[key] = parse_value(value)
        defenses.append(get_defense(name.strip(), **kwargs))
    return defenses


def defend(
    model: Any,
    defenses: Union[str, Preprocessor, Sequence[Preprocessor], DefenseChain],
    *,
    gradient: str = "auto",
    eot_samples: Optional[int] = None,
) -> DefendedClassifier:
    """Put a chain of defences in front of ``model``.

    Parameters
    ----------
    model : Classifier
        The undefended model.
    defenses : str, Preprocessor, sequence of Preprocessor or DefenseChain
        A spec string (see :func:`parse_defense_spec`) or built defences.
    gradient : str
        ``"auto"`` (each defence's declared path), ``"naive"``, ``"bpda"`` or ``"eot"``.
    eot_samples : int, optional
        Gradients per step when the mode uses EOT (default
        :data:`~gluon_robust.defenses.base.DEFAULT_EOT_SAMPLES`).

    Returns
    -------
    DefendedClassifier
    """
    if isinstance(defenses, str):
        chain: Any = parse_defense_spec(defenses)
    elif isinstance(defenses, Preprocessor):
        chain = [defenses]
    else:
        chain = defenses
    return DefendedClassifier(model, chain, gradient=gradient, eot_samples=eot_samples)

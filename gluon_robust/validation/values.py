"""Checks of parameter values: numbers, choices, labels, sample counts and budgets.

Every check raises an :class:`InvalidValue` (a :class:`~gluon_robust.errors.ConfigError`)
or a :class:`~gluon_robust.errors.DataError` *before* any work starts. An
:class:`InvalidValue` knows the name of the parameter it is about, so the
command line can say ``--step-size must be > 0, got nan`` where the Python API
says ``step_size must be > 0, got nan`` (see :func:`flag_message`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "InvalidValue", "MissingValue", "check_real", "check_positive", "check_int", "check_probability", "check_choice",
    "check_bool", "check_labels", "check_sample_count", "check_eps", "check_source_labels", "flag_message",
    "FLAG_NAMES", "MAX_SAMPLE_COUNT", "FLOAT32_TINY", "FLOAT32_MAX",
]

logger = logging.getLogger("gluon_robust.validation")

#: Parameters whose command-line flag is not ``--`` + the name with dashes.
FLAG_NAMES: Dict[str, str] = {"out_dir": "--out"}

#: The largest per-sample count (noise samples, queries) accepted: far beyond any real use, and small
#: enough that counters and their products stay exact in int64 and float64.
MAX_SAMPLE_COUNT = 10 ** 9

#: The smallest positive normal float32: smaller positive hyperparameters are refused (MXNet stores them as float32).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: The largest float32: larger hyperparameters overflow in MXNet's operators.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class InvalidValue(ConfigError):
    """A value the user gave is invalid.

    Parameters
    ----------
    name : str
        The Python parameter name (``step_size``); the CLI shows its flag (``--step-size``).
    value : object
        The value received.
    requirement : str
        What the value must be, completing "NAME must be ...".
    hint : str, optional
        A suggestion appended to the message ("did you mean 8/255 = 0.0314?").
    """

    def __init__(self, name: str, value: Any, requirement: str, *, hint: str = "") -> None:
        self.name = name
        self.value = value
        self.requirement = requirement
        self.hint = hint
        super().__init__(self.render(name))

    def render(self, label: str) -> str:
        """The message with ``label`` (a parameter name or a flag) as its subject."""
        message = f"{label} must be {self.requirement}, got {_show(self.value)}"
        return f"{message}; {self.hint}" if self.hint else message


class MissingValue(InvalidValue):
    """A required parameter was not given (``--eps`` for ``attack --attack pgd``).

    Parameters
    ----------
    name : str
        The Python parameter name; the CLI shows its flag.
    owner : str
        What needs it ("attack pgd"), completing "NAME is required by ...".
    """

    def __init__(self, name: str, owner: str) -> None:
        self.owner = owner
        super().__init__(name, None, f"given ({owner} has no default for it)")

    def render(self, label: str) -> str:
        return f"{label} is required by {self.owner}, which has no default for it"


def _show(value: Any) -> str:
    """A short representation of a bad value for a one-line message."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def flag_message(err: Exception, flags: Iterable[str]) -> str:
    """The message of ``err`` naming the command-line flag when it is one of ``flags``.

    Parameters
    ----------
    err : Exception
        Any error; only an :class:`InvalidValue` is rewritten.
    flags : iterable of str
        The option strings the command accepts (``--eps``, ``--step-size``...).
    """
    if not isinstance(err, InvalidValue):
        return str(err)
    known = set(flags)
    flag = FLAG_NAMES.get(err.name, "--" + err.name.replace("_", "-"))
    return err.render(flag) if flag in known else str(err)


# ------------------------------------------------------------------ numbers
def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_real(
    name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """A finite real number in ``[low, high]`` (either end open on request, either omitted).

    Raises
    ------
    InvalidValue
        For NaN, infinities, non-numbers and values outside the range.
    """
    ok = _is_real(value) and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is None and high is None:
            span = "a finite number"
        elif high is None:
            span = f"a number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            span = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            span = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InvalidValue(name, value, span)
    return float(value) + 0.0  # -0.0 becomes 0.0


def check_positive(name: str, value: Any, *, allow_zero: bool = False, upper: Optional[float] = None) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``), at most ``upper`` when given."""
    if not (_is_real(value) and math.isfinite(float(value))):
        raise InvalidValue(name, value, "a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidValue(name, value, ">= 0" if allow_zero else "> 0")
    if value > FLOAT32_MAX:
        raise InvalidValue(name, value, f"at most {FLOAT32_MAX:.4g} (the largest float32)")
    if 0 < value < FLOAT32_TINY:  # a float32 tensor or an MXNet operator parameter cannot hold it
        raise InvalidValue(name, value, f"{'0 or ' if allow_zero else ''}at least {FLOAT32_TINY:.3g} (the smallest "
                                        "normal float32)")
    if upper is not None and value > upper:
        raise InvalidValue(name, value, f"<= {upper}")
    return float(value) + 0.0  # -0.0 becomes 0.0


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer (not a bool, not a float) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
        maximum is not None and value > maximum
    ):
        span = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidValue(name, value, f"an integer {span}")
    return int(value)


def check_probability(name: str, value: Any) -> float:
    """A number strictly between 0 and 1 (a false-positive rate, a failure probability)."""
    if not (_is_real(value) and 0.0 < value < 1.0):
        raise InvalidValue(name, value, "a number strictly between 0 and 1")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """A string option among ``choices`` (compared lower-case, stripped); returns the normalised choice."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in choices:
        raise InvalidValue(name, value, f"one of {', '.join(choices)}")
    return key


def check_bool(name: str, value: Any) -> bool:
    """A real bool (``True``/``False``, NumPy bools too), not a truthy number or string."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidValue(name, value, "True or False")
    return bool(value)


# ------------------------------------------------------------------ labels and sizes
def check_labels(name: str, labels: Any, classes: Optional[int], n: Optional[int] = None) -> np.ndarray:
    """Integer class labels in ``[0, classes)``, as int64.

    Parameters
    ----------
    name : str
        What the labels are (``y``, ``target``, ``labels of npz:data.npz``).
    labels : array-like
        The labels; floats are accepted when they hold whole numbers.
    classes : int or None
        The number of classes of the model (no upper check when None).
    n : int, optional
        The expected number of labels.

    Raises
    ------
    DataError
        Naming the first offending label and its position.
    """
    arr = np.asarray(labels.asnumpy() if hasattr(labels, "asnumpy") else labels)
    if n is not None and arr.shape != (n,):
        raise DataError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.ndim != 1:
        raise DataError(f"{name} must be a vector of class labels, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise DataError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    numeric = arr.astype(np.float64)
    bad = ~np.isfinite(numeric) | (numeric != np.round(numeric)) | (numeric < 0)
    if classes is not None:
        bad |= numeric >= classes
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        span = f"[0, {classes})" if classes is not None else "[0, inf)"
        raise DataError(f"{name} must be integer class labels in {span}; label {arr[i]!r} at position {i} "
                        f"({int(bad.sum())} of {arr.size} out of range)")
    return numeric.astype(np.int64)


def check_source_labels(source: Any, classes: Optional[int]) -> None:
    """Refuse a data source whose labels fall outside ``[0, classes)``, before any sample is attacked.

    Sources that know their labels without decoding images (arrays, npz
    files, image folders) are checked whole; others are checked batch by
    batch by the attacks.
    """
    labels = getattr(source, "labels", None)
    if labels is not None and classes is not None:
        check_labels(f"labels of {getattr(source, 'name', 'the data')}", labels, int(classes))


def check_sample_count(name: str, value: Any, *, maximum: int = MAX_SAMPLE_COUNT) -> int:
    """A per-sample count (noise samples, queries) that is an integer ``>= 1`` and at most ``maximum``.

    Counts stay integers: a float such as ``1e11`` is refused rather than
    truncated, and a count past ``maximum`` would take longer than any run can,
    or overflow the counters kept for it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidValue(name, value, "a whole number")
    if value < 1:
        raise InvalidValue(name, value, "an integer >= 1")
    if value > maximum:
        raise InvalidValue(name, value, f"an integer <= {maximum:,}")
    return int(value)


# ------------------------------------------------------------------ budgets
def check_eps(
    name: str, eps: Any, norm: str, bounds: Sequence[float], sample_shape: Optional[Sequence[int]] = None,
) -> Optional[float]:
    """An attack budget in the units of the model's input range, checked before an attack runs.

    Epsilons are in pixel units, the scale of ``bounds``: ``8/255`` for
    ``[0, 1]`` images, ``8`` for ``[0, 255]`` images. The check catches the
    commonest unit mistake, ``--eps 8`` for a ``[0, 1]`` model:

    * ``linf``: an epsilon above ``high - low`` lets every pixel take any
      value, so it is refused, with the hint ``did you mean 8/255 = 0.0314?``
      when the number over 255 would fit;
    * ``l2`` and ``l1``: an epsilon above the diameter of the input box,
      ``sqrt(d) * (high - low)`` or ``d * (high - low)`` for ``d`` input values
      (when ``sample_shape`` is known), can never bind. It is allowed (a large
      budget is a legitimate way to ask for an unbounded attack) but logged as
      a warning;
    * ``l0`` budgets count pixels and are not checked here.

    Parameters
    ----------
    name : str
        The parameter (``eps``, ``val_eps``); the CLI shows its flag.
    eps : float or None
        The budget; None (a minimal-perturbation attack) passes unchecked.
    norm : str
        ``linf``, ``l2``, ``l1`` or ``l0`` (or an alias such as ``inf``).
    bounds : (float, float)
        The model's input range ``(low, high)``.
    sample_shape : sequence of int, optional
        The shape of one input, for the L2/L1 diameter.

    Returns
    -------
    float or None
        The budget as a float.

    Raises
    ------
    InvalidValue
        For a negative or non-finite budget, or an L-inf budget above ``high - low``.
    """
    if eps is None:
        return None
    value = check_positive(name, eps, allow_zero=True)
    from ..attacks.norms import get_norm  # late: the attacks import this module

    measure = get_norm(norm)
    kind = measure.name
    low, high = (float(b) for b in bounds)
    width = high - low
    if measure.coordinatewise and value > width * (1 + 1e-9):
        fits = 0 < value / 255 <= width
        hint = f"did you mean {value:g}/255 = {value / 255:.4f}?" if fits else ""
        raise InvalidValue(name, eps, f"at most {width:g} for the linf norm (the width of the model's input range "
                                      f"[{low:g}, {high:g}])", hint=hint)
    if not measure.coordinatewise and sample_shape is not None:
        d = int(np.prod(tuple(sample_shape)))
        diameter = measure.diameter(width, d)
        if diameter is not None and value > diameter:
            logger.warning("%s=%g can never bind: the %s diameter of the input range [%g, %g] over %d values is %.4g, "
                           "so the attack is unbounded", name, value, kind, low, high, d, diameter)
    return value

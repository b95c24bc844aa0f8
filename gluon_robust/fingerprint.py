"""Run fingerprints: SHA-256 digests that say which weights, data and recipe produced a result.

An evaluation is identified by three digests, a :class:`RunFingerprint`:

``weights``
    The model's parameters (every array: its place in the model, dtype, shape
    and raw bytes), see :func:`weights_fingerprint`.
``data``
    The evaluated slice: the source index, label and image array of every
    sample, in order, see :func:`data_fingerprint`.
``recipe``
    Every setting that changes the numbers besides the weights and the data:
    the recipe's stages, every attack's full hyperparameters, the epsilons,
    norm, seed, the model's bounds and its defences, see :func:`recipe_fingerprint`.

``evaluate --resume`` refuses a state file whose fingerprint differs from the
run's, and ``merge-reports`` refuses shards whose weights or recipe differ,
naming the part and both short digests (see :func:`mismatch`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping as MappingABC
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Type

import numpy as np

from .errors import ConfigError, DataError, GluonRobustError
from .integrity import arrays_digest

__all__ = [
    "RunFingerprint", "PARTS", "short", "weights_fingerprint", "data_fingerprint", "recipe_fingerprint",
    "attack_settings", "combine", "mismatch",
]

logger = logging.getLogger(__name__)

#: The parts of a fingerprint, in the order they are checked.
PARTS = ("weights", "data", "recipe")

#: Hex digits shown in messages.
SHORT = 12

_HEX = re.compile(r"^[0-9a-f]{64}$")
_COUNTER = re.compile(r"\d+")


@dataclass(frozen=True)
class RunFingerprint:
    """The SHA-256 digests (64 hex digits) that identify a run.

    Attributes
    ----------
    weights : str
        Of the model's parameters (:func:`weights_fingerprint`).
    data : str
        Of the evaluated data slice (:func:`data_fingerprint`).
    recipe : str
        Of the attack settings (:func:`recipe_fingerprint`).
    """

    weights: str
    data: str
    recipe: str

    def __post_init__(self) -> None:
        for part in PARTS:
            value = getattr(self, part)
            if not isinstance(value, str) or not _HEX.match(value):
                raise ConfigError(f"fingerprint {part} must be a SHA-256 of 64 lower-case hex digits, got {value!r}")

    def to_dict(self) -> Dict[str, str]:
        """``{"weights": ..., "data": ..., "recipe": ...}``, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any, where: str) -> "RunFingerprint":
        """Read a fingerprint written by :meth:`to_dict`.

        Parameters
        ----------
        value : object
            The parsed JSON value.
        where : str
            What holds it, for messages (``"shard report runs/s0/report.json"``).

        Raises
        ------
        ConfigError
            If ``value`` is not a mapping of the three parts to SHA-256 digests.
        """
        if not isinstance(value, MappingABC) or any(part not in value for part in PARTS):
            raise ConfigError(f"{where} has no run fingerprint {{weights, data, recipe}} (written by an older "
                              f"version, or edited): got {value!r}")
        try:
            return cls(**{part: value[part] for part in PARTS})
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def differences(self, other: "RunFingerprint") -> List[str]:
        """The parts (of :data:`PARTS`, in order) whose digests differ from ``other``'s."""
        return [part for part in PARTS if getattr(self, part) != getattr(other, part)]

    def __str__(self) -> str:
        return ", ".join(f"{part} {short(getattr(self, part))}" for part in PARTS)


def short(digest: str) -> str:
    """The first :data:`SHORT` hex digits of a digest, for messages."""
    return str(digest)[:SHORT]


def mismatch(part: str, expected: str, found: str, what: str, reference: str, fix: str) -> GluonRobustError:
    """The one-line error for a fingerprint ``part`` that differs.

    Parameters
    ----------
    part : str
        One of :data:`PARTS`.
    expected : str
        The digest of ``reference``.
    found : str
        The digest of ``what``.
    what : str
        What is refused, e.g. ``"the evaluation state out/evaluate.state.npz"``.
    reference : str
        What it was compared with, e.g. ``"this run"``.
    fix : str
        What the user should do, ending the message.

    Returns
    -------
    GluonRobustError
        :class:`~gluon_robust.errors.DataError` for ``data``, else :class:`~gluon_robust.errors.ConfigError`.
    """
    error: Type[GluonRobustError] = DataError if part == "data" else ConfigError
    return error(f"{what} was made with different {part} than {reference} ({part} fingerprint {short(found)} "
                 f"vs {short(expected)}); {fix}")


# ------------------------------------------------------------------ weights
class _Arrays(MappingABC):
    """Named arrays fetched one at a time (so that hashing a model never holds two copies of it)."""

    def __init__(self, fetch: Dict[str, Any]) -> None:
        self._fetch = fetch

    def __getitem__(self, key: str) -> np.ndarray:
        return self._fetch[key]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._fetch)

    def __len__(self) -> int:
        return len(self._fetch)


def _parameters(model: Any) -> List[Tuple[str, Any]]:
    """The model's parameters in registration order, by structural path (or Gluon name)."""
    if hasattr(model, "_collect_params_with_prefix"):
        return list(model._collect_params_with_prefix().items())  # noqa: SLF001 -- the names save_parameters uses
    if hasattr(model, "collect_params"):
        return list(model.collect_params().items())
    return []


def _host_array(name: str, param: Any) -> np.ndarray:
    try:
        data = param.list_data()[0]
    except (RuntimeError, AttributeError) as err:  # deferred initialisation: no value yet
        raise ConfigError(f"cannot fingerprint the model: parameter {name} has no value ({err})") from None
    if getattr(data, "stype", "default") != "default":
        data = data.tostype("default")
    return np.ascontiguousarray(data.asnumpy())


def weights_fingerprint(model: Any) -> str:
    """SHA-256 of every parameter array of a Gluon model.

    Each parameter enters with its position in the model's registration order,
    its structural path (``net.conv0_weight``) with Gluon's instance counters
    masked (``net.conv#_weight``, so that the same network built twice in one
    process hashes the same), its dtype, shape and raw bytes (see
    :func:`~gluon_robust.integrity.arrays_digest`). The arrays are copied to the
    host one at a time.

    Parameters
    ----------
    model : mxnet.gluon.Block
        The model. An object without Gluon parameters is hashed as its type
        name only, with a warning.

    Returns
    -------
    str
        64 hex digits; changing any value by one ulp, a dtype, a shape or the
        order of the parameters changes it.

    Raises
    ------
    ConfigError
        If a parameter has no value yet (deferred initialisation).
    """
    params = _parameters(model)
    if not params:
        logger.warning("%s has no Gluon parameters: its weights fingerprint covers only its type",
                       type(model).__qualname__)
        return hashlib.sha256(f"no-parameters:{type(model).__qualname__}".encode("utf-8")).hexdigest()
    fetch = {f"{k:08d} {_COUNTER.sub('#', name)}": (lambda n=name, p=param: _host_array(n, p))
             for k, (name, param) in enumerate(params)}
    return arrays_digest(_Arrays(fetch))


# ------------------------------------------------------------------ data
def data_fingerprint(source: Any, batch_size: int = 256) -> str:
    """SHA-256 of a data source's samples as they are evaluated: source indices, labels and images, in order.

    The source is read once, in batches of ``batch_size`` (only one batch is
    held); the digest does not depend on ``batch_size``.

    Parameters
    ----------
    source : DataSource
        The evaluated slice (see :mod:`gluon_robust.data`).
    batch_size : int
        Samples per read.

    Returns
    -------
    str
        64 hex digits.
    """
    streams = {"index": hashlib.sha256(), "y": hashlib.sha256(), "x": hashlib.sha256()}
    dtypes = {key: set() for key in streams}
    count = 0
    start = time.perf_counter()
    for batch in source.batches(batch_size):
        for key in streams:
            value = np.ascontiguousarray(getattr(batch, key))
            dtypes[key].add(value.dtype.str)
            streams[key].update(value.tobytes())
        count += len(batch.y)
    header = {"n": count, "sample_shape": [int(s) for s in source.sample_shape],
              "dtypes": {key: sorted(v) for key, v in dtypes.items()}}
    digest = hashlib.sha256(_canonical(header).encode("utf-8"))
    for key in ("index", "y", "x"):
        digest.update(streams[key].digest())
    logger.debug("data fingerprint of %d samples in %.2f s", count, time.perf_counter() - start)
    return digest.hexdigest()


# ------------------------------------------------------------------ recipe
def _stable(value: Any) -> Any:
    """``value`` as JSON whose text is the same in every process (no addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"array": value.dtype.str, "shape": list(value.shape), "sha256": arrays_digest({"a": value})}
    if isinstance(value, MappingABC):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if hasattr(value, "collect_params"):  # a model inside an attack (a transfer surrogate): its weights
        return {"model": type(value).__qualname__, "weights": weights_fingerprint(value)}
    if callable(value) and hasattr(value, "__qualname__"):  # a loss function
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def attack_settings(attack: Any) -> Dict[str, Any]:
    """Every public attribute of a configured attack (its hyperparameters, defaults included), JSON-ready."""
    params = {k: _stable(v) for k, v in sorted(vars(attack).items()) if not k.startswith("_")}
    return {"class": type(attack).__qualname__, "name": getattr(attack, "name", None), "params": params}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def recipe_fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (sorted keys, exact float text).

    Parameters
    ----------
    settings : mapping
        What changes the numbers besides weights and data; objects are turned
        into stable JSON first (functions by qualified name, models by their
        weights fingerprint).

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256(_canonical(_stable(settings)).encode("utf-8")).hexdigest()


def combine(digests: Sequence[str]) -> str:
    """SHA-256 of an ordered list of digests (the data of a merged run: its shards' data fingerprints)."""
    return hashlib.sha256(_canonical(list(digests)).encode("utf-8")).hexdigest()

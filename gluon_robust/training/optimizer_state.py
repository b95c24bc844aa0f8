"""The optimizer state of a Gluon Trainer as named arrays and JSON, without pickle.

MXNet's ``Trainer.save_states`` pickles the optimizer, and unpickling a
planted file would run its code; :func:`optimizer_state` writes the state of
the Trainer's updaters as arrays plus a JSON description instead, and
:func:`load_optimizer_state` restores it into the updaters directly. Used by
:mod:`gluon_robust.training.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError

__all__ = ["init_trainer_store", "optimizer_state", "load_optimizer_state"]

#: Optimizer attributes not restored from their scalar value: handled apart, or fixed by the Trainer.
_OPTIMIZER_SPECIAL = frozenset({"lr_scheduler", "param_dict", "idx2name", "sym_info", "lr_mult", "wd_mult",
                                "_all_index_update_counts", "_index_update_count"})


def init_trainer_store(trainer: gluon.Trainer) -> None:
    """Initialise the Trainer's store and parameters now (MXNet does it lazily, in the first ``step``)."""
    if not trainer._kv_initialized:  # noqa: SLF001 -- no public way to initialise a Trainer's store
        trainer._init_kvstore()  # noqa: SLF001
    if trainer._params_to_init:  # noqa: SLF001
        trainer._init_params()  # noqa: SLF001


def _updaters(trainer: gluon.Trainer) -> List[Any]:
    """The updaters holding the Trainer's optimizer state, after initialising its store as ``save_states`` does."""
    init_trainer_store(trainer)
    if trainer._update_on_kvstore:  # noqa: SLF001
        updater = getattr(trainer._kvstore, "_updater", None)  # noqa: SLF001
        if updater is None:
            raise ConfigError("the optimizer state lives on the parameter servers (dist_async): it cannot be "
                              "checkpointed; use dist_sync")
        return [updater]
    return list(trainer._updaters)  # noqa: SLF001


def _distinct(items: List[Any]) -> List[Any]:
    """``items`` without repeats of the same object, in order."""
    seen: Dict[int, Any] = {}
    for item in items:
        seen.setdefault(id(item), item)
    return list(seen.values())


def _pairs(mapping: Dict[Any, Any], what: str) -> List[List[Any]]:
    """``mapping`` as ``[key, value]`` pairs, which keep int and str keys apart in JSON."""
    for key in mapping:
        if type(key) not in (int, str):
            raise ConfigError(f"cannot checkpoint the optimizer's {what}: key {key!r} is neither int nor str")
    return [[key, value] for key, value in mapping.items()]


def _encode(value: Any, name: str, arrays: Dict[str, mx.nd.NDArray]) -> Any:
    """A JSON description of one parameter's state (None, an NDArray or nested tuples/lists); arrays go to ``arrays``."""
    if value is None:
        return None
    if isinstance(value, mx.nd.NDArray):
        arrays[name] = value
        return {"array": name}
    if isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [_encode(item, f"{name}/{i}", arrays) for i, item in enumerate(value)]}
    raise ConfigError(f"cannot checkpoint optimizer state of type {type(value).__name__} (at {name})")


def _decode(node: Any, arrays: Dict[str, mx.nd.NDArray], where: str) -> Any:
    """Inverse of :func:`_encode`; every array is a fresh copy."""
    if node is None:
        return None
    if isinstance(node, dict) and len(node) == 1:
        (kind, value), = node.items()
        if kind == "array" and isinstance(value, str):
            if value not in arrays:
                raise ConfigError(f"{where} lacks the optimizer state array {value!r}")
            return arrays[value].copy()
        if kind in ("tuple", "list") and isinstance(value, list):
            items = [_decode(item, arrays, where) for item in value]
            return tuple(items) if kind == "tuple" else items
    raise ConfigError(f"{where} holds a malformed optimizer state entry {str(node)[:60]}")


def optimizer_state(trainer: gluon.Trainer) -> Tuple[Dict[str, Any], Dict[str, mx.nd.NDArray]]:
    """The Trainer's optimizer state as a JSON-able description and named NDArrays, without pickle.

    The per-parameter states of the first updater (on every context they
    are equal, as ``save_states`` assumes) become arrays named
    ``state/N/...``; the description holds their layout, the optimizer's
    class, its scalar attributes (learning rate, weight decay, momentum,
    ``num_update``, ``begin_num_update``...), its per-device update counts
    and its learning-rate and weight-decay multipliers.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        A Trainer whose optimizer runs in this process (not ``dist_async``).

    Returns
    -------
    description : dict
        JSON-able.
    arrays : dict of str to NDArray
        For ``mx.nd.save``.
    """
    updater = _updaters(trainer)[0]
    optimizer = updater.optimizer
    if optimizer.lr_scheduler is not None:
        raise ConfigError("cannot checkpoint an optimizer with an lr_scheduler; set the learning rate per epoch")
    arrays: Dict[str, mx.nd.NDArray] = {}
    states = [[key, _encode(value, f"state/{n}", arrays)]
              for n, (key, value) in enumerate(_pairs(updater.states, "state"))]
    counts = optimizer._all_index_update_counts  # noqa: SLF001
    current = next((device for device, count in counts.items() if count is optimizer._index_update_count), None)  # noqa: SLF001
    scalars = {key: value for key, value in vars(optimizer).items()
               if key not in _OPTIMIZER_SPECIAL and (value is None or type(value) in (bool, int, float, str))}
    description = {
        "class": type(optimizer).__name__,
        "scalars": scalars,
        "lr_mult": _pairs(optimizer.lr_mult, "lr_mult"),
        "wd_mult": _pairs(optimizer.wd_mult, "wd_mult"),
        "index_update_counts": [[device, _pairs(count, "update counts")] for device, count in _pairs(counts, "devices")],
        "current_device": current,
        "index_update_count": None if current is not None else _pairs(optimizer._index_update_count, "update counts"),  # noqa: SLF001
        "states": states,
    }
    return description, arrays


def load_optimizer_state(trainer: gluon.Trainer, description: Dict[str, Any], path: Path) -> None:
    """Restore what :func:`optimizer_state` described, with its arrays from ``path``, into every updater.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        Built with the same optimizer and parameters as the saving run's.
    description : dict
        The description :func:`optimizer_state` returned.
    path : path
        The ``mx.nd.save`` file of its arrays, already checked against the checkpoint's manifest
        (:meth:`CheckpointManager.load`), which refuses pickles.

    Raises
    ------
    ConfigError
        If the checkpoint was made with another optimizer or is malformed.
    """
    where = f"checkpoint optimizer state {path}"
    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError:
        raise ConfigError(f"{where} is not an MXNet array file; delete the checkpoint directory to start over") from None
    arrays = loaded if isinstance(loaded, dict) else {}
    updaters = _updaters(trainer)
    optimizer = trainer._optimizer  # noqa: SLF001
    try:
        if description["class"] != type(optimizer).__name__:
            raise ConfigError(f"{where} belongs to optimizer {description['class']}, not "
                              f"{type(optimizer).__name__}; resume with the same optimizer")
        scalars = dict(description["scalars"])
        unknown = sorted(set(scalars) - set(vars(optimizer)))
        if unknown:
            raise ConfigError(f"{where} sets attributes {unknown} that optimizer {type(optimizer).__name__} lacks")
        not_scalar = sorted(k for k, v in scalars.items() if v is not None and type(v) not in (bool, int, float, str))
        if not_scalar:
            raise ConfigError(f"{where} gives optimizer attributes {not_scalar} values that are not numbers or text; "
                              "delete the checkpoint directory to start over")
        counts = {device: dict(pairs) for device, pairs in description["index_update_counts"]}
        current = description["current_device"]
        current_count = counts[current] if current is not None else dict(description["index_update_count"])
        lr_mult, wd_mult = dict(description["lr_mult"]), dict(description["wd_mult"])
        states = [(key, node) for key, node in description["states"]]
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: malformed optimizer description ({err!r}); delete the checkpoint directory "
                          "to start over") from None
    for opt in _distinct([optimizer] + [u.optimizer for u in updaters]):
        for key, value in scalars.items():
            setattr(opt, key, value)
        opt.lr_mult, opt.wd_mult = dict(lr_mult), dict(wd_mult)
        opt._all_index_update_counts = {device: dict(count) for device, count in counts.items()}  # noqa: SLF001
        opt._index_update_count = (opt._all_index_update_counts[current] if current is not None  # noqa: SLF001
                                   else dict(current_count))
    for updater in updaters:
        updater.states = {key: _decode(node, arrays, where) for key, node in states}
        updater.states_synced = dict.fromkeys(updater.states, False)  # moved to each weight's context on first use

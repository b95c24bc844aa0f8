"""Atomic training checkpoints: a run killed at any moment resumes from a complete one.

A checkpoint is a *generation* of files in one directory::

    ckpt-000012.params   the network (save_parameters; BatchNorm statistics of the first context)
    ckpt-000012.states   the optimizer (Trainer.save_states: momenta, update counts)
    ckpt-000012.npz      arrays: method state (e.g. Free-AT's perturbation), BatchNorm
                         statistics of the other contexts, the guard's best weights
    latest.json          {"generation": 12, "state": {...}}: loop position, metrics, RNG keys

Every file is written to a temporary name and renamed into place
(:mod:`gluon_robust.io`), and ``latest.json`` is renamed last, so it always
names a complete generation; older generations are deleted afterwards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..errors import ConfigError
from ..io import atomic_save, atomic_save_npz, atomic_write_json

__all__ = ["Checkpoint", "CheckpointManager", "split_arrays", "join_arrays", "structural_params", "running_stats_arrays", "restore_into"]

logger = logging.getLogger(__name__)

_LATEST = "latest.json"


def split_arrays(value: Any, prefix: str, arrays: Dict[str, np.ndarray]) -> Any:
    """Replace every NumPy array inside nested dicts/lists by a reference, collecting the arrays."""
    if isinstance(value, np.ndarray):
        arrays[prefix] = value
        return {"__array__": prefix}
    if isinstance(value, dict):
        return {str(k): split_arrays(v, f"{prefix}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def join_arrays(value: Any, arrays: Dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`split_arrays`."""
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [join_arrays(v, arrays) for v in value]
    return value


@dataclass
class Checkpoint:
    """One loaded generation: its number, loop state and the paths of its files."""

    generation: int
    state: Dict[str, Any]
    params: Path
    states: Path
    arrays: Dict[str, np.ndarray]


class CheckpointManager:
    """Write and read checkpoint generations in ``directory``.

    Parameters
    ----------
    directory : str or path
        Created on the first save.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _paths(self, generation: int) -> Tuple[Path, Path, Path]:
        stem = self.directory / f"ckpt-{generation:06d}"
        return stem.with_suffix(".params"), stem.with_suffix(".states"), stem.with_suffix(".npz")

    def latest_generation(self) -> Optional[int]:
        """The generation ``latest.json`` names, or None if there is no checkpoint."""
        path = self.directory / _LATEST
        if not path.is_file():
            return None
        try:
            return int(json.loads(path.read_text())["generation"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"checkpoint index {path} is unreadable ({err}); delete the directory to start over") from None

    def save(
        self,
        net: gluon.Block,
        trainer: gluon.Trainer,
        state: Dict[str, Any],
        arrays: Dict[str, np.ndarray],
    ) -> int:
        """Write a new generation and point ``latest.json`` at it; returns its number."""
        previous = self.latest_generation()
        generation = 0 if previous is None else previous + 1
        params, states, npz = self._paths(generation)
        atomic_save(params, net.save_parameters, suffix=".params")
        atomic_save(states, trainer.save_states, suffix=".states")
        atomic_save_npz(npz, **arrays)
        atomic_write_json(self.directory / _LATEST, {"generation": generation, "state": state})
        for path in self.directory.glob("ckpt-*"):
            if not path.name.startswith(f"ckpt-{generation:06d}."):
                path.unlink(missing_ok=True)
        logger.debug("checkpoint %d written to %s", generation, self.directory)
        return generation

    def load(self) -> Optional[Checkpoint]:
        """The latest complete generation, or None."""
        generation = self.latest_generation()
        if generation is None:
            return None
        params, states, npz = self._paths(generation)
        for path in (params, states, npz):
            if not path.is_file():
                raise ConfigError(f"checkpoint {generation} in {self.directory} lacks {path.name}; "
                                  "delete the directory to start over")
        state = json.loads((self.directory / _LATEST).read_text())["state"]
        with np.load(npz, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        return Checkpoint(generation, state, params, states, arrays)


def structural_params(net: gluon.Block) -> Dict[str, gluon.Parameter]:
    """The network's parameters by structural name (``features.0.weight``), as ``save_parameters`` names them.

    Unlike ``collect_params()`` names, these do not depend on how many blocks
    of the same class the process created, so they match across processes.
    """
    return dict(net._collect_params_with_prefix())


def running_stats_arrays(net: gluon.Block, ctx: list) -> Dict[str, np.ndarray]:
    """BatchNorm statistics of every context but the first (``save_parameters`` keeps the first's)."""
    arrays = {}
    for name, param in structural_params(net).items():
        if param.grad_req == "null" and name.endswith(("running_mean", "running_var")):
            for index, c in enumerate(ctx[1:], start=1):
                arrays[f"aux/{index}/{name}"] = param.data(c).asnumpy()
    return arrays


def restore_into(checkpoint: Checkpoint, net: gluon.Block, trainer: gluon.Trainer, ctx: list) -> None:
    """Load a checkpoint's network (on every context, with each context's statistics) and optimizer state."""
    net.load_parameters(str(checkpoint.params), ctx=ctx)
    params = structural_params(net)
    for key, value in checkpoint.arrays.items():
        if key.startswith("aux/"):
            _, index, name = key.split("/", 2)
            params[name].data(ctx[int(index)])[:] = mx.nd.array(value, ctx=ctx[int(index)])
    trainer.load_states(str(checkpoint.states))

"""Atomic training checkpoints: a run killed at any moment resumes from a complete one.

A checkpoint is a *generation* of files in one directory::

    ckpt-000012.params         the network (save_parameters; BatchNorm statistics averaged over the contexts)
    ckpt-000012.optimizer      the optimizer's per-parameter state (momenta...), ``mx.nd.save`` of named arrays
    ckpt-000012.npz            arrays: method state (e.g. Free-AT's perturbation), BatchNorm
                               statistics of each context, the guard's best weights
    ckpt-000012.json           {"state": {...}, "optimizer": {...}}: loop position, metrics, RNG keys;
                               the optimizer's class, counters and hyperparameters
    ckpt-000012.manifest.json  the SHA-256 of the four files above
    latest.json                {"generation": 12}

No file is a pickle: MXNet's ``Trainer.save_states`` pickles the optimizer,
and unpickling a planted file would run its code, so the optimizer state is
written as arrays and JSON instead and restored into the Trainer's updaters
directly. Before a generation is loaded, every file is checked against the
manifest (:mod:`gluon_robust.integrity`); a pickle, a missing file or a
checksum mismatch is refused. Checkpoints of the old format (``.states``
pickles) are refused too.

Every file is written to a temporary name and renamed into place
(:mod:`gluon_robust.io`), the manifest after the files and ``latest.json``
last, so it always names a complete generation; older generations are
deleted afterwards.
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
from ..integrity import load_npz, refuse_pickle, verify_manifest, write_manifest
from ..io import atomic_save, atomic_save_npz, atomic_write_json
from .optimizer_state import init_trainer_store, load_optimizer_state, optimizer_state

__all__ = ["Checkpoint", "CheckpointManager", "split_arrays", "join_arrays", "structural_params", "running_stats_arrays",
           "restore_into", "optimizer_state", "load_optimizer_state", "init_trainer_store"]

logger = logging.getLogger(__name__)

_LATEST = "latest.json"
_SUFFIXES = (".params", ".optimizer", ".npz", ".json")
_MANIFEST_SUFFIX = ".manifest.json"
_FORMAT = "gluon-robust-checkpoint/2"


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
    """One loaded, verified generation: its number, loop state, optimizer description and files.

    Attributes
    ----------
    generation : int
        Its number.
    state : dict
        The loop's state (position, metrics, RNG keys...).
    params : path
        The network's ``.params`` file.
    optimizer_arrays : path
        The optimizer's per-parameter state (``mx.nd.save`` of named arrays).
    optimizer : dict
        The optimizer's class, counters and hyperparameters, and the layout of its state.
    arrays : dict of str to numpy.ndarray
        Method state, each context's BatchNorm statistics (several contexts), the guard's best weights.
    """

    generation: int
    state: Dict[str, Any]
    params: Path
    optimizer_arrays: Path
    optimizer: Dict[str, Any]
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

    def _paths(self, generation: int) -> Tuple[Path, Path, Path, Path]:
        """The generation's params, optimizer arrays, npz and JSON files."""
        params, optimizer, npz, state = (self.directory / f"ckpt-{generation:06d}{suffix}" for suffix in _SUFFIXES)
        return params, optimizer, npz, state

    def _manifest(self, generation: int) -> Path:
        return self.directory / f"ckpt-{generation:06d}{_MANIFEST_SUFFIX}"

    def _fix(self) -> str:
        return f"delete {self.directory} to start over (or train without --resume)"

    def latest_generation(self) -> Optional[int]:
        """The generation ``latest.json`` names, or None if there is no checkpoint."""
        path = self.directory / _LATEST
        if not path.is_file():
            return None
        refuse_pickle(path, "checkpoint index", fix=self._fix())
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["generation"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"checkpoint index {path} is unreadable ({err}); {self._fix()}") from None

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
        params, optimizer, npz, state_path = self._paths(generation)
        description, optimizer_arrays = optimizer_state(trainer)
        atomic_save(params, net.save_parameters, suffix=".params")
        atomic_save(optimizer, lambda tmp: mx.nd.save(tmp, optimizer_arrays), suffix=".optimizer")
        atomic_save_npz(npz, **arrays)
        atomic_write_json(state_path, {"format": _FORMAT, "state": state, "optimizer": description})
        write_manifest(self._manifest(generation), (params, optimizer, npz, state_path))
        atomic_write_json(self.directory / _LATEST, {"generation": generation})
        for path in self.directory.glob("ckpt-*"):
            if not path.name.startswith(f"ckpt-{generation:06d}."):
                path.unlink(missing_ok=True)
        logger.debug("checkpoint %d written to %s", generation, self.directory)
        return generation

    def load(self) -> Optional[Checkpoint]:
        """The latest complete generation, verified against its manifest, or None.

        Raises
        ------
        ConfigError
            A checkpoint of the old format (a ``.states`` pickle), a missing
            file, a pickle, or a file whose SHA-256 differs from the manifest's.
        """
        generation = self.latest_generation()
        if generation is None:
            return None
        legacy = sorted(self.directory.glob("*.states"))
        if legacy:
            raise ConfigError(f"{legacy[0]} is an optimizer state of the old checkpoint format, a Python pickle, which "
                              f"is no longer read because unpickling can run arbitrary code; {self._fix()}")
        files = self._paths(generation)
        verify_manifest(self._manifest(generation), [path.name for path in files],
                        f"checkpoint {generation} in {self.directory}", self._fix())
        params, optimizer, npz, state_path = files
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
            state, description = saved["state"], saved["optimizer"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"checkpoint state {state_path} is unreadable ({err}); {self._fix()}") from None
        arrays = load_npz(npz, "checkpoint arrays", fix=self._fix())
        return Checkpoint(generation, state, params, optimizer, description, arrays)


def structural_params(net: gluon.Block) -> Dict[str, gluon.Parameter]:
    """The network's parameters by structural name (``features.0.weight``), as ``save_parameters`` names them.

    Unlike ``collect_params()`` names, these do not depend on how many blocks
    of the same class the process created, so they match across processes.
    """
    return dict(net._collect_params_with_prefix())


def running_stats_arrays(net: gluon.Block, ctx: list) -> Dict[str, np.ndarray]:
    """BatchNorm statistics of every context, when there are several.

    ``save_parameters`` keeps the average over the contexts, while each
    context's statistics follow its own shard of every batch.
    """
    arrays = {}
    for name, param in structural_params(net).items():
        if param.grad_req == "null" and name.endswith(("running_mean", "running_var")):
            for index, c in enumerate(ctx if len(ctx) > 1 else []):
                arrays[f"aux/{index}/{name}"] = param.data(c).asnumpy()
    return arrays


def restore_into(checkpoint: Checkpoint, net: gluon.Block, trainer: gluon.Trainer, ctx: list) -> None:
    """Load a checkpoint's network (on every context, with each context's statistics) and optimizer state.

    The optimizer state comes before the statistics: it initialises the
    Trainer's store, which broadcasts the first context's values to all.
    """
    net.load_parameters(str(checkpoint.params), ctx=ctx)
    load_optimizer_state(trainer, checkpoint.optimizer, checkpoint.optimizer_arrays)
    params = structural_params(net)
    for key, value in checkpoint.arrays.items():
        if key.startswith("aux/"):
            _, index, name = key.split("/", 2)
            params[name].data(ctx[int(index)])[:] = mx.nd.array(value, ctx=ctx[int(index)])

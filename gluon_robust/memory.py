"""Batch sizes that fit a memory budget, from the model's graph.

An ImageNet-scale network at 224x224 needs tens to hundreds of MB per sample
for one forward and backward pass, so a fixed batch size of 128 can exhaust a
machine's memory. When the user gives no batch size, the commands that run
models choose one from a budget (``--max-memory``, default
:data:`DEFAULT_MAX_MEMORY`)::

    batch = clip(floor((budget - fixed) / per_sample), 1, MAX_AUTO_BATCH)

The estimate comes from MXNet's symbolic shape inference over the model's
graph (:func:`estimate_memory`), not from running it:

* ``activation_bytes``: the float32 size of every internal output of the
  graph for one sample (inferred at batch 1 and 2; the difference is the
  per-sample part, the rest is fixed);
* ``per_sample_bytes = BACKWARD_FACTOR * activation_bytes + INPUT_COPIES *
  input_bytes``: the forward's outputs are kept for the backward pass, which
  writes gradients of the same kind, and the heap holds freed arrays for
  reuse (``BACKWARD_FACTOR = 3``; see :mod:`gluon_robust.allocator`); an attack keeps
  a few copies of the input (clean, adversarial, gradient, best so far, the
  random start: ``INPUT_COPIES = 8``);
* ``fixed_bytes = PARAMETER_COPIES * parameter_bytes + batch-independent
  outputs + RUNTIME_BYTES``: the weights as GluonCV builds them, folded,
  hybridised and reordered by MKLDNN (``PARAMETER_COPIES = 8``), and the
  Python, MXNet and GluonCV runtime (``RUNTIME_BYTES = 256 MiB``).

The factors were calibrated on CPU (MXNet 1.9.1 with MKLDNN) at 224x224 by
``benchmarks/bench_memory.py``, which compares the estimate with the peak
resident memory of real runs: with PGD, a run grows by 0.5 to 1.75 times the
activation bytes per sample with glibc's default allocator (``resnet50_v1``,
``mobilenet0.25``, ``resnet18_v1``), and by up to 2.5 times with the
allocator settings gluon_robust makes, whose heap keeps freed arrays for
reuse (``resnet18_v1`` at batch 68: 3.2 GiB with glibc's defaults, 4.4 GiB
with the settings, against 4.0 GiB estimated with a factor of 2, hence 3).
Loading a net peaks at about 260 MiB plus 6 to 7 times its parameter bytes. A budget that cannot hold the fixed cost plus one sample
is refused with an error naming ``max_memory`` (``--max-memory``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from .errors import ModelError
from .validation import InvalidValue, check_int

__all__ = [
    "MemoryEstimate", "estimate_memory", "auto_batch_size", "resolve_batch_size", "parse_size", "format_size",
    "DEFAULT_MAX_MEMORY", "MAX_AUTO_BATCH", "BACKWARD_FACTOR", "INPUT_COPIES", "PARAMETER_COPIES", "RUNTIME_BYTES",
]

logger = logging.getLogger(__name__)

#: Default budget of ``--max-memory``: 4 GiB.
DEFAULT_MAX_MEMORY = 4 * 2 ** 30
#: The largest batch chosen automatically (the former fixed default): larger batches gain little speed on a CPU.
MAX_AUTO_BATCH = 128
#: Bytes per sample of forward plus backward, as a multiple of the forward's internal outputs (the heap's reuse
#: of freed arrays included: gluon_robust.allocator).
BACKWARD_FACTOR = 3.0
#: Copies of one input an attack holds per sample besides the graph's tensors.
INPUT_COPIES = 8
#: Copies of the parameters alive at the peak: built, folded, hybridised, reordered for forward and backward.
PARAMETER_COPIES = 8
#: Resident memory of the Python, MXNet and GluonCV runtime, counted as fixed cost.
RUNTIME_BYTES = 256 * 2 ** 20
#: float32.
_FLOAT_BYTES = 4

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryEstimate:
    """What one forward and backward pass of a model costs, in bytes.

    Attributes
    ----------
    activation_bytes : int
        float32 internal outputs of the graph for one sample (forward only).
    input_bytes : int
        One input sample.
    parameter_bytes : int
        The model's parameters.
    per_sample_bytes : int
        ``BACKWARD_FACTOR * activation_bytes + INPUT_COPIES * input_bytes``.
    fixed_bytes : int
        ``PARAMETER_COPIES * parameter_bytes`` + batch-independent outputs + ``RUNTIME_BYTES``.
    """

    activation_bytes: int
    input_bytes: int
    parameter_bytes: int
    per_sample_bytes: int
    fixed_bytes: int

    def batch_bytes(self, batch_size: int) -> int:
        """Estimated peak memory of a run with batches of ``batch_size``."""
        return self.fixed_bytes + batch_size * self.per_sample_bytes


def parse_size(text: str) -> int:
    """Parse a memory size: bytes (``1000000``) or a binary multiple (``512M``, ``4G``, ``4GiB``, ``1.5g``).

    Raises
    ------
    ValueError
        For anything else, or a size below one byte.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a memory size such as 4G, 512M or 1000000 (bytes): {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"a memory size must be at least 1 byte, got {text!r}")
    return int(value)


def format_size(size: float) -> str:
    """``4294967296`` -> ``"4.0 GiB"``."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def _hybrid_parts(block: Any) -> List[mx.gluon.HybridBlock]:
    """The HybridBlocks that make up ``block``: itself, or those among its children (a defended model, an ensemble)."""
    if isinstance(block, mx.gluon.HybridBlock):
        return [block]
    parts: List[mx.gluon.HybridBlock] = []
    for child in getattr(block, "_children", {}).values():
        parts.extend(_hybrid_parts(child))
    return parts


def _graph(block: mx.gluon.HybridBlock) -> mx.sym.Symbol:
    """The symbol graph of ``block`` with input ``data``."""
    try:
        out = block(mx.sym.var("data"))
    except Exception as err:  # noqa: BLE001 -- any failure to trace becomes one line
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelError(f"cannot trace {type(block).__name__} to estimate its memory ({first}); "
                         "give the batch size (--batch-size)") from None
    return out[0] if isinstance(out, (list, tuple)) else out


def _graph_bytes(symbol: mx.sym.Symbol, shape: Tuple[int, ...]) -> Tuple[int, int]:
    """float32 bytes of (the internal outputs, the parameters) of ``symbol`` for an input of ``shape``."""
    internals = symbol.get_internals()
    arg_shapes, out_shapes, aux_shapes = internals.infer_shape(data=shape)
    if out_shapes is None:
        raise ModelError(f"cannot infer the shapes of the model's graph for an input of shape {shape}")
    variables = set(internals.list_arguments()) | set(internals.list_auxiliary_states())
    outputs = sum(int(np.prod(s)) for name, s in zip(internals.list_outputs(), out_shapes) if name not in variables)
    params = sum(int(np.prod(s)) for name, s in zip(internals.list_arguments(), arg_shapes) if name != "data")
    params += sum(int(np.prod(s)) for s in aux_shapes)
    return outputs * _FLOAT_BYTES, params * _FLOAT_BYTES


def estimate_memory(model: Any, sample_shape: Sequence[int], *, backward: bool = True) -> MemoryEstimate:
    """Estimate the memory of one forward and backward pass of ``model`` by symbolic shape inference.

    Parameters
    ----------
    model : mxnet.gluon.Block
        The model (a :class:`~gluon_robust.model.Classifier`, a folded net, any
        initialised HybridBlock); a plain Block (a defended classifier, an
        ensemble) is the sum of the HybridBlocks among its children.
    sample_shape : sequence of int
        The shape of one input, e.g. ``(3, 224, 224)``.
    backward : bool
        Whether the run takes input gradients (attacks); False for forward
        passes only (randomized smoothing): ``per_sample_bytes`` is then
        ``activation_bytes + 2 * input_bytes`` (the input and its noisy copy).

    Returns
    -------
    MemoryEstimate

    Raises
    ------
    ModelError
        If the model cannot be traced into a graph or its shapes cannot be inferred.
    """
    shape = tuple(int(s) for s in sample_shape)
    parts = _hybrid_parts(model)
    if not parts:
        raise ModelError(f"cannot estimate the memory of a {type(model).__name__} (no HybridBlock in it); "
                         "give the batch size (--batch-size)")
    one = two = params = 0
    for part in parts:  # the members of an ensemble run one after the other but their graphs all stay allocated
        symbol = _graph(part)
        try:
            part_one, part_params = _graph_bytes(symbol, (1,) + shape)
            part_two, _ = _graph_bytes(symbol, (2,) + shape)
        except mx.base.MXNetError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise ModelError(f"cannot infer the model's shapes for inputs {shape} ({first})") from None
        one, two, params = one + part_one, two + part_two, params + part_params
    activations = two - one
    constant = max(one - activations, 0)
    input_bytes = int(np.prod(shape)) * _FLOAT_BYTES
    if backward:
        per_sample = int(BACKWARD_FACTOR * activations) + INPUT_COPIES * input_bytes
    else:
        per_sample = activations + 2 * input_bytes
    return MemoryEstimate(
        activation_bytes=activations, input_bytes=input_bytes, parameter_bytes=params,
        per_sample_bytes=per_sample, fixed_bytes=PARAMETER_COPIES * params + constant + RUNTIME_BYTES,
    )


def auto_batch_size(
    model: Any, sample_shape: Sequence[int], max_memory: int = DEFAULT_MAX_MEMORY, *, cap: int = MAX_AUTO_BATCH,
    backward: bool = True,
) -> int:
    """The largest batch size, at most ``cap``, whose estimated memory fits ``max_memory`` bytes.

    ``clip(floor((max_memory - fixed) / per_sample), 1, cap)`` with the
    costs of :func:`estimate_memory` (of a forward pass only when not ``backward``).

    Raises
    ------
    InvalidValue
        (``max_memory``) when the budget cannot hold the fixed cost and one sample.
    ModelError
        If the model's memory cannot be estimated.
    """
    max_memory = check_int("max_memory", max_memory)
    cap = check_int("cap", cap)
    estimate = estimate_memory(model, sample_shape, backward=backward)
    fits = (max_memory - estimate.fixed_bytes) // estimate.per_sample_bytes
    if fits < 1:
        raise InvalidValue("max_memory", format_size(max_memory),
                           f"at least {format_size(estimate.batch_bytes(1))} to fit one sample of "
                           f"{tuple(sample_shape)} ({format_size(estimate.fixed_bytes)} fixed, "
                           f"{format_size(estimate.per_sample_bytes)} per sample), or give --batch-size")
    batch = int(min(fits, cap))
    logger.info("batch size %d chosen for a budget of %s: %s fixed + %s per sample (estimated peak %s)",
                batch, format_size(max_memory), format_size(estimate.fixed_bytes),
                format_size(estimate.per_sample_bytes), format_size(estimate.batch_bytes(batch)))
    return batch


def resolve_batch_size(
    model: Any, sample_shape: Sequence[int], batch_size: Optional[int] = None,
    max_memory: Optional[int] = None, *, cap: int = MAX_AUTO_BATCH, backward: bool = True,
) -> Tuple[int, str]:
    """The batch size to run with and where it came from: ``(batch_size, "given")`` or ``(auto, "auto")``.

    Parameters
    ----------
    model : HybridBlock
        The model that will run.
    sample_shape : sequence of int
        The shape of one input.
    batch_size : int, optional
        The user's batch size; None chooses one with :func:`auto_batch_size`.
    max_memory : int, optional
        The budget in bytes for the automatic choice (default :data:`DEFAULT_MAX_MEMORY`).
    cap : int
        The largest automatic batch size.
    backward : bool
        Whether the run takes input gradients (see :func:`estimate_memory`).
    """
    if batch_size is not None:
        if max_memory is not None:
            logger.warning("max_memory is used only to choose the batch size; batch_size %s was given", batch_size)
        return check_int("batch_size", batch_size), "given"
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    return auto_batch_size(model, sample_shape, budget, cap=cap, backward=backward), "auto"

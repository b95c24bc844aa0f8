"""Trace a Gluon block into an MXNet symbol graph and its parameter values, and back.

:func:`block_to_symbol` is the first step of BatchNorm folding (:mod:`gluon_robust.folding`). MXNet's own
layers trace into their ops; GluonCV's ``gluoncv.nn.GroupNorm`` (the
``resnet*_v1b_gn`` nets) cannot be traced (it reads the input's shape and
builds a train-mode BatchNorm over reshaped data), so :func:`block_to_symbol`
traces it as the same computation with MXNet's ``GroupNorm`` op
(:func:`_group_norm`; Wu & He 2018, "Group Normalization",
https://arxiv.org/abs/1803.08494). :func:`symbol_block` turns a graph and its
values back into a frozen, hybridised block.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Dict, Iterator, Tuple

import mxnet as mx
from mxnet import gluon

from .errors import ModelError

__all__ = ["Params", "block_to_symbol", "symbol_block"]

Params = Dict[str, mx.nd.NDArray]


def _group_norm(block: gluon.HybridBlock, F: Any, x: Any, gamma: Any, beta: Any) -> Any:  # noqa: N803
    """``gluoncv.nn.GroupNorm``'s function in symbolic ops: per-sample group statistics, per-channel affine.

    MXNet's ``GroupNorm`` op takes one gamma and beta per group, so it normalises with
    unit ones and the per-channel affine map follows.
    """
    groups = int(block.ngroups)
    y = F.GroupNorm(x, F.ones(shape=(groups,)), F.zeros(shape=(groups,)), num_groups=groups,
                    eps=float(block._kwargs["eps"]))
    y = F.reshape(y, shape=(0, 0, -1))
    if block.scale:
        y = F.broadcast_mul(y, F.reshape(gamma, shape=(1, -1, 1)))
    y = F.broadcast_add(y, F.reshape(beta, shape=(1, -1, 1)))
    return F.reshape_like(y, x)


def _descendants(block: gluon.Block) -> Iterator[gluon.Block]:
    yield block
    for child in block._children.values():
        yield from _descendants(child)


@contextlib.contextmanager
def _traceable(block: gluon.HybridBlock) -> Iterator[None]:
    """Within the context, GluonCV GroupNorm layers of ``block`` trace as :func:`_group_norm`."""
    try:
        from gluoncv.nn.gn import GroupNorm
    except ImportError:  # GluonCV is optional for user blocks
        GroupNorm = ()  # noqa: N806
    patched = [b for b in _descendants(block) if GroupNorm and isinstance(b, GroupNorm)]
    for b in patched:
        b.hybrid_forward = functools.partial(_group_norm, b)
    try:
        yield
    finally:
        for b in patched:
            del b.hybrid_forward


def block_to_symbol(block: gluon.HybridBlock, input_name: str = "data") -> Tuple[mx.sym.Symbol, Params]:
    """Trace a Gluon block into a symbol and a name-to-value parameter dict.

    Parameters
    ----------
    block : mxnet.gluon.HybridBlock
        An initialised block. A ``SymbolBlock`` works too.
    input_name : str
        Name given to the input variable.

    Returns
    -------
    symbol : mxnet.symbol.Symbol
    params : dict of str to NDArray
        Values of every argument and auxiliary state, on the CPU.
    """
    if not isinstance(block, gluon.HybridBlock):
        raise ModelError(
            f"cannot trace {type(block).__name__} into a graph: only HybridBlocks can be folded "
            "(pass fold=False to use it as it is)"
        )
    try:
        with _traceable(block):
            out = block(mx.sym.var(input_name))
    except Exception as err:  # any failure to trace is reported in one line
        raise ModelError(f"cannot trace {type(block).__name__} into a symbol graph ({err}); pass fold=False") from err
    if isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise ModelError(f"the model has {len(out)} outputs; a classifier has one (wrap it in gluon_robust.model.FirstOutput to use the first)")
        out = out[0]
    params: Params = {}
    for param in block.collect_params().values():
        try:
            params[param.name] = param.data(param.list_ctx()[0]).copyto(mx.cpu())
        except RuntimeError as err:
            raise ModelError(f"parameter {param.name} is not initialised; load weights or initialise the model first") from err
    return out, params


def symbol_block(
    symbol: mx.sym.Symbol,
    params: Params,
    ctx: mx.Context,
    input_name: str = "data",
    hybridize: bool = True,
    freeze: bool = True,
) -> gluon.SymbolBlock:
    """Build a ``SymbolBlock`` from a graph and its values, frozen (``grad_req='null'``) by default."""
    with warnings.catch_warnings():
        # SymbolBlock warns that it cannot infer the input's dtype; it is float32.
        warnings.simplefilter("ignore", UserWarning)
        block = gluon.SymbolBlock(outputs=symbol, inputs=mx.sym.var(input_name))
    expected = set(block.collect_params().keys())
    missing = sorted(expected - set(params))
    if missing:
        raise ModelError(f"the parameters lack {len(missing)} values the graph needs, e.g. {missing[0]}")
    block.collect_params().load_dict({k: params[k] for k in expected}, ctx=ctx)
    if freeze:
        block.collect_params().setattr("grad_req", "null")
    if hybridize:
        block.hybridize(static_alloc=True)
    return block

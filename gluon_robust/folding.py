"""Fold BatchNorm into the preceding layer, at the level of the symbol graph.

MXNet 1.9.1 computes wrong input gradients through ``BatchNorm`` when a graph
is recorded with ``train_mode=False``: the backward pass uses batch statistics
while the forward pass used the running statistics. It is also slow. Both
problems disappear when BatchNorm is removed from the graph, which is exact in
eval mode because BatchNorm then is a per-channel affine map
``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

This module rewrites the MXNet symbol graph of any model (a GluonCV zoo net, a
user ``HybridBlock`` or an exported ``net-symbol.json``):

* a BatchNorm whose input is a ``Convolution``, ``Deconvolution`` or
  ``FullyConnected`` output used by nothing else is folded into that layer's
  weight and bias (Ioffe & Szegedy 2015 give the affine form; folding is the
  standard inference-time rewrite, see Jacob et al. 2018, "Quantization and
  Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference");
* every other BatchNorm (pre-activation nets, BN on the input) is rewritten as
  a constant ``broadcast_mul`` plus ``broadcast_add``, which is also exact.

The result is a hybridised :class:`mxnet.gluon.SymbolBlock` with no BatchNorm
left, whose parameters have ``grad_req='null'``, so that input gradients are
correct and only the input is differentiated.

GroupNorm, InstanceNorm and LayerNorm normalise with the statistics of the
input itself in both modes: they are mode free, need no folding and are kept
as they are. MXNet's own layers trace into ``GroupNorm``, ``InstanceNorm`` and
``LayerNorm`` ops. GluonCV's ``gluoncv.nn.GroupNorm`` (the ``resnet*_v1b_gn``
nets) cannot be traced (it reads the input's shape and builds a train-mode
BatchNorm over reshaped data), so :func:`block_to_symbol` traces it as the
same computation with MXNet's ``GroupNorm`` op (:func:`_group_norm`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from .errors import ModelError

__all__ = ["FoldReport", "block_to_symbol", "fold_symbol", "fold_batchnorm", "symbol_block"]

logger = logging.getLogger(__name__)

_FOLDABLE_OPS = ("Convolution", "Deconvolution", "FullyConnected")
# Ops whose result depends on train/eval mode; a graph without them is "mode free".
_MODE_DEPENDENT_OPS = frozenset({
    "BatchNorm", "BatchNorm_v1", "SyncBatchNorm", "_contrib_SyncBatchNorm", "_contrib_BatchNormWithReLU",
    "Dropout", "RNN", "_contrib_quantized_batch_norm",
})
# Index of the output-channel axis in each op's weight.
_WEIGHT_OUT_AXIS = {"Convolution": 0, "Deconvolution": 1, "FullyConnected": 0}

Params = Dict[str, mx.nd.NDArray]


@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold_symbol` did.

    Attributes
    ----------
    folded : int
        BatchNorm layers merged into the preceding convolution or dense layer.
    rewritten : int
        BatchNorm layers replaced by a constant per-channel affine map.
    dropout_removed : int
        Dropout layers removed (the identity at inference).
    mode_free : bool
        Whether the graph left computes the same function in train and eval
        mode (no op whose behaviour depends on the mode remains).
    """

    folded: int
    rewritten: int
    dropout_removed: int = 0
    mode_free: bool = False


def _is_true(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _channels_first(node: dict) -> bool:
    """Whether ``node`` is a layer whose output channels sit on axis 1, so a BatchNorm can fold into it."""
    attrs = node.get("attrs", {})
    if node["op"] == "FullyConnected":
        return _is_true(attrs.get("flatten", "True"))
    return node["op"] in _FOLDABLE_OPS and attrs.get("layout", "None") in ("None", "NCW", "NCHW", "NCDHW")


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


def _bn_affine(node: dict, params: Params, names: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Return the per-channel (scale, shift) that a BatchNorm node applies in eval mode."""
    gamma, beta, mean, var = (params[n].asnumpy().astype(np.float64) for n in names[1:])
    attrs = node.get("attrs", {})
    eps = float(attrs.get("eps", 1e-3))
    if _is_true(attrs.get("fix_gamma", "True")):
        gamma = np.ones_like(gamma)
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale, shift


def fold_symbol(
    symbol: mx.sym.Symbol,
    params: Params,
    input_name: str = "data",
    input_shape: Sequence[int] | None = None,
) -> Tuple[mx.sym.Symbol, Params, FoldReport]:
    """Remove every BatchNorm from a symbol graph, exactly.

    Parameters
    ----------
    symbol : mxnet.symbol.Symbol
        The model graph with one input.
    params : dict of str to NDArray
        Values of the graph's arguments and auxiliary states (``arg:``/``aux:``
        prefixes, as written by ``HybridBlock.export``, are accepted).
    input_name : str
        Name of the input variable.
    input_shape : sequence of int, optional
        Shape of one input batch. Needed only when some BatchNorm cannot be
        folded and must be rewritten, to know the rank of its input.

    Returns
    -------
    symbol : mxnet.symbol.Symbol
        The graph without BatchNorm.
    params : dict of str to NDArray
        The new parameter values (float32, CPU); BatchNorm statistics are gone.
    report : FoldReport
        How many layers were folded and how many rewritten.
    """
    params = {k.split(":", 1)[-1]: v for k, v in params.items()}
    graph = json.loads(symbol.tojson())
    nodes: List[dict] = graph["nodes"]

    uses: Dict[Tuple[int, int], int] = {}
    for node in nodes:
        for src, idx, *_ in node["inputs"]:
            uses[(src, idx)] = uses.get((src, idx), 0) + 1
    for src, idx, *_ in graph["heads"]:
        uses[(src, idx)] = uses.get((src, idx), 0) + 1

    def var_name(entry: Sequence[int]) -> str:
        return nodes[entry[0]]["name"]

    new_params: Params = {k: v.astype("float32") for k, v in params.items()}
    # BatchNorm node id -> producer node id it folds into.
    fold_into: Dict[int, int] = {}
    # Producer node id -> (scale, shift) it must absorb.
    absorb: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    rewrite: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    for nid, node in enumerate(nodes):
        if node["op"] != "BatchNorm":
            continue
        if any(uses.get((nid, k), 0) for k in (1, 2)):
            raise ModelError(f"BatchNorm {node['name']} exposes its batch statistics; it cannot be folded")
        names = [var_name(e) for e in node["inputs"]]
        missing = [n for n in names[1:] if n not in params]
        if missing:
            raise ModelError(f"no value for {', '.join(missing)} in the parameters")
        scale, shift = _bn_affine(node, params, names)
        axis = int(node.get("attrs", {}).get("axis", 1))
        src, idx = node["inputs"][0][:2]
        producer = nodes[src]
        if axis == 1 and idx == 0 and uses.get((src, 0), 0) == 1 and _channels_first(producer):
            fold_into[nid] = src
            absorb[src] = (scale, shift)
        else:
            rewrite[nid] = (scale, shift)

    if rewrite and input_shape is None:
        raise ModelError("some BatchNorm layers cannot be folded; pass input_shape so they can be rewritten")
    ranks: Dict[int, int] = {}
    if rewrite:
        internals = symbol.get_internals()
        _, shapes, _ = internals.infer_shape(**{input_name: tuple(input_shape)})
        shape_of = dict(zip(internals.list_outputs(), shapes))
        ranks = {nid: len(shape_of[nodes[nid]["name"] + "_output"]) for nid in rewrite}

    out_nodes: List[dict] = []
    remap: Dict[Tuple[int, int], Tuple[int, int]] = {}
    # Old node id -> new node id, for nodes copied unchanged (any number of outputs).
    copied: Dict[int, int] = {}

    def emit(node: dict) -> int:
        out_nodes.append(node)
        return len(out_nodes) - 1

    def emit_var(name: str, value: np.ndarray) -> int:
        new_params[name] = mx.nd.array(value, dtype="float32")
        return emit({"op": "null", "name": name, "inputs": []})

    def mapped(entry: Sequence[int]) -> List[int]:
        key = (entry[0], entry[1])
        src, idx = remap[key] if key in remap else (copied[entry[0]], entry[1])
        return [src, idx, 0]

    dropouts = 0
    for nid, node in enumerate(nodes):
        if nid in fold_into:
            remap[(nid, 0)] = (copied[fold_into[nid]], 0)
            continue
        if node["op"] == "Dropout" and uses.get((nid, 1), 0) == 0:
            remap[(nid, 0)] = tuple(mapped(node["inputs"][0])[:2])
            dropouts += 1
            continue
        if nid in rewrite:
            scale, shift = rewrite[nid]
            shape = [1] * ranks[nid]
            shape[int(node.get("attrs", {}).get("axis", 1))] = -1
            base = node["name"]
            s_id = emit_var(f"{base}_folded_scale", scale.reshape(shape))
            b_id = emit_var(f"{base}_folded_shift", shift.reshape(shape))
            mul = emit({"op": "broadcast_mul", "name": f"{base}_mul", "inputs": [mapped(node["inputs"][0]), [s_id, 0, 0]]})
            add = emit({"op": "broadcast_add", "name": f"{base}_add", "inputs": [[mul, 0, 0], [b_id, 0, 0]]})
            remap[(nid, 0)] = (add, 0)
            continue
        new = dict(node)
        new["inputs"] = [mapped(e) for e in node["inputs"]]
        if nid in absorb:
            scale, shift = absorb[nid]
            attrs = dict(node.get("attrs", {}))
            axis = _WEIGHT_OUT_AXIS[node["op"]]
            w_name = var_name(node["inputs"][1])
            weight = params[w_name].asnumpy().astype(np.float64)
            if node["op"] == "Deconvolution" and int(attrs.get("num_group", 1)) != 1:
                raise ModelError(f"cannot fold BatchNorm into grouped deconvolution {node['name']}")
            bshape = [1] * weight.ndim
            bshape[axis] = -1
            w_folded = f"{node['name']}_folded_weight"
            w_id = emit_var(w_folded, weight * scale.reshape(bshape))
            # Deconvolution's op default is no_bias=True, so go by the inputs, not the attribute.
            if _is_true(attrs.get("no_bias", "False")) or len(node["inputs"]) < 3:
                bias = np.zeros_like(scale)
            else:
                bias = params[var_name(node["inputs"][2])].asnumpy().astype(np.float64)
            b_id = emit_var(f"{node['name']}_folded_bias", bias * scale + shift)
            attrs["no_bias"] = "False"
            new["attrs"] = attrs
            new["inputs"] = [new["inputs"][0], [w_id, 0, 0], [b_id, 0, 0]]
        copied[nid] = emit(new)

    heads = [mapped(h) for h in graph["heads"]]
    out_nodes, heads = _prune(out_nodes, heads)
    graph_out = {
        "nodes": out_nodes,
        "arg_nodes": [i for i, n in enumerate(out_nodes) if n["op"] == "null"],
        "heads": heads,
        "attrs": graph.get("attrs", {}),
    }
    graph_out["node_row_ptr"] = list(range(len(out_nodes) + 1))
    folded_symbol = mx.sym.load_json(json.dumps(graph_out))
    wanted = set(folded_symbol.list_arguments()) | set(folded_symbol.list_auxiliary_states())
    wanted.discard(input_name)
    remaining = {n["op"] for n in out_nodes} & _MODE_DEPENDENT_OPS
    report = FoldReport(folded=len(fold_into), rewritten=len(rewrite), dropout_removed=dropouts, mode_free=not remaining)
    logger.debug("folded %d BatchNorm layers, rewrote %d", report.folded, report.rewritten)
    return folded_symbol, {k: v for k, v in new_params.items() if k in wanted}, report


def _prune(nodes: List[dict], heads: List[List[int]]) -> Tuple[List[dict], List[List[int]]]:
    """Drop nodes not reachable from the heads and renumber the rest."""
    keep = [False] * len(nodes)
    stack = [h[0] for h in heads]
    while stack:
        nid = stack.pop()
        if keep[nid]:
            continue
        keep[nid] = True
        stack.extend(e[0] for e in nodes[nid]["inputs"])
    new_index: Dict[int, int] = {}
    pruned: List[dict] = []
    for nid, node in enumerate(nodes):
        if keep[nid]:
            new_index[nid] = len(pruned)
            pruned.append(dict(node, inputs=[[new_index[e[0]], e[1], 0] for e in node["inputs"]]))
    return pruned, [[new_index[h[0]], h[1], 0] for h in heads]


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


def fold_batchnorm(
    model: gluon.HybridBlock,
    input_shape: Sequence[int] | None = None,
    ctx: mx.Context | None = None,
    hybridize: bool = True,
) -> gluon.SymbolBlock:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded away.

    The copy computes the same function as ``model`` in eval mode (to float32
    rounding), has correct and fast input gradients, and freezes all of its
    parameters (``grad_req='null'``). Dropout, the identity at inference, is
    removed too, so that the copy usually computes the same function in train
    and eval mode (``block.fold_report.mode_free``). ``model`` itself is not
    modified.

    Parameters
    ----------
    model : mxnet.gluon.HybridBlock
        An initialised model (zoo net, user block or ``SymbolBlock``).
    input_shape : sequence of int, optional
        Shape of an input batch, e.g. ``(1, 3, 32, 32)``; required only when a
        BatchNorm has no preceding convolution or dense layer to fold into.
    ctx : mxnet.Context, optional
        Where the copy's parameters live; defaults to the model's first context.
    hybridize : bool
        Hybridise the copy (``static_alloc=True``), the fast path.

    Returns
    -------
    mxnet.gluon.SymbolBlock

    Examples
    --------
    >>> net = gluoncv.model_zoo.get_model("cifar_resnet20_v1", classes=10)
    >>> net.initialize()
    >>> fast = fold_batchnorm(net, input_shape=(1, 3, 32, 32))
    """
    symbol, params = block_to_symbol(model)
    if ctx is None:
        ctx = next(iter(model.collect_params().values())).list_ctx()[0]
    folded, new_params, report = fold_symbol(symbol, params, input_shape=input_shape)
    logger.info(
        "BatchNorm folding: %d folded into the preceding layer, %d rewritten as affine, %d Dropout removed",
        report.folded, report.rewritten, report.dropout_removed,
    )
    block = symbol_block(folded, new_params, ctx, hybridize=hybridize)
    block.fold_report = report
    return block

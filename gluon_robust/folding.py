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

One more rewrite is for speed: a ``clip(x, 0, a)`` (GluonCV's ReLU6, in
every MobileNetV2) becomes ``minimum(relu(x), a)``. The values are the same,
and MKLDNN runs the ReLU in its own layout, where ``clip`` forces a conversion
in and out of it. The input gradient is the same too, except at a
pre-activation of exactly 0, where ``clip`` passes the gradient and ``relu``
does not (both are subgradients; PyTorch's ReLU6 takes 0 there as well). On the
folded ``mobilenetv2_1.0`` at 224x224 this made the forward-backward about 1.4x
faster (``benchmarks/bench_relu6.py``).

The result is a hybridised :class:`mxnet.gluon.SymbolBlock` with no BatchNorm
left, whose parameters have ``grad_req='null'``, so that input gradients are
correct and only the input is differentiated.

GroupNorm, InstanceNorm and LayerNorm normalise with the statistics of the
input itself in both modes: they are mode free, need no folding and are kept
as they are. MXNet's own layers trace into ``GroupNorm``, ``InstanceNorm`` and
``LayerNorm`` ops. GluonCV's ``gluoncv.nn.GroupNorm`` (the ``resnet*_v1b_gn``
nets) cannot be traced (it reads the input's shape and builds a train-mode
BatchNorm over reshaped data), so :func:`block_to_symbol` traces it as the
same computation with MXNet's ``GroupNorm`` op (see :mod:`gluon_robust.tracing`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from .errors import ModelError
from .tracing import Params, block_to_symbol, symbol_block

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
    relu6_rewritten : int
        ``clip(x, 0, a)`` nodes rewritten as ``minimum(relu(x), a)``.
    mode_free : bool
        Whether the graph left computes the same function in train and eval
        mode (no op whose behaviour depends on the mode remains).
    """

    folded: int
    rewritten: int
    dropout_removed: int = 0
    mode_free: bool = False
    relu6_rewritten: int = 0


def _is_true(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _channels_first(node: dict) -> bool:
    """Whether ``node`` is a layer whose output channels sit on axis 1, so a BatchNorm can fold into it."""
    attrs = node.get("attrs", {})
    if node["op"] == "FullyConnected":
        return _is_true(attrs.get("flatten", "True"))
    return node["op"] in _FOLDABLE_OPS and attrs.get("layout", "None") in ("None", "NCW", "NCHW", "NCDHW")


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


@dataclass
class _Plan:
    """What happens to each BatchNorm node of a graph.

    Attributes
    ----------
    fold_into : dict
        BatchNorm node id -> the producer node id it folds into.
    absorb : dict
        Producer node id -> the (scale, shift) it must absorb.
    rewrite : dict
        BatchNorm node id -> the (scale, shift) of the constant affine map replacing it.
    """

    fold_into: Dict[int, int] = field(default_factory=dict)
    absorb: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    rewrite: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _count_uses(graph: dict) -> Dict[Tuple[int, int], int]:
    """How many times each ``(node, output)`` entry is an input of a node or a head of the graph."""
    uses: Dict[Tuple[int, int], int] = {}
    for node in graph["nodes"]:
        for src, idx, *_ in node["inputs"]:
            uses[(src, idx)] = uses.get((src, idx), 0) + 1
    for src, idx, *_ in graph["heads"]:
        uses[(src, idx)] = uses.get((src, idx), 0) + 1
    return uses


def _plan(nodes: List[dict], uses: Dict[Tuple[int, int], int], params: Params) -> _Plan:
    """Decide for every BatchNorm whether it folds into its producer or is rewritten as an affine map."""
    plan = _Plan()
    for nid, node in enumerate(nodes):
        if node["op"] != "BatchNorm":
            continue
        if any(uses.get((nid, k), 0) for k in (1, 2)):
            raise ModelError(f"BatchNorm {node['name']} exposes its batch statistics; it cannot be folded")
        names = [nodes[e[0]]["name"] for e in node["inputs"]]
        missing = [n for n in names[1:] if n not in params]
        if missing:
            raise ModelError(f"no value for {', '.join(missing)} in the parameters")
        scale, shift = _bn_affine(node, params, names)
        axis = int(node.get("attrs", {}).get("axis", 1))
        src, idx = node["inputs"][0][:2]
        if axis == 1 and idx == 0 and uses.get((src, 0), 0) == 1 and _channels_first(nodes[src]):
            plan.fold_into[nid] = src
            plan.absorb[src] = (scale, shift)
        else:
            plan.rewrite[nid] = (scale, shift)
    return plan


def _output_ranks(symbol: mx.sym.Symbol, nodes: List[dict], rewrite: Dict[int, Tuple[np.ndarray, np.ndarray]],
                  input_name: str, input_shape: Sequence[int] | None) -> Dict[int, int]:
    """The rank of the output of every BatchNorm to rewrite, by shape inference from ``input_shape``."""
    if rewrite and input_shape is None:
        raise ModelError("some BatchNorm layers cannot be folded; pass input_shape so they can be rewritten")
    if not rewrite:
        return {}
    internals = symbol.get_internals()
    _, shapes, _ = internals.infer_shape(**{input_name: tuple(input_shape)})
    shape_of = dict(zip(internals.list_outputs(), shapes))
    return {nid: len(shape_of[nodes[nid]["name"] + "_output"]) for nid in rewrite}


class _Writer:
    """Builds the new node list and parameter values, and maps old graph entries to new ones."""

    def __init__(self, params: Params) -> None:
        self.nodes: List[dict] = []
        self.params: Params = {k: v.astype("float32") for k, v in params.items()}
        self.remap: Dict[Tuple[int, int], Tuple[int, int]] = {}
        # Old node id -> new node id, for nodes copied (any number of outputs).
        self.copied: Dict[int, int] = {}

    def emit(self, node: dict) -> int:
        """Append ``node``; its new id."""
        self.nodes.append(node)
        return len(self.nodes) - 1

    def emit_var(self, name: str, value: np.ndarray) -> int:
        """Append a constant variable node holding ``value`` (float32); its new id."""
        self.params[name] = mx.nd.array(value, dtype="float32")
        return self.emit({"op": "null", "name": name, "inputs": []})

    def mapped(self, entry: Sequence[int]) -> List[int]:
        """The new ``[node, output, 0]`` entry for an old one."""
        key = (entry[0], entry[1])
        src, idx = self.remap[key] if key in self.remap else (self.copied[entry[0]], entry[1])
        return [src, idx, 0]


def _emit_affine(writer: _Writer, nid: int, node: dict, affine: Tuple[np.ndarray, np.ndarray], rank: int) -> None:
    """Replace BatchNorm ``node`` by a constant ``broadcast_mul`` and ``broadcast_add``."""
    scale, shift = affine
    shape = [1] * rank
    shape[int(node.get("attrs", {}).get("axis", 1))] = -1
    base = node["name"]
    s_id = writer.emit_var(f"{base}_folded_scale", scale.reshape(shape))
    b_id = writer.emit_var(f"{base}_folded_shift", shift.reshape(shape))
    mul = writer.emit({"op": "broadcast_mul", "name": f"{base}_mul",
                       "inputs": [writer.mapped(node["inputs"][0]), [s_id, 0, 0]]})
    add = writer.emit({"op": "broadcast_add", "name": f"{base}_add", "inputs": [[mul, 0, 0], [b_id, 0, 0]]})
    writer.remap[(nid, 0)] = (add, 0)


def _absorb(writer: _Writer, nodes: List[dict], node: dict, new: dict, affine: Tuple[np.ndarray, np.ndarray],
            params: Params) -> None:
    """Make ``new`` (the copy of layer ``node``) absorb a BatchNorm's affine map in its weight and bias."""
    scale, shift = affine
    attrs = dict(node.get("attrs", {}))
    axis = _WEIGHT_OUT_AXIS[node["op"]]
    weight = params[nodes[node["inputs"][1][0]]["name"]].asnumpy().astype(np.float64)
    if node["op"] == "Deconvolution" and int(attrs.get("num_group", 1)) != 1:
        raise ModelError(f"cannot fold BatchNorm into grouped deconvolution {node['name']}")
    bshape = [1] * weight.ndim
    bshape[axis] = -1
    w_id = writer.emit_var(f"{node['name']}_folded_weight", weight * scale.reshape(bshape))
    # Deconvolution's op default is no_bias=True, so go by the inputs, not the attribute.
    if _is_true(attrs.get("no_bias", "False")) or len(node["inputs"]) < 3:
        bias = np.zeros_like(scale)
    else:
        bias = params[nodes[node["inputs"][2][0]]["name"]].asnumpy().astype(np.float64)
    b_id = writer.emit_var(f"{node['name']}_folded_bias", bias * scale + shift)
    attrs["no_bias"] = "False"
    new["attrs"] = attrs
    new["inputs"] = [new["inputs"][0], [w_id, 0, 0], [b_id, 0, 0]]


def _is_relu6(node: dict) -> bool:
    """Whether ``node`` is a ``clip`` from 0 to a finite non-negative maximum (a ReLU6, whatever the maximum)."""
    if node["op"] != "clip":
        return False
    attrs = node.get("attrs", {})
    try:
        low, high = float(attrs.get("a_min", "nan")), float(attrs.get("a_max", "nan"))
    except ValueError:
        return False
    return low == 0.0 and 0.0 <= high < np.inf


def _emit_relu6(writer: _Writer, nid: int, node: dict) -> None:
    """Replace ``clip(x, 0, a)`` by ``minimum(relu(x), a)``: the same values, MKLDNN's fast ReLU."""
    relu = writer.emit({"op": "Activation", "name": f"{node['name']}_relu", "attrs": {"act_type": "relu"},
                        "inputs": [writer.mapped(node["inputs"][0])]})
    low = writer.emit({"op": "_minimum_scalar", "name": node["name"], "attrs": {"scalar": node["attrs"]["a_max"]},
                       "inputs": [[relu, 0, 0]]})
    writer.remap[(nid, 0)] = (low, 0)


def _rewrite_nodes(writer: _Writer, nodes: List[dict], plan: _Plan, ranks: Dict[int, int],
                   uses: Dict[Tuple[int, int], int], params: Params, relu6_as_relu: bool) -> Tuple[int, int]:
    """Copy the graph into ``writer`` without BatchNorm and inference-time Dropout, ReLU6 as ReLU and minimum.

    Returns the number of Dropouts removed and of ReLU6 rewritten.
    """
    dropouts = relu6 = 0
    for nid, node in enumerate(nodes):
        if nid in plan.fold_into:
            writer.remap[(nid, 0)] = (writer.copied[plan.fold_into[nid]], 0)
            continue
        if node["op"] == "Dropout" and uses.get((nid, 1), 0) == 0:
            writer.remap[(nid, 0)] = tuple(writer.mapped(node["inputs"][0])[:2])
            dropouts += 1
            continue
        if nid in plan.rewrite:
            _emit_affine(writer, nid, node, plan.rewrite[nid], ranks[nid])
            continue
        if relu6_as_relu and _is_relu6(node):
            _emit_relu6(writer, nid, node)
            relu6 += 1
            continue
        new = dict(node)
        new["inputs"] = [writer.mapped(e) for e in node["inputs"]]
        if nid in plan.absorb:
            _absorb(writer, nodes, node, new, plan.absorb[nid], params)
        writer.copied[nid] = writer.emit(new)
    return dropouts, relu6


def fold_symbol(
    symbol: mx.sym.Symbol,
    params: Params,
    input_name: str = "data",
    input_shape: Sequence[int] | None = None,
    rewrite_relu6: bool = True,
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
    rewrite_relu6 : bool
        Rewrite ``clip(x, 0, a)`` as ``minimum(relu(x), a)`` (the default; see
        the module's notes). False keeps it, for comparison.

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
    uses = _count_uses(graph)
    plan = _plan(nodes, uses, params)
    ranks = _output_ranks(symbol, nodes, plan.rewrite, input_name, input_shape)
    writer = _Writer(params)
    dropouts, relu6 = _rewrite_nodes(writer, nodes, plan, ranks, uses, params, rewrite_relu6)

    out_nodes, heads = _prune(writer.nodes, [writer.mapped(h) for h in graph["heads"]])
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
    report = FoldReport(folded=len(plan.fold_into), rewritten=len(plan.rewrite), dropout_removed=dropouts,
                        mode_free=not remaining, relu6_rewritten=relu6)
    logger.debug("folded %d BatchNorm layers, rewrote %d", report.folded, report.rewritten)
    return folded_symbol, {k: v for k, v in writer.params.items() if k in wanted}, report


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

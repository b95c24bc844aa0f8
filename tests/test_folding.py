"""BatchNorm folding: exact outputs, correct input gradients, frozen copy, original untouched.

Every network here has randomised BatchNorm statistics and affine parameters,
so that a fold that ignored the running mean, the variance, gamma or beta (or
used the wrong epsilon) would change the outputs far beyond the tolerance.
"""

from __future__ import annotations

import json
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import get_model
from mxnet import autograd, gluon

from gluon_robust import folding
from gluon_robust.errors import ModelError
from gluon_robust.folding import block_to_symbol, fold_batchnorm, fold_symbol, symbol_block

warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)

#: The issue's tolerance for folded vs unfolded eval-mode outputs.
OUTPUT_TOL = 1e-4


# ----------------------------------------------------------------- helpers
def _batchnorms(block: gluon.Block) -> List[gluon.nn.BatchNorm]:
    found = [block] if isinstance(block, gluon.nn.BatchNorm) else []
    for child in block._children.values():
        found += _batchnorms(child)
    return found


def randomise_bn(net: gluon.Block, seed: int = 0, calibrate_on: Optional[mx.nd.NDArray] = None) -> None:
    """Give every BatchNorm non-trivial running statistics, gamma and beta.

    With ``calibrate_on``, the running statistics are those of each layer's actual
    input on that batch, perturbed (mean shifted by ~0.2 std, variance scaled by
    0.7-1.4): activations stay of order one and input-dependent through a deep net
    (fresh MobileNets otherwise collapse to constant logits), yet eval mode
    differs from train mode and a fold that mishandled any statistic would show.
    """
    rng = np.random.RandomState(seed)
    touched = 0
    for name, p in net.collect_params().items():
        if name.endswith("running_mean"):
            p.set_data(mx.nd.array(rng.normal(0.0, 0.3, p.shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
        elif name.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith("beta"):
            p.set_data(mx.nd.array(rng.normal(0.0, 0.3, p.shape)))
        else:
            continue
        touched += 1
    assert touched > 0, "the network has no BatchNorm to randomise"
    if calibrate_on is None:
        return

    def calibrate(block, inputs):
        x = inputs[0].asnumpy().astype(np.float64)
        axis = int(block._kwargs.get("axis", 1)) % x.ndim
        other = tuple(a for a in range(x.ndim) if a != axis)
        mean, var = x.mean(axis=other), np.maximum(x.var(axis=other), 1e-2)  # no huge scales on dead channels
        block.running_mean.set_data(mx.nd.array(mean + 0.2 * np.sqrt(var) * rng.normal(size=mean.shape)))
        block.running_var.set_data(mx.nd.array(var * rng.uniform(0.7, 1.4, size=var.shape)))

    handles = [bn.register_forward_pre_hook(calibrate) for bn in _batchnorms(net)]
    net(calibrate_on)  # one eval-mode pass, layer by layer in order
    for handle in handles:
        handle.detach()


def zoo_net(name: str, shape: Tuple[int, ...], seed: int = 0) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = get_model(name, classes=10)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros(shape))
    randomise_bn(net, seed, calibrate_on=random_input(shape, seed=11))
    return net


class DenseBNNet(gluon.HybridBlock):
    """BatchNorm on the input, after a conv, after a Dense layer and after a flatten=False Dense (axis=-1)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        with self.name_scope():
            self.bn_in = gluon.nn.BatchNorm()  # no producer to fold into: rewritten
            self.conv = gluon.nn.Conv2D(6, 3, padding=1)
            self.bn_conv = gluon.nn.BatchNorm()
            self.fc1 = gluon.nn.Dense(16)
            self.bn_fc1 = gluon.nn.BatchNorm()  # BN after a Dense layer: folded into it
            self.fc2 = gluon.nn.Dense(12, flatten=False, use_bias=False)
            self.bn_fc2 = gluon.nn.BatchNorm(axis=-1)  # channel axis given as -1: rewritten
            self.out = gluon.nn.Dense(classes)

    def hybrid_forward(self, F, x):  # noqa: N803
        x = F.relu(self.bn_conv(self.conv(self.bn_in(x))))
        # Average pooling: MKLDNN's eval-mode max-pool backward has its own bug (see
        # gluon_robust.attacks.base.gradient_recording); this net isolates BatchNorm's.
        x = F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="avg")
        x = F.tanh(self.bn_fc1(self.fc1(x)))
        x = F.tanh(self.bn_fc2(self.fc2(x)))
        return self.out(x)


def dense_net(shape: Tuple[int, ...] = (2, 3, 8, 8), seed: int = 0) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = DenseBNNet()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros(shape))
    randomise_bn(net, seed, calibrate_on=random_input(shape, seed=11))
    return net


def exported_symbol_block(tmp_path, shape=(2, 3, 32, 32)) -> Tuple[gluon.SymbolBlock, gluon.HybridBlock]:
    """cifar_resnet20_v1 with random BN, exported and imported back as a SymbolBlock."""
    net = zoo_net("cifar_resnet20_v1", shape, seed=3)
    net.hybridize()
    net(mx.nd.zeros(shape))
    net.export(str(tmp_path / "net"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = gluon.SymbolBlock.imports(str(tmp_path / "net-symbol.json"), ["data"], str(tmp_path / "net-0000.params"))
    return block, net


NETS: Dict[str, Tuple[Callable[[], gluon.HybridBlock], Tuple[int, ...]]] = {
    "cifar_resnet20_v1": (lambda: zoo_net("cifar_resnet20_v1", (2, 3, 32, 32)), (2, 3, 32, 32)),
    "mobilenetv2_0.25": (lambda: zoo_net("mobilenetv2_0.25", (2, 3, 64, 64)), (2, 3, 64, 64)),
    "dense_bn": (lambda: dense_net(), (2, 3, 8, 8)),
    "cifar_resnet20_v2": (lambda: zoo_net("cifar_resnet20_v2", (2, 3, 32, 32)), (2, 3, 32, 32)),
}


def ops_of(block: gluon.HybridBlock) -> List[str]:
    sym = block(mx.sym.var("data"))
    return [node["op"] for node in json.loads(sym.tojson())["nodes"]]


def random_input(shape: Tuple[int, ...], seed: int = 1) -> mx.nd.NDArray:
    return mx.nd.array(np.random.RandomState(seed).rand(*shape), dtype="float32")


def max_abs_diff(a: mx.nd.NDArray, b: mx.nd.NDArray) -> float:
    return float(np.abs(a.asnumpy() - b.asnumpy()).max())


# ------------------------------------------------------------- equality
@pytest.mark.parametrize("name", list(NETS))
def test_folded_outputs_equal_unfolded_eval_outputs(name, record_property):
    build, shape = NETS[name]
    net = build()
    x = random_input(shape)
    folded = fold_batchnorm(net, input_shape=shape)
    assert isinstance(folded, gluon.SymbolBlock)
    assert "BatchNorm" in ops_of(net)
    assert "BatchNorm" not in ops_of(folded)
    expected = net(x)
    # 1e-4, relative to the logits' scale when they exceed 1: the unfolded float32 net is itself
    # only that accurate (mobilenetv2_0.25 here: ~5e-5 from a float64 copy, logits ~5).
    tol = OUTPUT_TOL * max(1.0, float(np.abs(expected.asnumpy()).max()))
    diffs = [max_abs_diff(folded(x), expected)]
    # The same holds on a second, different batch (the fold is not tied to one input).
    x2 = random_input(shape, seed=7) * 2 - 0.5
    diffs.append(max_abs_diff(folded(x2), net(x2)))
    # Folded nets have no BatchNorm left, so recording in train mode changes nothing.
    with autograd.record(train_mode=True):
        in_train_mode = folded(x)
    diffs.append(max_abs_diff(in_train_mode, expected))
    record_property("max_abs_folded_minus_unfolded", max(diffs))
    assert max(diffs) < tol
    # The outputs depend on the input, so the comparison covers more than the biases.
    assert max_abs_diff(net(x2), expected) > 100 * tol


def test_fold_report_counts_folded_and_rewritten_layers():
    v1 = zoo_net("cifar_resnet20_v1", (1, 3, 32, 32))
    _, _, report_v1 = fold_symbol(*block_to_symbol(v1), input_shape=(1, 3, 32, 32))
    assert report_v1.rewritten == 0 and report_v1.folded == 21  # every conv (downsampling ones too) is followed by its BN

    # Pre-activation: BN follows an addition, so it cannot be folded and is rewritten as an affine map.
    v2 = zoo_net("cifar_resnet20_v2", (1, 3, 32, 32))
    _, _, report_v2 = fold_symbol(*block_to_symbol(v2), input_shape=(1, 3, 32, 32))
    assert report_v2.rewritten > 0

    dense = dense_net((1, 3, 8, 8))
    _, _, report_d = fold_symbol(*block_to_symbol(dense), input_shape=(1, 3, 8, 8))
    assert (report_d.folded, report_d.rewritten) == (2, 2)  # conv and fc1 folded; input BN and axis=-1 BN rewritten


def test_rewritten_batchnorm_needs_an_input_shape():
    with pytest.raises(ModelError, match="pass input_shape"):
        fold_batchnorm(zoo_net("cifar_resnet20_v2", (1, 3, 32, 32)))


def test_symbolblock_from_export_folds_exactly(tmp_path):
    shape = (2, 3, 32, 32)
    block, original = exported_symbol_block(tmp_path, shape)
    x = random_input(shape)
    assert max_abs_diff(block(x), original(x)) < 1e-5  # the export round-trips
    folded = fold_batchnorm(block, input_shape=shape)
    assert "BatchNorm" not in ops_of(folded)
    assert max_abs_diff(folded(x), block(x)) < OUTPUT_TOL


def test_fold_symbol_accepts_export_prefixed_params(tmp_path):
    shape = (2, 3, 32, 32)
    _, original = exported_symbol_block(tmp_path, shape)
    symbol = mx.sym.load(str(tmp_path / "net-symbol.json"))
    params = mx.nd.load(str(tmp_path / "net-0000.params"))
    assert all(k.startswith(("arg:", "aux:")) for k in params)
    new_symbol, new_params, report = fold_symbol(symbol, params, input_shape=shape)
    assert report.folded == 21
    block = symbol_block(new_symbol, new_params, mx.cpu())
    x = random_input(shape)
    assert max_abs_diff(block(x), original(x)) < OUTPUT_TOL


def test_check_has_teeth_a_fold_that_ignores_the_running_mean_is_caught(monkeypatch):
    """The randomised statistics make a wrong fold visible far above the tolerance."""
    net = zoo_net("cifar_resnet20_v1", (2, 3, 32, 32))
    x = random_input((2, 3, 32, 32))
    real = folding._bn_affine

    def forget_mean(node, params, names):
        scale, shift = real(node, params, names)
        mean = params[names[3]].asnumpy().astype(np.float64)
        return scale, shift + mean * scale

    monkeypatch.setattr(folding, "_bn_affine", forget_mean)
    wrong = fold_batchnorm(net, input_shape=(2, 3, 32, 32))
    assert max_abs_diff(wrong(x), net(x)) > 100 * OUTPUT_TOL


# -------------------------------------------------- frozen copy, original untouched
def test_folded_params_are_frozen_and_original_is_not_modified():
    shape = (2, 3, 32, 32)
    net = zoo_net("cifar_resnet20_v2", shape)
    x = random_input(shape)
    # (A forward pass first: MXNet's BatchNorm with fix_gamma resets gamma to 1 in place.)
    out_before = net(x).asnumpy()
    before = {k: (p.data().asnumpy().copy(), p.grad_req) for k, p in net.collect_params().items()}

    folded = fold_batchnorm(net, input_shape=shape)

    params = list(folded.collect_params().values())
    assert len(params) > 0
    assert {p.grad_req for p in params} == {"null"}
    after = net.collect_params()
    assert set(after.keys()) == set(before)
    for k, p in after.items():
        np.testing.assert_array_equal(p.data().asnumpy(), before[k][0], err_msg=k)
        assert p.grad_req == before[k][1], k
    assert "BatchNorm" in ops_of(net)
    np.testing.assert_array_equal(net(x).asnumpy(), out_before)
    # The folded copy shares no storage with the original.
    first = next(iter(after.values()))
    first.set_data(first.data() + 1.0)
    assert max_abs_diff(folded(x), mx.nd.array(out_before)) < OUTPUT_TOL


def test_fold_rejects_unusable_models():
    with pytest.raises(ModelError, match="only HybridBlocks"):
        fold_batchnorm(gluon.nn.Sequential())
    fresh = get_model("cifar_resnet20_v1", classes=10)  # never initialised
    with pytest.raises(ModelError, match="not initialised"):
        fold_batchnorm(fresh, input_shape=(1, 3, 32, 32))


class _SplitMany(gluon.HybridBlock):
    """An op with more than eight outputs (split into 10) after a folded BN."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(10, 3, padding=1)
            self.bn = gluon.nn.BatchNorm()
            self.fc = gluon.nn.Dense(10)

    def hybrid_forward(self, F, x):  # noqa: N803
        parts = F.split(self.bn(self.conv(x)), num_outputs=10, axis=1)
        return self.fc(F.concat(*[parts[i] for i in range(9, -1, -1)], dim=1))


def test_fold_handles_ops_with_many_outputs():
    shape = (2, 1, 8, 8)
    net = _SplitMany()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(shape))
    randomise_bn(net)
    x = random_input(shape)
    assert max_abs_diff(fold_batchnorm(net, input_shape=shape)(x), net(x)) < OUTPUT_TOL


def test_fold_into_deconvolution_without_bias():
    """Deconvolution's op default is no_bias=True; a raw symbol without the attribute must still fold."""
    data = mx.sym.var("data")
    deconv = mx.sym.Deconvolution(data, num_filter=4, kernel=(2, 2), name="dc")
    out = mx.sym.FullyConnected(mx.sym.BatchNorm(deconv, name="bn", fix_gamma=False), num_hidden=3, name="fc")
    shape = (2, 2, 4, 4)
    arg_shapes, _, aux_shapes = out.infer_shape(data=shape)
    rng = np.random.RandomState(0)
    params = {n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in zip(out.list_arguments(), arg_shapes) if n != "data"}
    params.update({n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in zip(out.list_auxiliary_states(), aux_shapes)})
    new_symbol, new_params, report = fold_symbol(out, params, input_shape=shape)
    assert report.folded == 1
    x = random_input(shape)
    expected = symbol_block(out, params, mx.cpu())(x)
    assert max_abs_diff(symbol_block(new_symbol, new_params, mx.cpu())(x), expected) < OUTPUT_TOL


# --------------------------------------------------------------- gradients
FD_STEP = 1e-6  # central differences on a float64 copy of the unfolded net (small: ReLU kinks)
N_COORDS = 8


def _loss_grad(block: gluon.Block, x: mx.nd.NDArray, y: mx.nd.NDArray, train_mode: bool = False) -> np.ndarray:
    """Input gradient of the summed cross-entropy, recorded in eval mode unless ``train_mode``."""
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=train_mode):
        loss = mx.nd.softmax_cross_entropy(block(x), y)
    loss.backward()
    return x.grad.asnumpy()


def _central_differences(net: gluon.Block, x: mx.nd.NDArray, y: mx.nd.NDArray, coords) -> np.ndarray:
    """d loss / d x at ``coords`` from the eval-mode loss of ``net`` cast to float64."""
    net.cast("float64")
    x64, y64 = x.astype("float64"), y.astype("float64")

    def loss(z):
        return float(mx.nd.softmax_cross_entropy(net(z), y64).asscalar())

    out = []
    for c in coords:
        plus, minus = x64.copy(), x64.copy()
        plus[c] += FD_STEP
        minus[c] -= FD_STEP
        out.append((loss(plus) - loss(minus)) / (2 * FD_STEP))
    return np.array(out)


def _coords(shape, grad: np.ndarray, seed: int = 5):
    """A few random coordinates plus the two with the largest gradient."""
    rng = np.random.RandomState(seed)
    coords = [tuple(int(rng.randint(0, s)) for s in shape) for _ in range(N_COORDS)]
    top = np.argsort(np.abs(grad).ravel())[-2:]
    coords += [tuple(int(i) for i in np.unravel_index(t, shape)) for t in top]
    return coords


GRAD_NETS = ["cifar_resnet20_v1", "cifar_resnet20_v2", "dense_bn"]


@pytest.mark.parametrize("name", GRAD_NETS)
def test_folded_input_gradients_match_finite_differences(name, record_property):
    build, shape = NETS[name]
    net = build()
    x = random_input(shape)
    y = mx.nd.array(np.arange(shape[0]) % 10)
    folded = fold_batchnorm(net, input_shape=shape)
    assert folded.fold_report.mode_free

    g_fold = _loss_grad(folded, x, y)
    # A mode-free folded graph has the same gradient whichever mode it is recorded in.
    np.testing.assert_allclose(_loss_grad(folded, x, y, train_mode=True), g_fold, rtol=1e-4,
                               atol=1e-5 * np.abs(g_fold).max())
    g_raw = _loss_grad(net, x, y)  # MXNet's own eval-mode BatchNorm backward
    coords = _coords(shape, g_fold)
    fd = _central_differences(net, x, y, coords)

    scale = np.abs(g_fold).max()
    assert scale > 0
    tol = 1e-4 * scale  # float32 backward vs float64 differences (measured: < 1e-6 * scale)
    fold_err = np.abs(g_fold[tuple(zip(*coords))] - fd)
    raw_err = np.abs(g_raw[tuple(zip(*coords))] - fd)
    record_property("fold_fd_max_abs_err", float(fold_err.max()))
    record_property("raw_fd_max_abs_err", float(raw_err.max()))
    record_property("grad_scale", float(scale))
    np.testing.assert_allclose(g_fold[tuple(zip(*coords))], fd, rtol=1e-4, atol=tol)
    # MXNet 1.9.1 bug (the reason folding exists): recorded with train_mode=False, the unfolded
    # net's BatchNorm backward is not the derivative of its running-statistics forward, so the
    # input gradient disagrees with finite differences of the very loss it differentiates. The
    # folded graph has the same convolutions and pooling and agrees, so BatchNorm is the culprit.
    assert raw_err.max() > 100 * tol
    rel = np.linalg.norm(g_raw - g_fold) / np.linalg.norm(g_fold)
    record_property("raw_vs_fold_relative_l2", float(rel))
    assert rel > 0.1


def test_symbolblock_input_gradients_match_finite_differences(tmp_path):
    shape = (2, 3, 32, 32)
    block, original = exported_symbol_block(tmp_path, shape)
    x = random_input(shape)
    y = mx.nd.array([1, 6])
    g_fold = _loss_grad(fold_batchnorm(block, input_shape=shape), x, y)
    coords = _coords(shape, g_fold)
    fd = _central_differences(original, x, y, coords)
    np.testing.assert_allclose(g_fold[tuple(zip(*coords))], fd, rtol=1e-4, atol=1e-4 * np.abs(g_fold).max())


def test_folded_gradient_leaves_parameters_without_gradients():
    shape = (2, 3, 32, 32)
    folded = fold_batchnorm(zoo_net("cifar_resnet20_v1", shape), input_shape=shape)
    g = _loss_grad(folded, random_input(shape), mx.nd.array([0, 1]))
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    for p in folded.collect_params().values():
        assert p.grad_req == "null"
        with pytest.raises(RuntimeError):
            p.grad()


# ------------------------------------------------------------- ReLU6 as ReLU and minimum
class _Relu6Net(gluon.HybridBlock):
    """conv -> clip(0, 6) -> dense, without BatchNorm: the fold changes nothing but the ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(4, 3, padding=1, in_channels=1, use_bias=False)
            self.fc = gluon.nn.Dense(3, in_units=4 * 5 * 5)

    def hybrid_forward(self, F, x):
        return self.fc(F.clip(self.conv(x), 0.0, 6.0))


def _relu6_pair():
    net = _Relu6Net()
    net.initialize(mx.init.Normal(1.0))
    net.hybridize()
    net(mx.nd.zeros((1, 1, 5, 5)))
    sym, params = block_to_symbol(net)
    folded, new_params, report = fold_symbol(sym, params)
    return symbol_block(sym, params, mx.cpu()), symbol_block(folded, new_params, mx.cpu()), folded, report


def _grad_of_sum(block: gluon.Block, x: mx.nd.NDArray) -> Tuple[np.ndarray, np.ndarray]:
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=False):
        out = block(x)
        loss = (out * mx.nd.array([[1.0, -2.0, 0.5]])).sum()
    loss.backward()
    return out.asnumpy(), x.grad.asnumpy()


def test_relu6_becomes_relu_and_minimum_with_the_same_values_and_gradients():
    original, folded, folded_symbol, report = _relu6_pair()
    ops = [n["op"] for n in json.loads(folded_symbol.tojson())["nodes"]]
    assert report.relu6_rewritten == 1 and "clip" not in ops
    assert "Activation" in ops and "_minimum_scalar" in ops
    # Inputs spread so that pre-activations fall below 0, inside (0, 6) and above 6, never exactly on a kink.
    x = mx.nd.array(np.random.RandomState(0).normal(0, 3, size=(16, 1, 5, 5)), dtype="float32")
    want_out, want_grad = _grad_of_sum(original, x)  # oracle: MXNet's own clip and its backward
    got_out, got_grad = _grad_of_sum(folded, x)
    assert np.array_equal(got_out, want_out)
    assert np.array_equal(got_grad, want_grad)
    assert np.abs(want_grad).max() > 0


def test_relu6_at_a_zero_pre_activation_passes_no_gradient():
    # An input of zeros gives pre-activations of exactly 0 (no bias): clip passes the gradient there,
    # relu (and PyTorch's ReLU6) does not. Above 6 and below 0 both pass none.
    original, folded, _, _ = _relu6_pair()
    x = mx.nd.zeros((1, 1, 5, 5))
    assert np.abs(_grad_of_sum(original, x)[1]).max() > 0
    assert np.array_equal(_grad_of_sum(folded, x)[1], np.zeros((1, 1, 5, 5), np.float32))


def test_a_clip_that_is_not_a_relu6_is_kept():
    data = mx.sym.var("data")
    sym = mx.sym.clip(data, -1.0, 6.0) + mx.sym.clip(data, 0.0, 1.0)
    folded, _, report = fold_symbol(sym, {})
    ops = [n["op"] for n in json.loads(folded.tojson())["nodes"]]
    assert report.relu6_rewritten == 1 and ops.count("clip") == 1


def test_folded_mobilenet_input_gradients_match_finite_differences():
    build, shape = NETS["mobilenetv2_0.25"]
    net = build()
    x = random_input(shape)
    y = mx.nd.array(np.arange(shape[0]) % 10)
    folded = fold_batchnorm(net, input_shape=shape)
    assert folded.fold_report.relu6_rewritten > 0
    g_fold = _loss_grad(folded, x, y)
    coords = _coords(shape, g_fold)
    fd = _central_differences(net, x, y, coords)
    scale = np.abs(g_fold).max()
    assert scale > 0
    np.testing.assert_allclose(g_fold[tuple(zip(*coords))], fd, rtol=1e-4, atol=1e-4 * scale)

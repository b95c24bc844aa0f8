"""The GluonCV classification zoo: one network per family, folded and differentiated correctly.

Each network gets fixed random weights and BatchNorm statistics calibrated on its
own activations (perturbed, so that a fold mishandling any statistic would show),
is saved and loaded back through ``load_classifier(NAME, params=FILE)`` (the path
of ``--model NAME``), at a small input size where the architecture allows. The
oracles never use the code under test: logits come from the GluonCV net itself
with the normalisation written out here, gradients from central finite
differences of that net cast to float64, and GroupNorm from a NumPy formula.

The full sweep over every zoo classifier (``benchmarks/zoo_matrix.py``) is the
test marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, List, Tuple

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import get_model
from mxnet import autograd, gluon

from gluon_robust.attacks.base import gradient_recording
from gluon_robust.cli import main as cli_main
from gluon_robust.config import IMAGENET_MEAN, IMAGENET_STD, family_defaults
from gluon_robust.errors import ModelError
from gluon_robust.folding import block_to_symbol, fold_batchnorm
from gluon_robust.model import load_classifier
from gluon_robust.zoo import classifier_names, mkldnn_active, refusal_reason, zoo_names, zoo_task

warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)

REPO = Path(__file__).resolve().parent.parent
LOGITS_TOL = 1e-4
ROUNDING_FACTOR = 4.0  # benchmarks/zoo_matrix.py's factor over the float32 rounding floor
GRAD_TOL = 5e-2
FD_STEP = 1e-5
MEAN = np.asarray(IMAGENET_MEAN, np.float64).reshape(1, 3, 1, 1)
STD = np.asarray(IMAGENET_STD, np.float64).reshape(1, 3, 1, 1)


# ----------------------------------------------------------------- helpers
def _descendants(block: gluon.Block) -> List[gluon.Block]:
    out = [block]
    for child in block._children.values():
        out += _descendants(child)
    return out


def random_zoo_net(name: str, size: int, classes: int = 10, seed: int = 0) -> gluon.HybridBlock:
    """A GluonCV net with seeded Xavier weights and BatchNorm calibrated on random inputs."""
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    kwargs = {"num_classes": classes} if name.startswith("hrnet") else {"classes": classes}
    net = get_model(name, pretrained=False, **kwargs)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros((1, 3, size, size)))
    layers = [b for b in _descendants(net) if hasattr(b, "running_mean")]
    for block in layers:
        block.gamma.set_data(mx.nd.array(rng.uniform(0.5, 1.5, block.gamma.shape)))
        block.beta.set_data(mx.nd.array(rng.normal(0.0, 0.2, block.beta.shape)))

    def calibrate(block: Any, inputs: Any) -> None:
        x = inputs[0].asnumpy().astype(np.float64)
        other = tuple(a for a in range(x.ndim) if a != 1)
        mean, var = x.mean(axis=other), np.maximum(x.var(axis=other), 1e-2)
        block.running_mean.set_data(mx.nd.array(mean + 0.2 * np.sqrt(var) * rng.normal(size=mean.shape)))
        block.running_var.set_data(mx.nd.array(var * rng.uniform(0.7, 1.4, size=var.shape)))

    handles = [b.register_forward_pre_hook(calibrate) for b in layers]
    net(mx.nd.array((rng.uniform(0, 1, (4, 3, size, size)) - MEAN) / STD))
    for handle in handles:
        handle.detach()
    return net


def first(out: Any) -> mx.nd.NDArray:
    return out[0] if isinstance(out, (list, tuple)) else out


def gluoncv_logits(net: gluon.Block, x: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The oracle: the GluonCV net on ``(x - mean) / std``, eval mode."""
    return first(net(mx.nd.array((x - MEAN) / STD, dtype=dtype))).asnumpy().astype(np.float64)


def folded_gradient(model: gluon.Block, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Input gradient of ``w . logits``, recorded as the attacks record it."""
    xv = mx.nd.array(x)
    xv.attach_grad()
    with gradient_recording(model):
        loss = (model(xv) * mx.nd.array(w)).sum()
    loss.backward()
    return xv.grad.asnumpy()[0]


def central_differences(net: gluon.Block, x: np.ndarray, w: np.ndarray, coords: List[Tuple[int, ...]],
                        dtype: str = "float64", step: float = FD_STEP) -> np.ndarray:
    net.cast(dtype)
    x64 = x.astype(np.float64)
    out = []
    for c in coords:
        plus, minus = x64.copy(), x64.copy()
        plus[(0,) + c] += step
        minus[(0,) + c] -= step
        out.append(((gluoncv_logits(net, plus, dtype) - gluoncv_logits(net, minus, dtype))[0] * w).sum() / (2 * step))
    return np.array(out)


def coordinates(shape: Tuple[int, ...], grad: np.ndarray, seed: int = 5) -> List[Tuple[int, ...]]:
    """Four random coordinates and the two with the largest gradient."""
    rng = np.random.RandomState(seed)
    coords = [tuple(int(rng.randint(0, s)) for s in shape) for _ in range(4)]
    return coords + [tuple(int(i) for i in np.unravel_index(t, shape)) for t in np.argsort(np.abs(grad).ravel())[-2:]]


def load_through_zoo_path(net: gluon.HybridBlock, name: str, size: int, tmp_path: Path, classes: int = 10):
    """Save ``net``'s weights and load them as ``--model NAME --params FILE --input-size SIZE`` does."""
    weights = tmp_path / f"{name}.params"
    net.save_parameters(str(weights))
    return load_classifier(name, params=str(weights), classes=classes, input_size=size, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD)


# ----------------------------------------------------------------- one net per family
FAMILIES = {
    "resnet18_v1": 64,               # ResNet v1: BN after every conv, max pooling
    "resnet18_v2": 64,               # pre-activation: BN rewritten as an affine map
    "resnet18_v1b_0.89": 64,         # pruned ResNet v1b (per-layer channel counts)
    "se_resnet18_v1": 64,            # squeeze-and-excitation
    "resnest14": 64,                 # split attention, DropBlock (identity in eval mode)
    "mobilenet0.25": 64,             # depthwise convolutions
    "mobilenetv3_small": 64,         # hard swish, SE
    "shufflenet_v2": 64,             # channel shuffle reshapes
    "squeezenet1.1": 224,            # no BatchNorm at all (a fixed 13x13 pooling needs 224)
    "vgg11_bn": 32,                  # BN after conv, dense head with Dropout
    "dla34": 64,                     # deep layer aggregation
    "hrnet_w18_small_v1_c": 64,      # multi-resolution branches
    "cifar_residualattentionnet56": 32,  # attention masks, upsampling
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_folds_exactly_and_differentiates_like_finite_differences(name, tmp_path, record_property):
    size = FAMILIES[name]
    classes = 1000 if "_0." in name else 10  # the pruned ResNets have a fixed 1000-class head
    net = random_zoo_net(name, size, classes=classes)
    model = load_through_zoo_path(net, name, size, tmp_path, classes=classes)
    assert model.folded and model.mode_free

    rng = np.random.RandomState(3)
    x = rng.uniform(0, 1, (2, 3, size, size)).astype(np.float32)
    expected = gluoncv_logits(net, x)
    scale = np.abs(expected).max()
    logits_err = np.abs(model.predict(x) - expected).max() / scale
    record_property("logits_rel_err", float(logits_err))
    assert logits_err <= LOGITS_TOL
    assert np.abs(expected[0] - expected[1]).max() > 100 * LOGITS_TOL * scale  # the logits depend on the input

    w = rng.normal(size=(1, classes))
    g = folded_gradient(model, x[:1], w)
    coords = coordinates(g.shape, g)
    fd = central_differences(net, x[:1], w[0], coords)
    grad_err = np.abs(np.array([g[c] for c in coords]) - fd).max() / np.abs(fd).max()
    record_property("grad_rel_err", float(grad_err))
    assert np.abs(fd).max() > 0 and grad_err <= GRAD_TOL


# ----------------------------------------------------------------- GroupNorm
def numpy_group_norm(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
    return g.reshape(x.shape) * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)


class _GNNet(gluon.HybridBlock):
    def __init__(self) -> None:
        super().__init__()
        from gluoncv.nn.gn import GroupNorm

        with self.name_scope():
            self.gn = GroupNorm(ngroups=4, in_channels=8)

    def hybrid_forward(self, F, x):  # noqa: N803
        return self.gn(x)


def test_gluoncv_groupnorm_traces_and_matches_the_formula_and_its_gradient():
    net = _GNNet()
    net.initialize()
    rng = np.random.RandomState(0)
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.normal(size=8)
    net.gn.gamma.set_data(mx.nd.array(gamma))
    net.gn.beta.set_data(mx.nd.array(beta))
    x = rng.normal(1.0, 2.0, (2, 8, 5, 5))
    symbol, _ = block_to_symbol(net)
    ops = [node["op"] for node in json.loads(symbol.tojson())["nodes"]]
    assert "GroupNorm" in ops and "BatchNorm" not in ops
    traced = fold_batchnorm(net, input_shape=x.shape)
    assert traced.fold_report.mode_free
    np.testing.assert_allclose(traced(mx.nd.array(x)).asnumpy(), numpy_group_norm(x, 4, gamma, beta), atol=1e-5)
    # Gradient of sum(v * GN(x)) against float64 NumPy central differences.
    v = rng.normal(size=x.shape)
    xv = mx.nd.array(x)
    xv.attach_grad()
    with autograd.record(train_mode=True):
        loss = (traced(xv) * mx.nd.array(v)).sum()
    loss.backward()
    g = xv.grad.asnumpy()
    for c in [(0, 0, 0, 0), (1, 5, 2, 3), (0, 7, 4, 4), (1, 2, 1, 0)]:
        plus, minus = x.copy(), x.copy()
        plus[c] += 1e-6
        minus[c] -= 1e-6
        fd = ((numpy_group_norm(plus, 4, gamma, beta) - numpy_group_norm(minus, 4, gamma, beta)) * v).sum() / 2e-6
        assert abs(g[c] - fd) <= 1e-3 * max(1.0, abs(fd))
    # Tracing leaves the layer as it was: it still runs imperatively.
    assert "hybrid_forward" not in vars(net.gn)
    np.testing.assert_allclose(net(mx.nd.array(x)).asnumpy(), numpy_group_norm(x, 4, gamma, beta), atol=1e-5)


def test_resnet_v1b_groupnorm_loads_folds_and_differentiates(tmp_path):
    name, size = "resnet50_v1b_gn", 64
    net = random_zoo_net(name, size)
    model = load_through_zoo_path(net, name, size, tmp_path)
    assert model.mode_free
    rng = np.random.RandomState(3)
    x = rng.uniform(0, 1, (2, 3, size, size)).astype(np.float32)
    expected = gluoncv_logits(net, x)
    assert np.abs(model.predict(x) - expected).max() <= LOGITS_TOL * np.abs(expected).max()
    w = rng.normal(size=(1, 10))
    g = folded_gradient(model, x[:1], w)
    coords = coordinates(g.shape, g)
    # GluonCV's GroupNorm builds float32 constants, so this net has no float64 forward:
    # float32 differences with a larger step (the formula itself is checked in float64 above).
    fd = central_differences(net, x[:1], w[0], coords, dtype="float32", step=3e-3)
    assert np.abs(np.array([g[c] for c in coords]) - fd).max() <= GRAD_TOL * np.abs(fd).max()


# ----------------------------------------------------------------- several outputs
def test_nasnet_is_used_through_its_first_output(tmp_path):
    name, size = "nasnet_4_1056", 64
    net = random_zoo_net(name, size)
    x = np.random.RandomState(4).uniform(0, 1, (2, 3, size, size)).astype(np.float32)
    raw = net(mx.nd.array((x - MEAN) / STD))
    assert isinstance(raw, (list, tuple)) and len(raw) == 2  # logits and the auxiliary head
    with pytest.raises(ModelError, match="2 outputs.*FirstOutput"):
        fold_batchnorm(net, input_shape=x.shape)
    model = load_through_zoo_path(net, name, size, tmp_path)
    logits = model.predict(x)
    assert logits.shape == (2, 10)
    expected = raw[0].asnumpy()
    assert np.abs(logits - expected).max() <= LOGITS_TOL * np.abs(expected).max()
    assert np.abs(logits - raw[1].asnumpy()).max() > 1e-2  # not the auxiliary output
    # The auxiliary head is pruned from the folded graph.
    folded_names = list(model.net.collect_params().keys())
    assert not any(n.startswith(net.out_aux.prefix) for n in folded_names if net.out_aux.prefix)


# ----------------------------------------------------------------- which names, refusals
def test_classification_rule_keeps_classifiers_and_excludes_other_tasks():
    names = classifier_names()
    assert len(names) >= 120
    for name in ("resnet50_v1", "resnet50_v1b_gn", "nasnet_6_4032", "darknet53", "hrnet_w18_c", "resnet50_v1d_0.11",
                 "cifar_resnet20_v1", "mobilenet1.0_int8", "dla34"):
        assert name in names, name
    expected = {"ssd_300_vgg16_atrous_voc": "object detection", "yolo3_darknet53_coco": "object detection",
                "fcn_resnet50_voc": "semantic segmentation", "hrnet_w18_small_v1_s": "semantic segmentation",
                "simple_pose_resnet18_v1b": "pose estimation", "i3d_resnet50_v1_kinetics400": "action recognition",
                "vgg16_ucf101_int8": "action recognition", "monodepth2_resnet18_kitti_stereo_640x192": "depth",
                "siamrpn_alexnet_v2_otb15": "tracking", "center_net_dla34_voc": "object detection"}
    for name, task in expected.items():
        assert task in zoo_task(name) and name not in names, name
    assert len(names) + sum(zoo_task(n) != "image classification" for n in zoo_names()) == len(zoo_names())


@pytest.mark.parametrize("name, twin", [("mobilenet1.0_int8", "mobilenet1.0"), ("resnet50_v1_int8", "resnet50_v1")])
def test_int8_models_are_refused_with_their_float_twin(name, twin, tmp_path, capsys):
    assert f"use the float twin {twin}" in refusal_reason(name)
    with pytest.raises(ModelError, match=rf"'{name}' is not supported: quantised .*use the float twin {twin}$"):
        load_classifier(name)
    rc = cli_main(["attack", "--model", name, "--data", "mnist-sample", "--attack", "pgd", "--eps", "8/255",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].endswith(f"use the float twin {twin}")


def test_pruned_resnets_refuse_another_class_count():
    with pytest.raises(ModelError, match="fixed 1000-class head"):
        load_classifier("resnet50_v1d_0.11", classes=10)


def test_non_classifiers_are_refused_by_name():
    with pytest.raises(ModelError, match="ssd_300_vgg16_atrous_voc is a model for object detection, not an image"):
        load_classifier("ssd_300_vgg16_atrous_voc")


def test_family_input_sizes():
    assert family_defaults("nasnet_6_4032")["input_size"] == (3, 331, 331)
    assert family_defaults("resnest269")["input_size"] == (3, 416, 416)
    assert family_defaults("xception71")["input_size"] == (3, 299, 299)
    assert family_defaults("resnest50")["input_size"] == (3, 224, 224)


def _committed_matrix() -> dict:
    return json.loads((REPO / "benchmarks" / "results" / "zoo_matrix.json").read_text())


def test_committed_matrix_rows_are_consistent():
    """Every recorded row is a classifier with a status its own figures justify."""
    results = _committed_matrix()
    assert {"revision", "cpu_count", "versions"} <= set(results["meta"])
    assert set(results["networks"]) <= set(classifier_names())
    assert {e["name"] for e in results["excluded"]} == set(zoo_names()) - set(classifier_names())
    for name, row in results["networks"].items():
        assert row["status"] in ("supported", "refused", "failed"), name
        if row["status"] == "supported":
            # a deep net may use a larger logits tolerance only when float32 rounding of its weights was measured
            # to move its logits that far (see benchmarks/zoo_matrix.py), and never beyond 10x the base one
            floor = row.get("logits_rounding_floor", 0.0)
            assert row["logits_rel_err"] <= min(max(LOGITS_TOL, ROUNDING_FACTOR * floor), 10 * LOGITS_TOL), name
            assert row["grad_rel_err"] <= GRAD_TOL, name
            assert row["pgd"]["n"] == 2 and row["fwd_bwd_ms"] > 0 and row["params"] > 0, name
        elif row["status"] == "refused":
            assert row["reason"] == refusal_reason(name) and row["reason"] in row["cli_message"], name
        else:
            assert row["stage"] and row["error"], name


def test_nasnet_6_4032_is_refused_only_while_mkldnn_runs(monkeypatch, tmp_path, capsys):
    """The refusal names the workaround, the CLI prints it in one line, and MXNET_MKLDNN_ENABLED=0 lifts it."""
    monkeypatch.delenv("MXNET_MKLDNN_ENABLED", raising=False)
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        assert refusal_reason("nasnet_6_4032") is None
        return
    assert mkldnn_active() and "MXNET_MKLDNN_ENABLED=0" in refusal_reason("nasnet_6_4032")
    assert refusal_reason("nasnet_4_1056") is None  # its siblings are not refused
    rc = cli_main(["attack", "--model", "nasnet_6_4032", "--data", "mnist-sample", "--attack", "pgd", "--eps", "8/255",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "could not construct a sub-memory" in err[0]
    monkeypatch.setenv("MXNET_MKLDNN_ENABLED", "0")
    assert not mkldnn_active() and refusal_reason("nasnet_6_4032") is None


_NASNET_GRADIENT = """
import sys, numpy as np, mxnet as mx
from gluon_robust.attacks.base import input_gradient
from gluon_robust.model import load_classifier
from gluon_robust.zoo import build_zoo_net
mx.random.seed(0)
net = build_zoo_net("nasnet_6_4032", 1000, pretrained=False, ctx=mx.cpu())
net.initialize(mx.init.Xavier(magnitude=2.0))
net(mx.nd.zeros((1, 3, 224, 224)))
net.save_parameters(sys.argv[1])
model = load_classifier(net, input_size=(3, 224, 224))
grad, _, _ = input_gradient(model, mx.nd.array(np.random.rand(1, 3, 224, 224)), mx.nd.zeros((1,)), None,
                            lambda logits, y, t: logits.sum(axis=1))
print("finite gradient:", bool(np.isfinite(grad.asnumpy()).all()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mkldnn", ["1", "0"])
def test_the_mkldnn_refusal_is_still_needed(mkldnn, tmp_path):
    """MXNet's MKLDNN backward still fails on nasnet_6_4032 (else drop the refusal), and works without MKLDNN."""
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        pytest.skip("this MXNet build has no MKLDNN: the refusal does not apply")
    env = dict(os.environ, MXNET_MKLDNN_ENABLED=mkldnn, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _NASNET_GRADIENT, str(tmp_path / "w.params")], capture_output=True,
                          text=True, env=env, timeout=900)
    if mkldnn == "1":
        assert proc.returncode != 0 and "could not construct a sub-memory" in proc.stderr
    else:
        assert proc.returncode == 0 and "finite gradient: True" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_committed_matrix_covers_every_classifier():
    """The acceptance bar: every classifier supported or refused, at least 110 supported."""
    rows = _committed_matrix()["networks"]
    assert set(rows) == set(classifier_names())
    assert {n: r.get("error") for n, r in rows.items() if r["status"] == "failed"} == {}
    assert sum(r["status"] == "supported" for r in rows.values()) >= 110


# ----------------------------------------------------------------- the full sweep
@pytest.mark.slow
def test_full_zoo_sweep(tmp_path):
    out = tmp_path / "zoo_matrix.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "zoo_matrix.py"), "--out", str(out)], check=True,
                   cwd=REPO)
    rows = json.loads(out.read_text())["networks"]
    assert set(rows) == set(classifier_names())
    failed = {n: r.get("error") for n, r in rows.items() if r["status"] not in ("supported", "refused")}
    assert not failed
    assert sum(r["status"] == "supported" for r in rows.values()) >= 110

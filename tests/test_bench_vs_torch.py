"""The PyTorch side-by-side benchmark's weight port and table (no timing here).

The oracles are facts about torchvision, not this code: torchvision's
``resnet50`` has 267 ``state_dict`` entries besides BatchNorm's step counters
(53 convolutions, 53 BatchNorms of 4, the fully connected weight and bias)
and ``mobilenet_v2`` 262 (52 convolutions, 52 BatchNorms of 4, a Linear
weight and bias), and a few of their keys, spelled as torchvision spells them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gluoncv.model_zoo import get_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_vs_torch  # noqa: E402
from weight_port import port, torch_name, zero_filled  # noqa: E402

TORCHVISION_ENTRIES = {"resnet50_v1b": 267, "mobilenetv2_1.0": 262}
TORCHVISION_KEYS = {
    "resnet50_v1b": ["conv1.weight", "bn1.running_var", "layer1.0.downsample.1.running_mean", "layer2.3.conv2.weight",
                     "layer4.2.bn3.weight", "fc.weight", "fc.bias"],
    "mobilenetv2_1.0": ["features.0.0.weight", "features.0.1.bias", "features.1.conv.0.0.weight",
                        "features.1.conv.0.1.running_var", "features.1.conv.1.weight", "features.1.conv.2.bias",
                        "features.2.conv.0.0.weight", "features.2.conv.1.0.weight", "features.2.conv.2.weight",
                        "features.17.conv.3.running_mean", "features.18.0.weight", "features.18.1.weight",
                        "classifier.1.weight", "classifier.1.bias"],
}


def gluon_names(arch):
    net = get_model(arch, classes=10 if arch.startswith("cifar") else 1000)
    return list(net._collect_params_with_prefix())


@pytest.mark.parametrize("arch", sorted(TORCHVISION_ENTRIES))
def test_every_gluon_parameter_lands_on_one_torchvision_key(arch):
    names = gluon_names(arch)
    mapped = [torch_name(arch, n) for n in names]
    assert len(set(mapped)) == len(names), "two GluonCV parameters share a torch key"
    keys = set(mapped) | set(zero_filled(arch))
    assert len(keys) == TORCHVISION_ENTRIES[arch]
    assert set(TORCHVISION_KEYS[arch]) <= keys
    assert not any(k.endswith((".gamma", ".beta")) for k in keys)


def test_port_refuses_a_gap_or_a_collision_and_reshapes_the_head():
    arch = "mobilenetv2_1.0"
    names = gluon_names(arch)
    rng = np.random.default_rng(0)
    shapes = {torch_name(arch, n): (3, 2) for n in names}
    shapes["classifier.1.weight"] = (6,)  # the 1x1-conv head becomes a Linear weight of another layout
    shapes["classifier.1.bias"] = (4,)
    gluon = {n: rng.normal(size=(3, 2, 1, 1) if n == "output.0.weight" else (6,)) for n in names}
    out = port(arch, gluon, shapes)
    assert set(out) == set(shapes)
    np.testing.assert_array_equal(out["classifier.1.bias"], np.zeros(4, np.float32))
    np.testing.assert_allclose(out["classifier.1.weight"], gluon["output.0.weight"].reshape(6), rtol=1e-6)
    np.testing.assert_allclose(out["features.1.conv.0.1.weight"], gluon["features.3.out.1.gamma"].reshape(3, 2),
                               rtol=1e-6)
    with pytest.raises(KeyError, match="got no Gluon parameter"):
        port(arch, {k: v for k, v in gluon.items() if k != "features.5.out.4.beta"}, shapes)
    with pytest.raises(KeyError, match="does not have"):
        port(arch, gluon, {k: v for k, v in shapes.items() if k != "features.3.conv.1.1.bias"})
    with pytest.raises(ValueError, match="shape"):
        port(arch, gluon, dict(shapes, **{"features.0.0.weight": (7,)}))


def test_cifar_twin_keeps_gluoncv_names():
    assert torch_name("cifar_resnet20_v1", "features.3.0.downsample.1.gamma") == "features.3.0.downsample.1.weight"
    assert torch_name("cifar_resnet20_v1", "output.bias") == "output.bias"
    with pytest.raises(KeyError):
        torch_name("vgg16", "features.0.weight")


def _run(ms_ours, ms_ta, ms_co):
    return {"input": [3, 224, 224], "batch": 8, "ratios": {"ours/torchattacks": ms_ours / ms_ta,
                                                          "ours/compiled": ms_ours / ms_co},
            "contestants": {"ours": {"ms_per_image_step": ms_ours, "peak_rss_mb": 1000.4},
                            "torchattacks": {"ms_per_image_step": ms_ta, "peak_rss_mb": 2000.6},
                            "compiled": {"ms_per_image_step": ms_co, "peak_rss_mb": 3000.0}}}


def test_table_has_one_row_per_thread_count_and_model_in_order():
    newer = dict(_run(50.0, 40.0, 25.0), revision={"commit": "0123456789abcdef", "code_dirty": False})
    payload = {"runs": {"2": {"models": {"resnet50_v1b": newer}},
                        "1": {"models": {"resnet50_v1b": _run(90.0, 100.0, 60.0)}}}}
    lines = bench_vs_torch.markdown(payload).splitlines()
    assert len(lines) == 4
    assert lines[2] == ("| 1 | resnet50_v1b | 3x224x224 | 8 | 90.00 | 100.00 | 60.00 | 0.90 | 1.50 | "
                        "1000 / 2001 / 3000 | not recorded |")
    assert lines[3] == ("| 2 | resnet50_v1b | 3x224x224 | 8 | 50.00 | 40.00 | 25.00 | 1.25 | 2.00 | "
                        "1000 / 2001 / 3000 | 0123456 |")


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--batch-size", "-1"), ("--models", "vgg16")])
def test_bad_flags_name_flag_and_value(flag, value, capsys):
    with pytest.raises(SystemExit):
        bench_vs_torch.parse_args([flag, value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and value.lstrip("-") in err


TORCH_PYTHON = REPO / "benchmarks" / ".venv-autoattack" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not TORCH_PYTHON.exists(), reason="no benchmark venv (make bench-torch builds it)")
def test_ported_mnist_twin_gives_the_same_logits(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_vs_torch.py"), "--models", "mnist_resnet20",
                    "--batch-size", "4", "--steps", "1", "--warmup-steps", "1", "--repeats", "1",
                    "--out", str(tmp_path)], check=True, env=env, timeout=900)
    import json

    run = json.loads((tmp_path / "vs_torch.json").read_text())["runs"]["1"]["models"]["mnist_resnet20"]
    assert run["logit_check"]["relative_diff"] < 1e-4 and run["logit_check"]["same_argmax"]


def test_blackbox_overhead_table_shows_each_attack_ratio_and_rate():
    import bench_blackbox_overhead

    payload = {"runs": {"mobilenetv2_1.0@32": {"input": [3, 224, 224], "batch": 32, "forward_ms": 2500.04, "attacks": {
        "square": {"ratio": 1.049, "queries_per_s": 13.4, "overhead_ms": 61.6},
        "nes": {"ratio": 0.5, "queries_per_s": 26.6}}}}}  # a run recorded before the in-run split
    lines = bench_blackbox_overhead.markdown(payload).splitlines()
    assert lines[0] == "| model | input | batch | forward ms | square | simba | nes | hopskipjump |"
    assert lines[2] == "| mobilenetv2_1.0 | 3x224x224 | 32 | 2500.0 | 1.05x (13 q/s, +62 ms) | - | 0.50x (27 q/s) | - |"

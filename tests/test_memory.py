"""Memory at ImageNet scale: the automatic batch size, ``--max-memory``, and streaming of large image folders.

The estimate is checked on a net whose tensors can be counted by hand; the
streaming test measures the peak resident memory of real command-line runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import cv2
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_robust.cli import main
from gluon_robust.data import ArraySource
from gluon_robust.errors import ModelError
from gluon_robust.evaluation import evaluate
from gluon_robust.memory import (
    BACKWARD_FACTOR, INPUT_COPIES, MAX_AUTO_BATCH, PARAMETER_COPIES, RUNTIME_BYTES, auto_batch_size, estimate_memory,
    parse_size, resolve_batch_size,
)
from gluon_robust.model import Classifier
from gluon_robust.validation import InvalidValue

ROOT = Path(__file__).resolve().parents[1]

# The hand count for conv(4 filters, 3x3, pad 1) -> relu -> dense(10) on a 1x8x8 input, float32 (4 bytes):
CONV_OUT = 4 * 8 * 8  # conv output, and as many for the relu
ACTIVATIONS = (CONV_OUT + CONV_OUT + 10) * 4  # 2,088 bytes
PARAMETERS = (4 * 1 * 3 * 3 + 4 + 10 * CONV_OUT + 10) * 4  # conv weight and bias, dense weight and bias: 10,440 bytes
INPUT = 1 * 8 * 8 * 4


def counted_net() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, padding=1, in_channels=1), gluon.nn.Activation("relu"),
            gluon.nn.Dense(10, in_units=CONV_OUT))
    net.initialize(mx.init.Xavier())
    return net


def counted_classifier() -> Classifier:
    """The counted net behind a Classifier, which adds (x - mean) / std: two more 1x8x8 outputs and two constants."""
    return Classifier(counted_net(), num_classes=10, input_size=(1, 8, 8), mean=0.5, std=0.25)


# the Classifier's sizes, by hand
CLS_ACTIVATIONS = ACTIVATIONS + 2 * INPUT
CLS_PARAMETERS = PARAMETERS + 2 * 4
CLS_PER_SAMPLE = int(BACKWARD_FACTOR * CLS_ACTIVATIONS) + INPUT_COPIES * INPUT
CLS_FIXED = PARAMETER_COPIES * CLS_PARAMETERS + RUNTIME_BYTES


# ------------------------------------------------------------------ the estimate
def test_estimate_counts_every_internal_output_and_parameter():
    estimate = estimate_memory(counted_net(), (1, 8, 8))
    assert estimate.activation_bytes == ACTIVATIONS == 2088
    assert estimate.parameter_bytes == PARAMETERS == 10440
    assert estimate.input_bytes == INPUT
    assert estimate.per_sample_bytes == int(BACKWARD_FACTOR * 2088) + INPUT_COPIES * 256
    assert estimate.fixed_bytes == PARAMETER_COPIES * 10440 + RUNTIME_BYTES
    assert estimate.batch_bytes(5) == estimate.fixed_bytes + 5 * estimate.per_sample_bytes


def test_estimate_of_a_classifier_includes_its_normalisation_and_scales_with_the_input():
    model = counted_classifier()
    model.hybridize(static_alloc=True)
    model(mx.nd.zeros((3, 1, 8, 8)))  # a hybridised, already-run model traces the same graph
    estimate = estimate_memory(model, (1, 8, 8))
    assert (estimate.activation_bytes, estimate.parameter_bytes) == (CLS_ACTIVATIONS, CLS_PARAMETERS)
    assert (estimate.per_sample_bytes, estimate.fixed_bytes) == (CLS_PER_SAMPLE, CLS_FIXED)
    # a global-pooling net on a 4x larger image: every activation is 4x larger, the parameters are the same
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, padding=1, in_channels=1), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(10, in_units=4))
    net.initialize()
    small, large = estimate_memory(net, (1, 8, 8)), estimate_memory(net, (1, 16, 16))
    assert small.activation_bytes == (4 * 64 + 4 + 10) * 4 and large.activation_bytes == (4 * 256 + 4 + 10) * 4
    assert small.parameter_bytes == large.parameter_bytes


def test_wrappers_are_estimated_through_their_hybrid_children():
    from gluon_robust.defenses import DefendedClassifier, parse_defense_spec
    from gluon_robust.defenses.ensemble import Ensemble

    defended = DefendedClassifier(counted_classifier(), parse_defense_spec("bitdepth:bits=4"))
    estimate = estimate_memory(defended, (1, 8, 8))
    assert (estimate.activation_bytes, estimate.per_sample_bytes) == (CLS_ACTIVATIONS, CLS_PER_SAMPLE)
    both = estimate_memory(Ensemble([counted_classifier(), counted_classifier()]), (1, 8, 8))
    assert both.activation_bytes == 2 * CLS_ACTIVATIONS and both.parameter_bytes == 2 * CLS_PARAMETERS
    assert both.per_sample_bytes == int(BACKWARD_FACTOR * 2 * CLS_ACTIVATIONS) + INPUT_COPIES * INPUT  # one input


def test_a_forward_only_estimate_keeps_the_input_and_its_noisy_copy():
    estimate = estimate_memory(counted_classifier(), (1, 8, 8), backward=False)
    assert estimate.per_sample_bytes == CLS_ACTIVATIONS + 2 * INPUT


def test_a_block_that_cannot_be_traced_is_a_model_error():
    class Opaque(gluon.Block):
        def forward(self, x):
            return x

    with pytest.raises(ModelError, match=r"cannot estimate the memory of a Opaque .*--batch-size"):
        estimate_memory(Opaque(), (1, 8, 8))


# ------------------------------------------------------------------ the batch size
def test_auto_batch_size_is_the_largest_that_fits_the_budget(caplog):
    model = counted_classifier()
    for k in (1, 2, 5, 37):
        assert auto_batch_size(model, (1, 8, 8), CLS_FIXED + k * CLS_PER_SAMPLE) == k
        assert auto_batch_size(model, (1, 8, 8), CLS_FIXED + (k + 1) * CLS_PER_SAMPLE - 1) == k
    assert auto_batch_size(model, (1, 8, 8), 4 * 2 ** 30) == MAX_AUTO_BATCH == 128  # capped
    assert auto_batch_size(model, (1, 8, 8), 4 * 2 ** 30, cap=7) == 7
    with pytest.raises(InvalidValue, match=r"^max_memory must be at least 256\.1 MiB to fit one sample of \(1, 8, 8\)"):
        auto_batch_size(model, (1, 8, 8), CLS_FIXED + CLS_PER_SAMPLE - 1)
    with caplog.at_level("INFO", logger="gluon_robust.memory"):
        auto_batch_size(model, (1, 8, 8), CLS_FIXED + 3 * CLS_PER_SAMPLE)
    assert any(r.getMessage().startswith("batch size 3 chosen for a budget of") for r in caplog.records)


def test_resolve_batch_size_says_where_the_batch_size_came_from():
    model = counted_classifier()
    assert resolve_batch_size(model, (1, 8, 8), 16) == (16, "given")
    assert resolve_batch_size(model, (1, 8, 8), None, CLS_FIXED + 9 * CLS_PER_SAMPLE) == (9, "auto")
    assert resolve_batch_size(model, (1, 8, 8)) == (128, "auto")
    with pytest.raises(InvalidValue, match="batch_size must be an integer >= 1, got 0"):
        resolve_batch_size(model, (1, 8, 8), 0)


@pytest.mark.parametrize("text, size", [("4G", 4 * 2 ** 30), ("512M", 512 * 2 ** 20), ("1000000", 10 ** 6), ("1.5k", 1536),
                                        ("4GiB", 4 * 2 ** 30), ("2gb", 2 * 2 ** 30), ("64 MiB", 64 * 2 ** 20)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4X", "", "-1G", "0", "G", "1e9", "nan", "4 G B"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_evaluate_reports_the_batch_size_and_its_source():
    model = counted_classifier()
    rng = np.random.RandomState(0)
    source = ArraySource(rng.rand(12, 1, 8, 8).astype(np.float32), rng.randint(0, 10, 12), name="tiny")
    report = evaluate(model, source, attacks=["fgsm"], eps=[0.1], progress=False,
                      max_memory=CLS_FIXED + 5 * CLS_PER_SAMPLE)
    assert (report["batch_size"], report["batch_size_source"]) == (5, "auto")
    report = evaluate(model, source, attacks=["fgsm"], eps=[0.1], progress=False, batch_size=4)
    assert (report["batch_size"], report["batch_size_source"]) == (4, "given")


# ------------------------------------------------------------------ the command line
def cli_error(args: List[str], capfd) -> str:
    code = main(args)
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def attack_args(out: Path, *extra: str) -> List[str]:
    return ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "3", "--attack", "fgsm",
            "--eps", "0.1", "--out", str(out), *extra]


def test_max_memory_errors_name_the_flag(tmp_path, capfd):
    line = cli_error(attack_args(tmp_path / "a", "--max-memory", "4X"), capfd)
    assert line.startswith("gluon-robust: error: argument --max-memory: not a memory size such as 4G"), line
    line = cli_error(attack_args(tmp_path / "b", "--max-memory", "1M"), capfd)
    assert line.startswith("gluon-robust: error: --max-memory must be at least "), line
    assert "to fit one sample of (1, 28, 28)" in line and line.endswith("or give --batch-size, got '1.0 MiB'"), line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_attack_summary_says_auto_or_given(tmp_path, capfd):
    assert main(attack_args(tmp_path / "auto")) == 0
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert (summary["batch_size"], summary["batch_size_source"]) == (128, "auto")  # a 28x28 net: the cap
    assert main(attack_args(tmp_path / "given", "--batch-size", "2")) == 0
    summary = json.loads((tmp_path / "given" / "summary.json").read_text())
    assert (summary["batch_size"], summary["batch_size_source"]) == (2, "given")
    capfd.readouterr()


# ------------------------------------------------------------------ streaming a large folder
#: Run the CLI in a child and print its peak resident memory (KiB) as the last stderr line. With "hold" first,
#: every batch read from the data is kept alive: what a path that materialised all images would cost.
#: The peak is VmHWM, the high-water mark of the child's own address space: ru_maxrss would start at the RSS of
#: the parent (pytest) at the fork, which Linux carries over an exec, and hide the child's growth.
CHILD = """
import json, re, resource, sys
def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "hold":
    from gluon_robust.data.sources import DataSource
    stream, held = DataSource.batches, []
    def batches(self, batch_size):
        for batch in stream(self, batch_size):
            held.append(batch.x.copy())
            yield batch
    DataSource.batches = batches
from gluon_robust.cli import main
code = main(sys.argv[2:])
print(json.dumps({"code": code, "maxrss_kib": peak_kib()}), file=sys.stderr)
"""


def image_folder(root: Path, n: int) -> Path:
    """``n`` random 256x256 RGB PNGs in two class folders (centre-cropped to 224x224 on reading)."""
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / f"{i:04d}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return root


def peak_rss_mib(tmp_path: Path, n: int, mode: str = "stream") -> Tuple[float, dict]:
    data = image_folder(tmp_path / f"images{n}", n)
    out = tmp_path / f"out_{mode}_{n}"
    args = ["attack", "--model", "mobilenet0.25", "--classes", "10", "--data", f"folder:{data}", "--attack", "fgsm",
            "--eps", "8/255", "--batch-size", "4", "--max-images", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, mode] + args, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == n and summary["batch_size"] == 4
    return result["maxrss_kib"] / 1024, summary


@pytest.mark.slow
def test_attack_on_a_224_folder_streams_its_images(tmp_path):
    # 16 images already exercise every padded batch shape MKLDNN caches (1 to 4 attacked points per batch of 4),
    # so the growth to 64 images is what the data costs: holding 64 x 3x224x224 float32 images would add
    # 38.5 MB (48 more images: 28.9 MB). Measured on a 2-core CPU: +1 to +5 MiB streamed, +25 to +30 MiB held.
    small, _ = peak_rss_mib(tmp_path, 16)
    large, summary = peak_rss_mib(tmp_path, 64)
    assert summary["attacked"] > 0  # the attack ran on some images
    assert large - small < 10, (small, large)


@pytest.mark.slow
def test_the_streaming_check_fails_when_images_are_held(tmp_path):
    # The same measurement with every batch kept alive must fail the bound above: the test can fail.
    small, _ = peak_rss_mib(tmp_path, 16)
    held, _ = peak_rss_mib(tmp_path, 64, mode="hold")
    assert held - small > 20, (small, held)

"""Run fingerprints: which weights, data and recipe made a result; resume and merge refuse another run's files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import tiny_bn_net
from gluon_robust.cli import main
from gluon_robust.data import ArraySource
from gluon_robust.errors import ConfigError, DataError, GluonRobustError
from gluon_robust.evaluation import evaluate, merge_reports
from gluon_robust.evaluation.recipes import build_attacks, custom_recipe
from gluon_robust.evaluation.report import comparable
from gluon_robust.evaluation.state import STATE_NAME, StateFile
from gluon_robust.fingerprint import (
    PARTS, RunFingerprint, attack_settings, data_fingerprint, recipe_fingerprint, weights_fingerprint,
)
from gluon_robust.model import load_classifier

FAST = dict(attacks=["fgsm"], eps=[0.1], batch_size=4, progress=False, probe_size=4, max_examples=2)


def _model(seed: int = 0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_classifier(tiny_bn_net(seed=seed), input_size=(1, 8, 8), mean=0.5, std=0.25)


def _arrays(n: int = 12, seed: int = 3):
    x = np.random.RandomState(seed).rand(n, 1, 8, 8).astype(np.float32)
    y = np.random.RandomState(seed + 1).randint(0, 10, n).astype(np.int64)
    return x, y


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _next_ulp(value: np.ndarray) -> np.ndarray:
    return np.nextafter(value, np.array(np.inf, dtype=value.dtype))


# ------------------------------------------------------------------ the digests
def test_the_same_weights_loaded_twice_have_one_fingerprint_and_one_ulp_changes_it():
    first, second = _model(0), _model(0)  # two instances: Gluon's name counters differ between them
    assert sorted(first._collect_params_with_prefix()) != sorted(second._collect_params_with_prefix())
    assert weights_fingerprint(first) == weights_fingerprint(second)
    assert weights_fingerprint(_model(1)) != weights_fingerprint(first)
    name, param = next(iter(second._collect_params_with_prefix().items()))
    value = param.data().asnumpy()
    nudged = value.copy()
    nudged.flat[0] = _next_ulp(nudged.flat[0])
    assert nudged.flat[0] != value.flat[0] and np.abs(nudged - value).max() < 1e-6
    param.set_data(mx.nd.array(nudged, dtype=value.dtype))
    assert weights_fingerprint(second) != weights_fingerprint(first), name


def test_the_data_fingerprint_covers_every_pixel_label_and_index_not_the_batch_size():
    x, y = _arrays()
    base = data_fingerprint(ArraySource(x, y), batch_size=5)
    assert all(data_fingerprint(ArraySource(x.copy(), y.copy()), batch_size=b) == base for b in (1, 4, 100))
    pixel = x.copy()
    pixel[7, 0, 3, 2] = _next_ulp(pixel[7, 0, 3, 2])
    label = y.copy()
    label[11] = (label[11] + 1) % 10
    changed = {
        "pixel": ArraySource(pixel, y), "label": ArraySource(x, label),
        "order": ArraySource(x, y).subset(list(range(11, -1, -1))),
        "index": ArraySource(np.concatenate([x[:1], x]), np.concatenate([y[:1], y])).subset(slice(1, None)),
        "fewer": ArraySource(x[:11], y[:11]),
    }
    digests = {what: data_fingerprint(source) for what, source in changed.items()}
    assert base not in digests.values() and len(set(digests.values())) == len(digests), digests


def test_the_recipe_fingerprint_covers_every_hyperparameter():
    def recipe(names, eps=(0.1,), norm="linf", seed=0):
        attacks = build_attacks(custom_recipe(names), eps=list(eps), norm=norm, seed=seed)
        return recipe_fingerprint({"attacks": [[label, attack_settings(a)] for label, a in attacks],
                                   "eps": list(eps), "norm": norm, "seed": seed})

    base = recipe(["pgd"])
    assert recipe(["pgd"]) == base
    variants = [recipe(["fgsm"]), recipe(["pgd"], eps=(0.1 + 1e-12,)), recipe(["pgd"], norm="l2"),
                recipe(["pgd"], seed=1), recipe(["pgd", "fgsm"])]
    assert base not in variants and len(set(variants)) == len(variants)
    settings = attack_settings(build_attacks(custom_recipe(["pgd"]), eps=[0.1], norm="linf")[0][1])
    assert settings["params"]["steps"] == 40 and "0x" not in json.dumps(settings)  # defaults in, no addresses


@pytest.mark.slow  # ~6 s; test_faults' SIGINT test also resumes, in this process, a state written by another
def test_a_new_process_computes_the_same_fingerprint():
    """A resume runs in a new process: the digests of the same model, data and recipe must not change there."""
    script = (
        "import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, sys.argv[1])\n"
        "from test_fingerprint import _model, _arrays\n"
        "from gluon_robust.data import ArraySource\n"
        "from gluon_robust.evaluation.evaluate import run_fingerprint\n"
        "from gluon_robust.evaluation.recipes import build_attacks, get_recipe\n"
        "stages = get_recipe('apgd-lite')\n"
        "model = _model(0)\n"
        "fp = run_fingerprint(model, ArraySource(*_arrays()), build_attacks(stages, eps=[0.1], norm='linf'), "
        "stages=stages, recipe='apgd-lite', eps=[0.1], norm='linf', seed=0, batch_size=4)\n"
        "print(fp.weights, fp.data, fp.recipe)\n"
    )
    from gluon_robust.evaluation.evaluate import run_fingerprint
    from gluon_robust.evaluation.recipes import get_recipe

    stages = get_recipe("apgd-lite")
    here = _quiet(run_fingerprint, _model(0), ArraySource(*_arrays()), build_attacks(stages, eps=[0.1], norm="linf"),
                  stages=stages, recipe="apgd-lite", eps=[0.1], norm="linf", seed=0, batch_size=3)
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", script, tests], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"), check=True).stdout.split()
    assert out == [here.weights, here.data, here.recipe]


def test_a_fingerprint_names_a_bad_part():
    good = "ab" * 32
    with pytest.raises(ConfigError, match=r"fingerprint data must be a SHA-256 .* got 'xyz'"):
        RunFingerprint(weights=good, data="xyz", recipe=good)
    with pytest.raises(ConfigError, match="report.json has no run fingerprint"):
        RunFingerprint.from_dict({"weights": good, "recipe": good}, "report.json")
    fp = RunFingerprint.from_dict({"weights": good, "data": good, "recipe": "cd" * 32}, "x")
    assert fp.differences(RunFingerprint(good, good, good)) == ["recipe"] and list(fp.to_dict()) == list(PARTS)


# ------------------------------------------------------------------ evaluate --resume
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An evaluation of 12 samples interrupted after its first batch of 4, and the report of the whole run."""
    root = tmp_path_factory.mktemp("resume")
    model, (x, y) = _model(0), _arrays()
    reference = _quiet(evaluate, model, ArraySource(x, y), out_dir=root / "reference", **FAST)
    original = StateFile.save

    def save_then_stop(self, pos, result):
        original(self, pos, result)
        raise RuntimeError("injected interruption")

    StateFile.save = save_then_stop
    try:
        with pytest.raises(RuntimeError, match="injected"):
            _quiet(evaluate, model, ArraySource(x, y), out_dir=root / "run", **FAST)
    finally:
        StateFile.save = original
    assert (root / "run" / STATE_NAME).is_file() and not (root / "run" / "report.json").exists()
    return root / "run", reference


def _copy_state(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_NAME).write_bytes((run / STATE_NAME).read_bytes())
    return out


def test_resume_continues_and_ends_bit_exact(interrupted, tmp_path):
    run, reference = interrupted
    out = _copy_state(run, tmp_path)
    saves = []
    original = StateFile.save

    def counting(self, pos, result):
        saves.append(pos)
        original(self, pos, result)

    try:
        StateFile.save = counting
        resumed = _quiet(evaluate, _model(0), ArraySource(*_arrays()), out_dir=out, resume=True, **FAST)
    finally:
        StateFile.save = original
    assert saves == [8, 12]  # the first batch was not redone
    assert comparable(resumed) == comparable(reference)  # fingerprint, per-sample outcomes, examples' attacks
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert json.loads((out / "report.json").read_text())["fingerprint"] == reference["fingerprint"]


@pytest.mark.parametrize("change, error, part", [
    ("weights", ConfigError, "weights"),
    ("pixel", DataError, "data"),
    ("label", DataError, "data"),
    ("eps", ConfigError, "recipe"),
    ("attack", ConfigError, "recipe"),
])
def test_resume_of_another_run_is_refused_naming_the_part(interrupted, tmp_path, change, error, part):
    run, reference = interrupted
    out = _copy_state(run, tmp_path)
    model, (x, y), kwargs = _model(0), _arrays(), dict(FAST)
    if change == "weights":
        model = _model(1)
    elif change == "pixel":
        x[5, 0, 1, 1] = _next_ulp(x[5, 0, 1, 1])  # a sample the interrupted run has not reached yet
    elif change == "label":
        y[0] = (y[0] + 1) % 10
    elif change == "eps":
        kwargs["eps"] = [0.1 + 1e-9]
    else:
        kwargs["attacks"] = ["bim"]
    with pytest.raises(error) as info:
        _quiet(evaluate, model, ArraySource(x, y), out_dir=out, resume=True, **kwargs)
    message = str(info.value)
    assert f"made with different {part} than this run" in message and "remove it or run without --resume" in message
    hashes = re.search(rf"\({part} fingerprint ([0-9a-f]{{12}}) vs ([0-9a-f]{{12}})\)", message)
    assert hashes is not None, message
    assert hashes[1] == reference["fingerprint"][part][:12] != hashes[2]  # the state's, then this run's
    assert "\n" not in message and not (out / "report.json").exists()


def test_resume_with_another_batch_size_is_refused_naming_it(interrupted, tmp_path):
    run, _ = interrupted
    out = _copy_state(run, tmp_path)
    with pytest.raises(ConfigError, match=r"belongs to a run with another batch_size \(there 4, here 3\)"):
        _quiet(evaluate, _model(0), ArraySource(*_arrays()), out_dir=out, resume=True, **dict(FAST, batch_size=3))


def _state_arrays(path: Path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("damage", ["one-number", "identity", "truncated", "empty"])
def test_a_damaged_or_edited_state_is_refused(interrupted, tmp_path, damage):
    run, _ = interrupted
    out = _copy_state(run, tmp_path)
    path = out / STATE_NAME
    if damage in ("one-number", "identity"):
        arrays = _state_arrays(path)
        if damage == "one-number":
            arrays["clean_pred"] = arrays["clean_pred"].copy()
            arrays["clean_pred"][0] = (arrays["clean_pred"][0] + 1) % 10
        else:  # claim to belong to other weights: the checksum no longer matches either
            identity = json.loads(str(arrays["identity"]))
            identity["weights"] = "0" * 64
            arrays["identity"] = np.array(json.dumps(identity, sort_keys=True))
        np.savez(path, **arrays)  # still a valid .npz
        expected = "fails its SHA-256 check"
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
        expected = "not a readable .npz archive"
    with pytest.raises(ConfigError, match=expected) as info:
        _quiet(evaluate, _model(0), ArraySource(*_arrays()), out_dir=out, resume=True, **FAST)
    assert "remove it or run without --resume" in str(info.value) and str(path) in str(info.value)


def test_cli_resume_with_other_data_is_one_line(tmp_path, capsys, monkeypatch):
    flags = ["--config", "mnist_resnet20", "--data", "mnist-sample", "--attacks", "fgsm", "--eps", "0.1",
             "--batch-size", "2", "--no-progress", "--out", str(tmp_path)]
    original = StateFile.save

    def save_then_stop(self, pos, result):
        original(self, pos, result)
        raise GluonRobustError("stopped after one batch")

    monkeypatch.setattr(StateFile, "save", save_then_stop)
    assert main(["evaluate", *flags, "--limit", "4"]) == 2
    monkeypatch.setattr(StateFile, "save", original)
    capsys.readouterr()
    assert main(["evaluate", *flags, "--limit", "5", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "made with different data than this run" in err[0] and "remove it or run without --resume" in err[0]


# ------------------------------------------------------------------ merge-reports
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards 0/2 and 1/2 of model 0, and shard 1/2 of model 1, on the same data."""
    root = tmp_path_factory.mktemp("shards")
    x, y = _arrays()
    for name, seed, k in (("a0", 0, 0), ("a1", 0, 1), ("b1", 1, 1)):
        _quiet(evaluate, _model(seed), ArraySource(x, y), out_dir=root / name, shard=(k, 2), **FAST)
    return root


def test_merge_of_one_models_shards_records_each_shards_data(shards, tmp_path):
    merged = _quiet(merge_reports, [shards / "a1", shards / "a0"], tmp_path / "m")
    reports = [json.loads((shards / d / "report.json").read_text()) for d in ("a0", "a1")]
    assert [s["data"] for s in merged["merged_shards"]] == [r["fingerprint"]["data"] for r in reports]
    assert all(merged["fingerprint"][p] == reports[0]["fingerprint"][p] for p in ("weights", "recipe"))
    assert json.loads((tmp_path / "m" / "report.json").read_text())["fingerprint"] == merged["fingerprint"]


def test_merge_of_two_models_shards_is_refused_naming_weights(shards, capsys):
    a0, b1 = (json.loads((shards / d / "report.json").read_text())["fingerprint"] for d in ("a0", "b1"))
    assert a0["recipe"] == b1["recipe"]
    with pytest.raises(ConfigError, match="made with different weights than shard") as info:
        merge_reports([shards / "a0", shards / "b1"])
    assert a0["weights"][:12] in str(info.value) and b1["weights"][:12] in str(info.value)
    capsys.readouterr()
    assert main(["merge-reports", str(shards / "a0"), str(shards / "b1"), "--out", str(shards / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different weights" in err[0] and not (shards / "never" / "report.json").exists()


@pytest.mark.parametrize("edit, expected", [
    ("no-fingerprint", "has no run fingerprint"),
    ("recipe", "made with different recipe than shard"),
    ("slice", "bookkeeping is inconsistent"),
    ("index", "appears in shard"),
])
def test_merge_refuses_inconsistent_shards(shards, tmp_path, edit, expected):
    dirs = [tmp_path / "a0", tmp_path / "a1"]
    for d in dirs:
        shutil.copytree(shards / d.name, d)
    path = dirs[1] / "report.json"
    report = json.loads(path.read_text())
    if edit == "no-fingerprint":
        del report["fingerprint"]
    elif edit == "recipe":
        report["fingerprint"]["recipe"] = "0" * 64
    elif edit == "slice":
        report["shard"]["start"] += 1
    else:
        report["per_sample"][0]["index"] = 0  # shard 0 holds source index 0
    path.write_text(json.dumps(report))
    with pytest.raises(ConfigError, match=expected):
        merge_reports(dirs)

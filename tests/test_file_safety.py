"""No file gluon-robust reads can run code: a planted pickle is refused, never unpickled.

Every place the toolkit reads a file, and the test that plants a malicious
pickle (or an object array, a YAML ``python/`` tag, a checksum mismatch) there:

=================================  ================================  ==========================================
reader                             file                              test
=================================  ================================  ==========================================
train --resume (checkpoint.py)     latest.json                       test_train_resume_refuses[latest-pickle]
                                   ckpt-N.states (old format)        test_train_resume_refuses[legacy-states]
                                   ckpt-N.optimizer                  test_train_resume_refuses[optimizer-pickle]
                                   ckpt-N.params                     test_train_resume_refuses[params-flipped]
                                   ckpt-N.npz                        test_train_resume_refuses[npz-object]
                                   ckpt-N.json                       test_train_resume_refuses[state-pickle]
                                   ckpt-N.manifest.json              test_train_resume_refuses[manifest-pickle]
                                   (a file of the generation gone)   test_train_resume_refuses[missing]
evaluate --resume (state.py)       evaluate.state.npz                test_evaluate_resume_refuses_*
merge-reports (evaluate.py)        report.json, examples.npz         test_merge_reports_refuses
detector params (detection/base)   --detector-params .npz            test_detector_params_refused
--params (zoo.py)                  .params                           test_params_pickle_exits_2
symbol + params (model.py)         -symbol.json, -0000.params        test_symbol_source_refuses_pickles
npz data (data/sources.py)         --data npz:FILE                   test_npz_data_refused
model config (config.py)           --config FILE.yaml                test_config_refused
folder data (data/folder.py)       images (decoded by OpenCV)        test_folder_image_pickle_refused
built-in data (data/builtin.py)    cached dataset files (SHA-1)      test_builtin_cache_pickle_refused
=================================  ================================  ==========================================

Every test checks both that the marker file the pickle would create never
appears, and that the toolkit raised a GluonRobustError (the CLI: exit 2
with one line on stderr).
"""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
from pathlib import Path
from typing import List

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_robust.cli import main
from gluon_robust.data import load_data
from gluon_robust.detection import load_detector
from gluon_robust.errors import ConfigError, DataError, ModelError
from gluon_robust.evaluation.robustness import AttackOutcome, RobustnessResult
from gluon_robust.evaluation.state import STATE_NAME, StateFile
from gluon_robust.integrity import arrays_digest, is_pickle, load_npz, refuse_pickle, verify_manifest, write_manifest
from gluon_robust.io import sha256_of
from gluon_robust.model import load_classifier
from gluon_robust.training.checkpoint import CheckpointManager, restore_into, running_stats_arrays, structural_params
from training_helpers import tiny_data, training_model


class Exploit:
    """Unpickling this creates ``marker``: harmless, but proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER-code-ran"


def payload(marker: Path) -> bytes:
    return pickle.dumps(Exploit(marker), protocol=pickle.HIGHEST_PROTOCOL)


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload(marker))


def plant_object_npz(path: Path, marker: Path, **arrays: np.ndarray) -> None:
    """An .npz whose ``evil`` member is an object array: reading it with allow_pickle=True runs the payload."""
    evil = np.empty(1, dtype=object)
    evil[0] = Exploit(marker)
    np.savez(path, evil=evil, **arrays)


def refused_by_cli(argv: List[str], capsys, *fragments: str) -> str:
    """Run the CLI in-process; it must exit 2 with one line naming each fragment, and no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_the_planted_pickle_would_run_code(tmp_path, marker):
    """The payload is live: unpickling it, or loading the object npz with allow_pickle=True, creates the marker."""
    pickle.loads(payload(marker))
    assert marker.exists()
    marker.unlink()
    plant_object_npz(tmp_path / "x.npz", marker)
    with np.load(tmp_path / "x.npz", allow_pickle=True) as data:
        data["evil"]
    assert marker.exists()


# ------------------------------------------------------------------ the shared checks
def test_refuse_pickle_sniffs_protocols_2_to_5(tmp_path, marker):
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
        assert is_pickle(path)
        with pytest.raises(DataError, match=rf"thing {path} is a Python pickle.*can run arbitrary code; do X"):
            refuse_pickle(path, "thing", DataError, fix="do X")
    for data in (b"", b"\x80", b"{}", b"\x12\x01\x00\x00", b"PK\x03\x04"):
        (tmp_path / "plain").write_bytes(data)
        assert not is_pickle(tmp_path / "plain")
        refuse_pickle(tmp_path / "plain", "thing")


def test_manifest_round_trip_and_refusals(tmp_path, marker):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"alpha")
    b.write_bytes(b"beta")
    digests = write_manifest(tmp_path / "m.json", [a, b])
    assert digests == {"a.bin": sha256_of(a), "b.bin": sha256_of(b)}
    assert verify_manifest(tmp_path / "m.json", ["a.bin", "b.bin"], "set", "redo it") == {"a.bin": a, "b.bin": b}
    with pytest.raises(ConfigError, match="does not list c.bin; redo it"):
        verify_manifest(tmp_path / "m.json", ["c.bin"], "set", "redo it")
    b.write_bytes(b"betA")
    with pytest.raises(ConfigError, match=r"b.bin does not match the SHA-256 in m.json .*; redo it"):
        verify_manifest(tmp_path / "m.json", ["a.bin", "b.bin"], "set", "redo it")
    plant(b, marker)
    with pytest.raises(ConfigError, match="is a Python pickle"):
        verify_manifest(tmp_path / "m.json", ["a.bin", "b.bin"], "set", "redo it")
    a.unlink()
    with pytest.raises(ConfigError, match="set lacks a.bin"):
        verify_manifest(tmp_path / "m.json", ["a.bin"], "set", "redo it")
    with pytest.raises(ConfigError, match="has no manifest"):
        verify_manifest(tmp_path / "none.json", ["a.bin"], "set", "redo it")
    assert not marker.exists()


def test_arrays_digest_sees_every_change():
    base = {"a": np.arange(4, dtype=np.int64), "s": np.array("text")}
    digest = arrays_digest(base)
    assert arrays_digest({k: v.copy() for k, v in base.items()}) == digest
    changed = [
        {"a": np.array([0, 1, 2, 4]), "s": base["s"]},
        {"a": base["a"].astype(np.int32), "s": base["s"]},
        {"a": base["a"].reshape(2, 2), "s": base["s"]},
        {"b": base["a"], "s": base["s"]},
        {"a": base["a"], "s": np.array("texT")},
        {"a": base["a"]},
    ]
    assert all(arrays_digest(c) != digest for c in changed)


def test_load_npz_refuses_object_arrays_and_junk(tmp_path, marker):
    plant_object_npz(tmp_path / "obj.npz", marker, fine=np.zeros(2))
    with pytest.raises(ConfigError, match=r"holds an object array 'evil'"):
        load_npz(tmp_path / "obj.npz", "arrays")
    plant(tmp_path / "p.npz", marker)
    with pytest.raises(ConfigError, match="is a Python pickle"):
        load_npz(tmp_path / "p.npz", "arrays")
    (tmp_path / "j.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="not a readable .npz archive"):
        load_npz(tmp_path / "j.npz", "arrays", ModelError)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ConfigError, match="single .npy array"):
        load_npz(tmp_path / "one.npy", "arrays")
    np.savez(tmp_path / "ok.npz", x=np.arange(3))
    np.testing.assert_array_equal(load_npz(tmp_path / "ok.npz", "arrays")["x"], np.arange(3))
    assert not marker.exists()


# ------------------------------------------------------------------ optimizer state without pickle
def _steps(model, trainer, ctx, start: int, count: int) -> None:
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    for step in range(start, start + count):
        x, y = tiny_data(8, seed=step)
        xs = gluon.utils.split_and_load(mx.nd.array(x), ctx)
        ys = gluon.utils.split_and_load(mx.nd.array(y), ctx)
        with autograd.record():
            losses = [loss(model(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(8)
        if step == 1:
            trainer.set_learning_rate(0.005)  # a decayed rate must come back from the checkpoint


def _trainer(model, optimizer: str, lr: float) -> gluon.Trainer:
    options = {"learning_rate": lr, "wd": 1e-4, **({"momentum": 0.9} if optimizer in ("sgd", "nag") else {})}
    return gluon.Trainer(model.net.collect_params(), optimizer, options)


@pytest.mark.parametrize("devices", [1, 2], ids=["1-context", "2-contexts"])
@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam"])
def test_resumed_optimizer_is_bit_exact(tmp_path, optimizer, devices):
    """Save after 3 steps, restore into a fresh Trainer of other weights, run 3 more: equal to 6 uninterrupted steps."""
    ctx = [mx.cpu(i) for i in range(devices)]
    reference = training_model(ctx=ctx)
    trainer = _trainer(reference, optimizer, 0.01)
    _steps(reference, trainer, ctx, 0, 3)
    CheckpointManager(tmp_path).save(reference.net, trainer, {"step": 3}, running_stats_arrays(reference.net, ctx))
    assert not any(is_pickle(p) for p in tmp_path.iterdir())
    _steps(reference, trainer, ctx, 3, 3)

    resumed = training_model(seed=5, ctx=ctx)
    resumed_trainer = _trainer(resumed, optimizer, 0.3)  # another rate: it must come from the checkpoint
    restore_into(CheckpointManager(tmp_path).load(), resumed.net, resumed_trainer, ctx)
    assert resumed_trainer.learning_rate == 0.005 and resumed_trainer._optimizer.num_update == 3
    _steps(resumed, resumed_trainer, ctx, 3, 3)

    # Without the optimizer state (weights only) the run ends elsewhere: the state matters and was restored.
    weights_only = training_model(seed=5, ctx=ctx)
    weights_only.net.load_parameters(str(CheckpointManager(tmp_path).load().params), ctx=ctx)
    fresh = _trainer(weights_only, optimizer, 0.005)
    _steps(weights_only, fresh, ctx, 3, 3)

    expected, control = structural_params(reference.net), structural_params(weights_only.net)
    differs = False
    for key, param in structural_params(resumed.net).items():
        for c in ctx:
            np.testing.assert_array_equal(param.data(c).asnumpy(), expected[key].data(c).asnumpy(), err_msg=key)
        differs |= not np.array_equal(control[key].data(ctx[0]).asnumpy(), expected[key].data(ctx[0]).asnumpy())
    assert differs


def test_optimizer_of_another_class_is_refused(tmp_path):
    model = training_model()
    trainer = _trainer(model, "adam", 0.01)
    _steps(model, trainer, [mx.cpu()], 0, 1)
    CheckpointManager(tmp_path).save(model.net, trainer, {}, {})
    other = training_model()
    with pytest.raises(ConfigError, match="belongs to optimizer Adam, not SGD; resume with the same optimizer"):
        restore_into(CheckpointManager(tmp_path).load(), other.net, _trainer(other, "sgd", 0.01), [mx.cpu()])


# ------------------------------------------------------------------ train --resume
TRAIN_FLAGS = ["--config", "mnist_resnet20", "--method", "pgd-at", "--eps", "0.1", "--steps", "1", "--epochs", "1",
               "--limit", "32", "--val-limit", "8", "--batch-size", "16", "--checkpoint-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished `gluon-robust train` run, with its checkpoint directory."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TRAIN_FLAGS, "--save-dir", str(out)]) == 0
    return out


def _manifest_update(ckpt: Path, name: str) -> None:
    """Make the manifest agree with a planted file, so only the content checks can stop it."""
    manifest = next(ckpt.glob("ckpt-*.manifest.json"))
    data = json.loads(manifest.read_text())
    data["sha256"][name] = sha256_of(ckpt / name)
    manifest.write_text(json.dumps(data))


def _tamper(kind: str, ckpt: Path, marker: Path) -> str:
    """Tamper with the checkpoint as ``kind`` says; returns what the error must say."""
    stem = next(ckpt.glob("ckpt-*.params")).name[: -len(".params")]
    if kind == "latest-pickle":
        plant(ckpt / "latest.json", marker)
        return "latest.json is a Python pickle"
    if kind == "legacy-states":
        plant(ckpt / f"{stem}.states", marker)
        return "old checkpoint format, a Python pickle, which is no longer read because unpickling can run"
    if kind == "optimizer-pickle":
        plant(ckpt / f"{stem}.optimizer", marker)
        _manifest_update(ckpt, f"{stem}.optimizer")
        return f"{stem}.optimizer is a Python pickle"
    if kind == "optimizer-unlisted-pickle":
        plant(ckpt / f"{stem}.optimizer", marker)
        return f"{stem}.optimizer is a Python pickle"
    if kind == "params-flipped":
        data = bytearray((ckpt / f"{stem}.params").read_bytes())
        data[-1] ^= 1
        (ckpt / f"{stem}.params").write_bytes(bytes(data))
        return f"{stem}.params does not match the SHA-256 in {stem}.manifest.json"
    if kind == "npz-object":
        plant_object_npz(ckpt / f"{stem}.npz", marker)
        _manifest_update(ckpt, f"{stem}.npz")
        return "holds an object array 'evil'"
    if kind == "state-pickle":
        plant(ckpt / f"{stem}.json", marker)
        _manifest_update(ckpt, f"{stem}.json")
        return f"{stem}.json is a Python pickle"
    if kind == "manifest-pickle":
        plant(ckpt / f"{stem}.manifest.json", marker)
        return f"{stem}.manifest.json is a Python pickle"
    assert kind == "missing"
    (ckpt / f"{stem}.npz").unlink()
    return f"lacks {stem}.npz"


@pytest.mark.parametrize("kind", ["latest-pickle", "legacy-states", "optimizer-pickle", "optimizer-unlisted-pickle",
                                  "params-flipped", "npz-object", "state-pickle", "manifest-pickle", "missing"])
def test_train_resume_refuses(trained, tmp_path, marker, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    expected = _tamper(kind, run / "checkpoint", marker)
    line = refused_by_cli(["train", *TRAIN_FLAGS, "--save-dir", str(run), "--resume"], capsys, expected)
    assert "start over" in line
    assert not marker.exists()


def test_train_resume_of_an_intact_checkpoint_loads(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    checkpoint = CheckpointManager(run / "checkpoint").load()
    assert checkpoint.state["global_step"] == 2 and checkpoint.optimizer["class"] == "Adam"
    assert {p.suffix for p in (run / "checkpoint").iterdir()} == {".params", ".optimizer", ".npz", ".json"}
    assert not any(is_pickle(p) for p in (run / "checkpoint").iterdir())


# ------------------------------------------------------------------ evaluate --resume
EVAL_FLAGS = ["--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--attacks", "fgsm",
              "--eps", "0.1", "--batch-size", "2", "--no-progress"]


def _state(out: Path, resume: bool = False) -> StateFile:
    return StateFile(out, {"recipe": "test"}, resume=resume)


def _result() -> RobustnessResult:
    outcome = AttackOutcome(name="fgsm", norm="linf", eps=0.1, broken=np.array([True, False]),
                            attacked=np.array([True, True]), distance=np.array([0.1, np.inf]),
                            queries=np.array([1, 1]), seconds=0.5, invalid=np.array([False, False]), black_box=False)
    return RobustnessResult(np.array([0, 1]), np.array([3, 4]), np.array([3, 4]), [outcome], True, seconds=1.0)


def test_evaluate_state_round_trip_and_tamper(tmp_path, marker):
    _state(tmp_path).save(2, _result())
    pos, result = _state(tmp_path, resume=True).load()
    assert pos == 2 and result.labels.tolist() == [3, 4] and result.outcomes[0].broken.tolist() == [True, False]
    path = tmp_path / STATE_NAME
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["labels"] = np.array([3, 5])  # a hand edit: the stored SHA-256 no longer matches
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=r"fails its SHA-256 check .*; remove it or run without --resume"):
        _state(tmp_path, resume=True).load()
    del arrays["sha256"]  # a state without a checksum is not trusted either
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match="fails its SHA-256 check"):
        _state(tmp_path, resume=True).load()
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "object-array", "edited"])
def test_evaluate_resume_refuses_a_bad_state(tmp_path, marker, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    path = out / STATE_NAME
    if kind == "pickle":
        plant(path, marker)
        expected = "is a Python pickle"
    elif kind == "object-array":
        plant_object_npz(path, marker)
        expected = "holds an object array 'evil'"
    else:
        _state(out).save(2, _result())
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["clean_pred"] = np.array([4, 4])
        np.savez(path, **arrays)
        expected = "fails its SHA-256 check"
    refused_by_cli(["evaluate", *EVAL_FLAGS, "--out", str(out), "--resume"], capsys, str(path), expected)
    assert not marker.exists() and not (out / "report.json").exists()


# ------------------------------------------------------------------ merge-reports
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp("shards")
    dirs = [root / f"s{k}" for k in (0, 1)]
    for k, d in enumerate(dirs):
        assert main(["evaluate", *EVAL_FLAGS, "--shard", f"{k}/2", "--out", str(d)]) == 0
    return dirs


@pytest.mark.parametrize("kind", ["report-pickle", "examples-pickle", "examples-object", "report-not-json"])
def test_merge_reports_refuses(shards, tmp_path, marker, capsys, kind):
    dirs = [tmp_path / d.name for d in shards]
    for src, dst in zip(shards, dirs):
        shutil.copytree(src, dst)
    target = dirs[1]
    if kind == "report-pickle":
        plant(target / "report.json", marker)
        expected = "report.json is a Python pickle"
    elif kind == "examples-pickle":
        plant(target / "examples.npz", marker)
        expected = "examples.npz is a Python pickle"
    elif kind == "examples-object":
        with np.load(target / "examples.npz") as data:
            arrays = {k: data[k] for k in data.files}
        plant_object_npz(target / "examples.npz", marker, **arrays)
        expected = "holds an object array 'evil'"
    else:
        (target / "report.json").write_bytes(b"\xff\xfe not json")
        expected = "is not valid JSON"
    refused_by_cli(["merge-reports", *map(str, dirs), "--out", str(tmp_path / "merged")], capsys, expected,
                   "evaluate that shard again")
    assert not marker.exists() and not (tmp_path / "merged" / "report.json").exists()


def test_merge_reports_of_intact_shards_still_works(shards, tmp_path, capsys):
    assert main(["merge-reports", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "report.json").read_text())["shard"] is None


# ------------------------------------------------------------------ other readers
@pytest.mark.parametrize("kind", ["pickle", "object-array"])
def test_detector_params_refused(tmp_path, marker, kind):
    path = tmp_path / "detector.npz"
    if kind == "pickle":
        plant(path, marker)
    else:
        plant_object_npz(path, marker, meta=np.array("{}"))
    with pytest.raises(DataError, match=r"detector params .*(Python pickle|object array 'evil').*gluon-robust detect"):
        load_detector(path)
    assert not marker.exists()


def test_params_pickle_exits_2(tmp_path, marker, capsys):
    params = tmp_path / "weights.params"
    plant(params, marker)
    refused_by_cli(["evaluate", *EVAL_FLAGS, "--params", str(params), "--out", str(tmp_path / "o")], capsys,
                   f"params file {params} is a Python pickle", "save_parameters or export")
    assert not marker.exists()


def test_symbol_source_refuses_pickles(tmp_path, marker):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(10))
    net.initialize()
    net.hybridize()
    net(mx.nd.zeros((1, 4)))
    net.export(str(tmp_path / "net"))
    symbol, params = tmp_path / "net-symbol.json", tmp_path / "net-0000.params"
    assert load_classifier(str(symbol), input_size=(1, 2, 2), fold=False).num_classes == 10
    plant(params, marker)
    with pytest.raises(ModelError, match=r"params file .*net-0000.params is a Python pickle"):
        load_classifier(str(symbol), input_size=(1, 2, 2))
    plant(symbol, marker)
    with pytest.raises(ModelError, match=r"symbol file .*net-symbol.json is a Python pickle"):
        load_classifier(str(symbol), input_size=(1, 2, 2))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "object-array"])
def test_npz_data_refused(tmp_path, marker, capsys, kind):
    path = tmp_path / "data.npz"
    if kind == "pickle":
        plant(path, marker)
        expected = "is a Python pickle"
    else:
        x = np.empty(4, dtype=object)
        x[:] = [Exploit(marker)] * 4
        np.savez(path, x=x, y=np.zeros(4, dtype=np.int64))
        expected = "array 'x' or 'y' is an object array"
    with pytest.raises(DataError, match=expected):
        load_data(f"npz:{path}")
    refused_by_cli(["evaluate", "--config", "mnist_resnet20", "--data", f"npz:{path}", "--attacks", "fgsm",
                    "--eps", "0.1", "--no-progress", "--out", str(tmp_path / "o")], capsys, expected)
    assert not marker.exists()


def test_config_refused(tmp_path, marker, capsys):
    tagged = tmp_path / "evil.yaml"
    tagged.write_text(f"model: cifar_resnet20_v1\nclasses: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    refused_by_cli(["evaluate", "--config", str(tagged), "--data", "mnist-sample", "--attacks", "fgsm",
                    "--eps", "0.1", "--no-progress", "--out", str(tmp_path / "o")], capsys, f"cannot read config {tagged}", "python/object/apply")
    pickled = tmp_path / "pickled.yaml"
    plant(pickled, marker)
    refused_by_cli(["evaluate", "--config", str(pickled), "--data", "mnist-sample", "--attacks", "fgsm",
                    "--eps", "0.1", "--no-progress", "--out", str(tmp_path / "o")], capsys, f"config {pickled} is a Python pickle")
    assert not marker.exists()


def test_folder_image_pickle_refused(tmp_path, marker):
    plant(tmp_path / "images" / "cat" / "a.png", marker)
    source = load_data(f"folder:{tmp_path / 'images'}", input_size=(8, 8))
    with pytest.raises(DataError, match="cannot decode image file"):
        source.arrays()
    assert not marker.exists()


def test_builtin_cache_pickle_refused(tmp_path, marker, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxhome"))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        plant(tmp_path / "mxhome" / "datasets" / "mnist" / name, marker)
    with pytest.raises(DataError, match="fail Gluon's SHA-1 check"):
        load_data("mnist", split="test")
    assert not marker.exists()


def test_no_reader_calls_pickle_or_trainer_states():
    """The package never imports pickle nor calls MXNet's pickle-based Trainer state API."""
    root = Path(__file__).resolve().parents[1] / "gluon_robust"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(word in p.read_text(encoding="utf-8")
                        for word in ("import pickle", "save_states(", "load_states(", "allow_pickle=True"))]
    assert offenders == []

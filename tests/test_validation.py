"""Bad input is refused before any work starts, with one line that names the flag (CLI) or parameter (API).

Every case of issue 14's list: labels outside ``[0, classes)``, NaN and
infinite hyperparameters, counts that cannot be processed, bad output
directories and names, devices that do not exist or cannot all be used,
``launch``'s ``--grace`` and ``--host``, another spelling of a save directory
on resume, and targets equal to the true label. Each CLI case also checks
that nothing was written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List

import numpy as np
import pytest

from gluon_robust.attacks import PGD
from gluon_robust.cli import main
from gluon_robust.errors import ConfigError, DataError, GluonRobustError
from gluon_robust.validation import (
    InvalidValue, check_contexts, check_host, check_int, check_labels, check_out_dir, check_positive, check_real,
    check_sample_count, flag_message, same_path,
)
from reliability import tally


def digits(path: Path, n: int = 8, label_at_3: int | None = None) -> str:
    """``n`` bundled test digits as an npz data spec; optionally one label replaced."""
    from gluon_robust.data import load_data

    x, y = load_data("mnist-sample", split="test", limit=n).arrays()
    y = y.astype(np.int64)
    if label_at_3 is not None:
        y[3] = label_at_3
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def run_cli(capsys: pytest.CaptureFixture, args: List[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "WARNING" not in line]
    return code, lines[-1] if lines else ""


def assert_refused(capsys: pytest.CaptureFixture, args: List[str], flag_text: str, out: Path | None = None) -> str:
    """Exit 2, exactly one error line that starts with the flag's message, no traceback, nothing written."""
    handled = False
    try:
        code = main(args)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2, err
        assert len(errors) == 1, err
        assert "Traceback" not in err
        assert errors[0].startswith(f"gluon-robust: error: {flag_text}"), errors[0]
        if out is not None:
            assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
        handled = True
    finally:
        tally("the listed bad inputs (labels, NaN, counts, paths, devices, hosts)", handled)
    return errors[0]


ATTACK = ["attack", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "4", "--attack", "pgd",
          "--eps", "0.1", "--steps", "1"]


# ------------------------------------------------------------------ the checks themselves (oracles by hand)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.1", None, True])
def test_check_positive_refuses_non_finite_and_non_numbers(value: object) -> None:
    with pytest.raises(InvalidValue, match=r"^step_size must be a finite number, got "):
        check_positive("step_size", value)


def test_check_real_range_and_open_ends() -> None:
    assert check_real("momentum", 0.0, 0.0, 1.0, high_open=True) == 0.0
    with pytest.raises(InvalidValue, match=r"momentum must be a number in \[0, 1\), got 1"):
        check_real("momentum", 1, 0.0, 1.0, high_open=True)
    with pytest.raises(InvalidValue, match="got nan"):
        check_real("mix", math.nan, 0.0, 1.0)


def test_check_int_refuses_floats_and_bools() -> None:
    assert check_int("steps", np.int64(3)) == 3
    for bad in (3.0, True, 0, -2):
        with pytest.raises(InvalidValue, match="^steps must be an integer >= 1"):
            check_int("steps", bad)


def test_sample_counts_stay_integers_and_bounded() -> None:
    assert check_sample_count("n", 10 ** 9) == 10 ** 9
    for bad in (1e11, 10 ** 11, 0, 2.5):
        with pytest.raises(InvalidValue, match="^n must be"):
            check_sample_count("n", bad)


def test_labels_outside_the_classes_name_the_first_one() -> None:
    assert check_labels("y", np.array([0.0, 9.0]), 10).dtype == np.int64
    with pytest.raises(DataError, match=r"label 10 at position 2 \(1 of 3 out of range\)"):
        check_labels("y", np.array([1, 2, 10]), 10)
    with pytest.raises(DataError, match="label -1 at position 0"):
        check_labels("y", np.array([-1, 2]), 10)
    with pytest.raises(DataError, match="label 1.5 at position 1"):
        check_labels("y", np.array([1.0, 1.5]), 10)
    with pytest.raises(DataError, match="label nan"):
        check_labels("y", np.array([np.nan]), 10)


def test_out_dir_checks(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert check_out_dir("out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(InvalidValue, match="not an existing file"):
        check_out_dir("out", file)
    with pytest.raises(InvalidValue, match="is a file"):
        check_out_dir("out", file / "sub")
    with pytest.raises(InvalidValue, match="a directory path, got ''"):
        check_out_dir("out", "")
    if os.geteuid() != 0:  # root writes anywhere; the probe is a real write, so this holds for other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InvalidValue, match="not writable"):
            check_out_dir("out", locked / "x")


def test_same_path_sees_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert same_path("runs/a", "./runs/a/")
    assert same_path("runs/a", tmp_path / "runs" / ".." / "runs" / "a")
    assert not same_path("runs/a", "runs/b")


def test_contexts_must_exist_and_be_usable() -> None:
    import mxnet as mx

    assert check_contexts("ctx", [mx.cpu()], multiple=False) == [mx.cpu()]
    with pytest.raises(InvalidValue, match="single device for this command"):
        check_contexts("ctx", [mx.cpu(0), mx.cpu(1)], multiple=False)
    with pytest.raises(InvalidValue, match="without repeated devices"):
        check_contexts("ctx", [mx.cpu(0), mx.cpu(0)])
    gpus = mx.context.num_gpus()
    with pytest.raises(InvalidValue, match=f"gpu:{gpus} does not exist"):
        check_contexts("ctx", [mx.cpu(), mx.gpu(gpus)])


def test_host_spelling_and_locality() -> None:
    assert check_host("host", "127.0.0.1") == "127.0.0.1"
    assert check_host("host", "localhost") == "localhost"
    for bad in ("bad host!", "", "a..b", "-x"):
        with pytest.raises(InvalidValue, match="^host must be a host name or IP address"):
            check_host("host", bad)
    with pytest.raises(InvalidValue, match="an address of this machine"):
        check_host("host", "192.0.2.1")  # TEST-NET-1 (RFC 5737): never assigned to a machine; bind sends nothing


def test_flag_message_names_the_flag_only_when_the_command_has_it() -> None:
    err = InvalidValue("step_size", math.nan, "> 0")
    assert flag_message(err, {"--step-size"}) == "--step-size must be > 0, got nan"
    assert flag_message(err, {"--eps"}) == "step_size must be > 0, got nan"
    assert flag_message(ConfigError("plain"), {"--eps"}) == "plain"


# ------------------------------------------------------------------ the CLI: one line, the flag, nothing written
@pytest.mark.parametrize("flag,value,message", [
    ("--eps", "nan", "argument --eps: not a finite number"),
    ("--eps", "inf", "argument --eps: not a finite number"),
    ("--step-size", "-inf", "argument --step-size: not a finite number"),
    ("--steps", "0", "--steps must be an integer >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1"),
    ("--limit", "-3", "--limit must be an integer >= 1"),
    ("--seed", "-1", "--seed must be an integer in 0..4294967295, got -1"),
    ("--ctx", "cpu,cpu:1", "--ctx must be a single device for this command"),
    ("--ctx", "gpu:97", "--ctx must be a device of this machine"),
    ("--ctx", "tpu", "argument --ctx: context must be cpu or gpu:N"),
    ("--attack-option", "step_size=nan", "--step-size must be a finite number, got 'nan'"),
])
def test_attack_refuses_bad_values(capsys: pytest.CaptureFixture, tmp_path: Path, flag: str, value: str,
                                   message: str) -> None:
    out = tmp_path / "out"
    assert_refused(capsys, ATTACK + ["--out", str(out), f"{flag}={value}"], message, out)


def test_output_directory_problems(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    file = tmp_path / "a_file"
    file.write_text("keep me")
    assert_refused(capsys, ATTACK + ["--out", str(file)], "--out must be a directory, not an existing file")
    assert_refused(capsys, ATTACK + ["--out", str(file / "sub")], "--out must be a directory, but")
    assert_refused(capsys, ATTACK + ["--out", ""], "--out must be a directory path, got ''")
    assert file.read_text() == "keep me"


def test_labels_outside_the_model_classes(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    data = digits(tmp_path / "bad.npz", label_at_3=12)
    for command in (ATTACK, ["evaluate", "--config", "mnist_resnet20", "--recipe", "apgd-lite", "--eps", "0.1"],
                    ["certify", "--config", "mnist_resnet20", "--n0", "10", "--n", "10"]):
        out = tmp_path / command[0]
        line = assert_refused(capsys, command + ["--data", data, "--out", str(out)], f"labels of {data}", out)
        assert "label 12 at position 3" in line


def test_certify_counts(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    base = ["certify", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2", "--out", str(tmp_path / "c")]
    assert_refused(capsys, base + ["--n", "1e11"], "--n must be an integer <= 1,000,000,000, got 100000000000")
    assert_refused(capsys, base + ["--n", "1.5"], "argument --n: not a whole number")
    assert_refused(capsys, base + ["--n0", "0"], "--n0 must be an integer >= 1, got 0")
    assert_refused(capsys, base + ["--alpha", "1"], "--alpha must be a number strictly between 0 and 1, got 1.0")
    assert_refused(capsys, base + ["--sigma", "nan"], "argument --sigma: not a finite number")


def test_merge_reports_out_must_differ_from_its_inputs(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    shards = [tmp_path / "s0", tmp_path / "s1"]
    for s in shards:
        s.mkdir()
    spelled = f"{tmp_path}/./s1/"
    assert_refused(capsys, ["merge-reports", str(shards[0]), str(shards[1]), "--out", spelled],
                   "--out must be different from every shard directory")


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--lr", "inf", "--lr must be a finite number, got inf"),
    ("--momentum", "nan", "--momentum must be a number in [0, 1)"),
    ("--wd", "-1", "--wd must be >= 0"),
    ("--lr-decay", "nan", "--lr-decay must be a finite number"),
    ("--eps", "nan", "argument --eps: not a finite number"),
    ("--sigma", "inf", "argument --sigma: not a finite number"),
    ("--step-size", "0", "--step-size must be > 0"),
    ("--mix", "1.5", "--mix must be a number in [0, 1]"),
    ("--epochs", "0", "--epochs must be an integer >= 1"),
    ("--name", "../../x", "--name must be a plain file name"),
    ("--name", "..", "--name must be a plain file name"),
    ("--optimizer", "nosuch", "--optimizer must be one of"),
    ("--ctx", "cpu,gpu:0", "--ctx must be a device of this machine"),
])
def test_train_refuses_before_any_work(capsys: pytest.CaptureFixture, tmp_path: Path, flag: str, value: str,
                                       message: str) -> None:
    save = tmp_path / "save"
    args = ["train", "--config", "mnist_resnet20", "--limit", "32", "--epochs", "1", "--save-dir", str(save),
            "--no-progress", f"{flag}={value}"]
    assert_refused(capsys, args, message)
    assert not save.exists()


def test_train_save_dir_that_is_a_file_fails_before_the_first_epoch(capsys: pytest.CaptureFixture,
                                                                      tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("x")
    assert_refused(capsys, ["train", "--config", "mnist_resnet20", "--save-dir", str(file)],
                   "--save-dir must be a directory, not an existing file")


def test_resume_accepts_another_spelling_of_the_save_dir(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["train", "--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "32", "--batch-size", "16",
              "--val-limit", "0", "--steps", "1", "--no-progress"]
    assert main(common + ["--epochs", "1", "--save-dir", "runs/t"]) == 0
    capsys.readouterr()
    assert main(common + ["--epochs", "2", "--save-dir", f"{tmp_path}/runs/./t/", "--resume"]) == 0
    metrics = json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]  # the first epoch came from the checkpoint


def test_launch_grace_and_host(capsys: pytest.CaptureFixture) -> None:
    assert_refused(capsys, ["launch", "-n", "1", "--grace", "nan", "--", "true"], "--grace must be a finite number")
    assert_refused(capsys, ["launch", "-n", "1", "--grace", "-1", "--", "true"], "--grace must be >= 0")
    assert_refused(capsys, ["launch", "-n", "1", "--timeout", "inf", "--", "true"], "--timeout must be a finite number")
    assert_refused(capsys, ["launch", "-n", "1", "--host", "no such host!", "--", "true"],
                   "--host must be a host name or IP address")
    assert_refused(capsys, ["launch", "-n", "1", "--host", "192.0.2.1", "--", "true"],
                   "--host must be an address of this machine")


# ------------------------------------------------------------------ targets equal to the label
def test_api_target_equal_to_label_is_refused(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    target = (y + 1) % 10
    target[5] = y[5]
    with pytest.raises(DataError, match=rf"sample 5 has label {y[5]} and target {y[5]} \(1 such samples\)"):
        PGD(eps=0.1, steps=2)(tiny_model, x, y, target=target)


def test_cli_fixed_target_leaves_out_samples_of_that_class(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    data = digits(tmp_path / "d.npz")  # labels 9 8 5 2 7 4 2 9: one 7
    out = tmp_path / "out"
    args = ATTACK + ["--data", data, "--limit", "8", "--out", str(out), "--targeted", "--target", "7", "--steps", "10"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "adversarial.npz") as npz:
        y, success, target = npz["y"], npz["success"], npz["target"]
    seven = y == 7
    assert summary["not_attacked_target_is_label"] == int(seven.sum()) == 1
    assert not success[seven].any()  # never counted as a success
    assert (target[seven] == -1).all()
    assert summary["attacked"] == int(summary["n"] * summary["clean_accuracy"]) - 1
    assert summary["success_rate"] == pytest.approx(success[~seven].sum() / summary["attacked"])


# ------------------------------------------------------------------ the API raises the same errors
def test_api_raises_invalid_value_not_type_errors(tiny_model, tiny_batch) -> None:
    from gluon_robust.training.loop import TrainConfig

    for kwargs, name in (({"eps": math.nan}, "eps"), ({"eps": 0.1, "step_size": math.inf}, "step_size"),
                         ({"eps": 0.1, "steps": 2.5}, "steps")):
        with pytest.raises(InvalidValue) as info:
            PGD(**kwargs)
        assert info.value.name == name
    for kwargs, name in (({"lr": math.nan}, "lr"), ({"momentum": -0.1}, "momentum"), ({"name": "a/b"}, "name"),
                         ({"ctx": ("gpu:99",)}, "ctx"), ({"save_dir": ""}, "save_dir")):
        with pytest.raises(InvalidValue) as info:
            TrainConfig(config="mnist_resnet20", **kwargs)
        assert info.value.name == name
    x, y = tiny_batch
    bad = y.copy()
    bad[0] = 10
    with pytest.raises(DataError, match="label 10 at position 0"):
        PGD(eps=0.1, steps=1)(tiny_model, x, bad)
    assert issubclass(InvalidValue, GluonRobustError) and issubclass(InvalidValue, ValueError)

"""Generated bad input: no traceback ever reaches the user, and no command exits 0 with a NaN or out-of-bounds result.

Hypothesis generates command-line values, npz data files, model configs,
image-folder trees and output paths, and runs the real command in-process for
each case. Every case must end in one of two ways:

* exit status 2 with exactly one ``gluon-robust: error: ...`` line and no
  traceback (a refused input), or
* exit status 0 with outputs that are finite and inside the model bounds (and
  inside the eps-ball for fixed-eps attacks).

Anything else (exit 1, an exception escaping ``main``, a NaN in a result)
fails the test. The default run keeps a small, derandomised budget; ``make
test-all`` and ``make reliability`` multiply it (``GLUON_ROBUST_FUZZ_SCALE``)
and draw fresh cases. Each case is counted in the README's reliability table
(:mod:`tests.reliability`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gluon_robust.cli import main
from reliability import tally

SCALE = max(1, int(os.environ.get("GLUON_ROBUST_FUZZ_SCALE", "1")))
#: Fresh random cases when the budget is scaled up; the same cases in every default run otherwise.
DERANDOMIZE = SCALE == 1


def budget(n: int) -> settings:
    """Hypothesis settings for ``n`` cases in the default run (``n * SCALE`` in the full one)."""
    return settings(max_examples=n * SCALE, deadline=None, derandomize=DERANDOMIZE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per generated case (pytest's tmp_path is one per test, not per case)."""
    path = Path(tempfile.mkdtemp(prefix="gluon-robust-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_cli(argv: List[str]) -> Tuple[int, str]:
    """Run ``gluon-robust ARGV`` in-process; returns the status and everything written to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _finite_json(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_json(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_json(v) for v in value)
    return True


def _accuracies_valid(value: object) -> bool:
    """Every ``*accuracy*`` number of a JSON report is in [0, 1]."""
    if isinstance(value, dict):
        return all((0.0 <= v <= 1.0) if "accuracy" in k and isinstance(v, (int, float)) else _accuracies_valid(v)
                   for k, v in value.items())
    if isinstance(value, list):
        return all(_accuracies_valid(v) for v in value)
    return True


def outputs_problem(command: str, out: Path, eps: Optional[float]) -> Optional[str]:
    """What is wrong with the outputs of a command that exited 0, or None."""
    reports = {"attack": "summary.json", "evaluate": "report.json", "certify": "certify.json",
               "detect": "detections.json", "train": "metrics.json"}
    report_path = out / reports[command]
    if not report_path.is_file():
        return f"exit 0 without {report_path.name}"
    report = json.loads(report_path.read_text(), parse_constant=lambda c: float(c))  # NaN/Infinity become floats
    if not _finite_json(report):
        return f"{report_path.name} holds NaN or infinite numbers"
    if not _accuracies_valid(report):
        return f"{report_path.name} holds an accuracy outside [0, 1]"
    if command == "attack":
        with np.load(out / "adversarial.npz", allow_pickle=False) as npz:
            x_adv, attacked = npz["x_adv"], npz["success"] | (npz["adv_pred"] >= 0)
        if not np.isfinite(x_adv).all():
            return "adversarial.npz holds NaN"
        if x_adv.min() < 0.0 or x_adv.max() > 1.0:
            return f"adversarial examples leave the bounds [0, 1]: [{x_adv.min()}, {x_adv.max()}]"
        del attacked
    if command == "train":
        import mxnet as mx

        for path in out.glob("*.params"):
            if any(not np.isfinite(v.asnumpy()).all() for v in mx.nd.load(str(path)).values()):
                return f"{path.name} holds NaN or infinite weights"
    return None


def check_case(kind: str, argv: List[str], command: str, out: Path, eps: Optional[float] = None) -> None:
    """Run one generated case, count it under ``kind``, and fail unless it was refused cleanly or succeeded validly."""
    handled = False
    try:
        code, err = run_cli(argv)
        errors = [line for line in err.splitlines() if "error:" in line]
        if code == 2:
            problem = None
            if len(errors) != 1 or not errors[0].lstrip("\r").startswith("gluon-robust: error: "):
                problem = "a refusal must print exactly one error line"
            elif "Traceback" in err:
                problem = "a traceback reached the user"
        elif code == 0:
            problem = "Traceback in the output" if "Traceback" in err else outputs_problem(command, out, eps)
        else:
            problem = f"exit status {code} (an unexpected failure)"
        handled = problem is None
        assert handled, f"{problem}\n$ gluon-robust {' '.join(argv)}\n{err[-2000:]}"
    finally:
        tally(kind, handled)


# ------------------------------------------------------------------ value strategies
def _number_text(value: float) -> str:
    return repr(value) if not isinstance(value, int) else str(value)


BAD_TEXT = st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e999", "-1e999", "abc", "1/0", "0x10", "1,2",
                            "--", "8/255/2", "１", "None", "true", "[1]", "1e-400", "9" * 40])
SMALL_FLOAT = st.one_of(st.floats(min_value=-2.0, max_value=2.0, allow_nan=False), st.sampled_from([0.0, -0.0]),
                        st.sampled_from(["8/255", "1/3", "-1/255", "3/2"]))
ANY_FLOAT = st.one_of(SMALL_FLOAT, st.floats(allow_nan=True, allow_infinity=True), BAD_TEXT)
SMALL_INT = st.one_of(st.integers(min_value=-3, max_value=3), st.just(-(2 ** 63)))
ANY_INT = st.one_of(SMALL_INT, st.sampled_from(["1.5", "2.0", "1e3"]), BAD_TEXT)
#: Huge values only for flags where a huge value is refused or costs nothing (a huge --steps is a valid request
#: for a very long run, not bad input).
HUGE_INT = st.sampled_from([2 ** 32, 2 ** 63, 10 ** 30])
HUGE_OK = {"--seed", "--n", "--n0", "--limit", "--batch-size", "--max-images", "--max-examples", "--fit-limit"}


def as_flag(flag: str, value: object) -> str:
    text = value if isinstance(value, str) else _number_text(value)
    return f"{flag}={text}"


MODEL = ["--config", "mnist_resnet20", "--data", "mnist-sample", "--limit", "2"]
# Per command: the base arguments, and the flags fuzzed with float-like or int-like values.
COMMANDS: Dict[str, Tuple[List[str], List[str], List[str]]] = {
    "attack": (["attack", *MODEL, "--attack", "pgd", "--eps", "0.1", "--steps", "1"],
               ["--eps", "--step-size"], ["--steps", "--restarts", "--batch-size", "--limit", "--seed",
                                          "--max-images"]),
    "evaluate": (["evaluate", *MODEL, "--attacks", "fgsm", "--eps", "0.1", "--no-progress"],
                 ["--eps"], ["--batch-size", "--limit", "--seed", "--max-examples"]),
    "certify": (["certify", *MODEL, "--n0", "8", "--n", "16", "--no-progress"],
                ["--sigma", "--alpha", "--radii"], ["--n0", "--n", "--batch-size", "--limit", "--seed"]),
    "detect": (["detect", "--config", "mnist_resnet20", "--detector", "confidence", "--fit-data", "mnist-sample",
                "--fit-limit", "12", "--data", "mnist-sample", "--limit", "2"],
               ["--fpr", "--calib-fraction"], ["--fit-limit", "--batch-size", "--limit", "--seed"]),
    "train": (["train", *MODEL[:4], "--limit", "16", "--batch-size", "16", "--epochs", "1", "--steps", "1",
               "--val-limit", "0", "--no-progress"],
              ["--lr", "--wd", "--momentum", "--lr-decay", "--eps", "--step-size", "--mix", "--guard-drop"],
              ["--seed", "--checkpoint-every"]),
}


@st.composite
def flag_cases(draw: st.DrawFn, command: str) -> List[str]:
    base, float_flags, int_flags = COMMANDS[command]
    chosen = draw(st.lists(st.sampled_from(float_flags + int_flags), min_size=1, max_size=2, unique=True))
    extra = [as_flag(flag, draw(ANY_FLOAT if flag in float_flags else ANY_INT | HUGE_INT if flag in HUGE_OK
                                else ANY_INT)) for flag in chosen]
    return base + extra


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_numeric_and_count_flags(command: str) -> None:
    cases = {"train": 6, "certify": 10}.get(command, 14)

    @budget(cases)
    @given(argv=flag_cases(command))
    def run(argv: List[str]) -> None:
        with scratch() as root:
            out = root / "out"
            argv = argv + (["--save-dir", str(out)] if command == "train" else ["--out", str(out)])
            check_case("numbers and counts on the command line", argv, command, out)

    run()


# ------------------------------------------------------------------ npz data files
DTYPES = st.sampled_from(["uint8", "int8", "int64", "uint16", "float16", "float32", "float64", "bool", "complex64",
                          "U3"])


@st.composite
def npz_files(draw: st.DrawFn) -> Dict[str, np.ndarray]:
    """Near-valid digit arrays with one or more things wrong (or nothing wrong)."""
    n = draw(st.integers(0, 3))
    shape = draw(st.sampled_from([(n, 1, 28, 28), (n, 28, 28), (n, 28, 28, 1), (n, 3, 28, 28), (n, 1, 27, 28),
                                  (n,), (), (n, 1, 28, 28, 1), (n, 2, 28, 28)]))
    dtype = draw(st.sampled_from(["uint8", "float32"]) | DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if dtype == "U3":
        x = np.full(shape, "abc")
    else:
        x = (rng.random(shape) * draw(st.sampled_from([1.0, 255.0, 300.0, -1.0]))).astype(dtype)
    if x.size and np.issubdtype(x.dtype, np.floating) and draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 2.0, -0.5]))
    labels = draw(st.sampled_from(["ok", "big", "negative", "float", "nan", "short", "2d", "str"]))
    y = {"ok": rng.integers(0, 10, n), "big": np.full(n, 10), "negative": -np.ones(n, np.int64),
         "float": rng.integers(0, 10, n) + 0.5, "nan": np.full(n, np.nan), "short": rng.integers(0, 10, max(n - 1, 0)),
         "2d": rng.integers(0, 10, (n, 2)), "str": np.array(["7"] * n)}[labels]
    arrays = {"x": x, "y": y}
    missing = draw(st.sampled_from([None, None, None, "x", "y"]))
    if missing:
        arrays[f"{missing}_renamed"] = arrays.pop(missing)
    return arrays


@budget(40)
@given(arrays=npz_files(), command=st.sampled_from(["attack", "evaluate"]))
def test_npz_data_files(arrays: Dict[str, np.ndarray], command: str) -> None:
    with scratch() as root:
        path = root / "data.npz"
        np.savez(path, **arrays)
        out = root / "out"
        argv = [command, "--config", "mnist_resnet20", "--data", f"npz:{path}", "--eps", "0.1", "--out", str(out)]
        argv += ["--attack", "fgsm"] if command == "attack" else ["--attacks", "fgsm", "--no-progress"]
        check_case("npz data files (shapes, dtypes, NaN and inf, labels)", argv, command, out, eps=0.1)


def test_object_arrays_in_npz_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    out = tmp_path / "out"
    check_case("npz data files (shapes, dtypes, NaN and inf, labels)",
               ["attack", "--config", "mnist_resnet20", "--data", f"npz:{path}", "--attack", "fgsm", "--eps", "0.1",
                "--out", str(out)], "attack", out)


# ------------------------------------------------------------------ model configs
BUNDLED = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "gluon_robust" / "model_configs" / "mnist_resnet20.yaml").read_text())
CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True),
                          st.text(max_size=12), st.lists(st.floats(allow_nan=True), max_size=4),
                          st.lists(st.integers(-2, 40), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                                     st.integers(), max_size=2))


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """The bundled reference config with some keys changed, dropped or added; or raw text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["", "[1, 2]", "model: [", "!!python/object/apply:os.system ['true']",
                                     "model: !!python/name:os.system", "\x00\x01", "a: b: c", "---\n---\n"]))
    config = dict(BUNDLED)
    config["params"] = str(Path(__file__).resolve().parents[1] / "gluon_robust" / "model_configs" / config["params"])
    for key in draw(st.lists(st.sampled_from(sorted(BUNDLED) + ["extra"]), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = draw(CONFIG_VALUES | st.sampled_from(["cifar_resnet20_v1", "resnet18_v1", "nosuchnet",
                                                               "mnist_resnet20.params", "/nonexistent.params"]))
    return yaml.safe_dump(config)


@budget(30)
@given(text=config_texts())
def test_model_configs(text: str) -> None:
    with scratch() as root:
        path = root / "model.yaml"
        path.write_text(text)
        out = root / "out"
        argv = ["attack", "--config", str(path), "--data", "mnist-sample", "--limit", "2", "--attack", "fgsm",
                "--eps", "0.1", "--out", str(out)]
        check_case("model configs (YAML keys, values, tags)", argv, "attack", out, eps=0.1)


# ------------------------------------------------------------------ image folders
FILE_KINDS = st.sampled_from(["png", "jpg", "corrupt", "empty", "text", "gray", "tiny", "dir"])


def _write_entry(path: Path, kind: str, rng: np.random.Generator) -> None:
    if kind == "dir":
        path.mkdir(exist_ok=True)
    elif kind in ("png", "jpg", "gray", "tiny"):
        side = 2 if kind == "tiny" else 40
        image = rng.integers(0, 256, (side, side + 3) if kind == "gray" else (side, side + 3, 3)).astype(np.uint8)
        cv2.imwrite(str(path.with_suffix(".jpg" if kind == "jpg" else ".png")), image)
    elif kind == "corrupt":
        path.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(40))
    elif kind == "empty":
        path.with_suffix(".jpg").write_bytes(b"")
    else:
        path.with_suffix(".txt").write_text("not an image")


@st.composite
def folder_trees(draw: st.DrawFn) -> List[Tuple[str, str, str]]:
    classes = draw(st.lists(st.text(alphabet="abcxyz_- .", min_size=1, max_size=6).filter(lambda s: s.strip(". ")),
                            max_size=3, unique=True))
    return [(c, f"f{i}", draw(FILE_KINDS)) for c in classes for i in range(draw(st.integers(0, 2)))]


@budget(20)
@given(tree=folder_trees(), seed=st.integers(0, 1000))
def test_image_folders(tree: List[Tuple[str, str, str]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    with scratch() as root:
        data = root / "photos"
        data.mkdir()
        for folder, name, kind in tree:
            (data / folder).mkdir(exist_ok=True)
            _write_entry(data / folder / name, kind, rng)
        out = root / "out"
        argv = ["attack", "--model", "cifar_resnet20_v1", "--classes", "10", "--input-size", "3,32,32",
                "--data", f"folder:{data}", "--attack", "fgsm", "--eps", "0.1", "--out", str(out)]
        check_case("image folder trees (names, corrupt and empty files)", argv, "attack", out, eps=0.1)


# ------------------------------------------------------------------ output directories and names
@st.composite
def out_paths(draw: st.DrawFn) -> Tuple[str, str]:
    """An --out value relative to a scratch root, and what to put in the way."""
    name = draw(st.sampled_from(["out", "", " ", "a" * 300, "x/" * 3 + "deep", "file", "file/sub", "..", ".",
                                 "with space", "ünïcödé", "nul\x00byte", "-dash", "ro/sub"]))
    obstacle = draw(st.sampled_from(["none", "file", "readonly"]))
    return name, obstacle


@budget(20)
@given(case=out_paths(), command=st.sampled_from(["attack", "train"]))
def test_output_directories_and_names(case: Tuple[str, str], command: str) -> None:
    name, obstacle = case
    with scratch() as root:
        (root / "file").write_text("an existing file")
        if obstacle == "readonly":
            (root / "ro").mkdir(mode=0o500)
        if obstacle == "file" and name and "\x00" not in name and len(name) < 200:
            target = root / name
            if not target.exists() and target.parent.is_dir():
                target.write_text("in the way")
        out = str(root / name) if name.strip() else name
        if command == "train":
            argv = COMMANDS["train"][0] + ["--save-dir", out, "--name", draw_name(name)]
        else:
            argv = ["attack", *MODEL, "--attack", "fgsm", "--eps", "0.1", "--out", out]
        check_case("output directories and names", argv, command, Path(out))


def draw_name(name: str) -> str:
    """A --name derived from the path case, so that bad names are generated too."""
    return {"": "", "..": "..", ".": ".", "x/x/x/deep": "../x"}.get(name, "model")

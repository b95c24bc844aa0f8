"""Every code block of README.md runs as printed.

* ```python blocks are executed in order, in one namespace for the whole file
  (later blocks use the ``model``, ``x`` and ``y`` of earlier ones), in a
  temporary working directory.
* Command blocks (``gluon-robust ...``, ``python scripts/...``, ``make ...``):
  every ``gluon-robust`` and ``python scripts/`` line is parsed by the real
  parser and its shared flags validated (unknown commands, flags and bad
  values fail); the slow test runs them for real, except those in
  :data:`NOT_RUN`.
* ```console blocks show a command after ``$ `` and the output it prints;
  the test runs it and compares the output line for line.

The README needs two things the test provides in the working directory:
``photos/`` (a small folder of two colour classes, standing for the user's
photos) and, since nothing can be downloaded here, random weights standing in
for GluonCV's published ones (``pretrained=True``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import mxnet as mx
import numpy as np
import pytest

import gluon_robust.zoo
from gluon_robust.cli import build_parser, check_common_args, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Command lines the slow test does not run, with the reason (matched as substrings of the joined line).
NOT_RUN: Dict[str, str] = {
    "make ": "make targets build the environment and run the suites themselves",
    "--pretrained": "needs GluonCV's published weights in the offline cache",
    "--save-dir model_configs": "reproduces a bundled reference model (minutes to train)",
    "--steps 10 --epochs 5 --save-dir runs/pgdat": "full PGD-AT run on 4,000 digits (the quick variant below it runs)",
    "gluon-robust launch": "a two-worker parameter-server job training on all digits for 10 epochs",
}

BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


def blocks() -> List[Tuple[str, str]]:
    """(language, text) of every fenced block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def command_lines(text: str) -> List[List[str]]:
    """The command lines of a shell block: continuations joined, comments dropped, split like a shell."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def shell_commands() -> List[List[str]]:
    """Every command of the unlabeled blocks that hold commands (the others show output or signatures)."""
    commands = []
    for lang, text in blocks():
        if lang:
            continue
        lines = command_lines(text)
        runnable = [w for w in lines if w[0] in ("gluon-robust", "make") or w[:2][-1].startswith("scripts/")]
        assert not runnable or len(runnable) == len(lines), f"a block mixes commands and other lines:\n{text}"
        commands.extend(runnable)
    return commands


def _script_parser(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_readme", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def check_command(words: List[str]) -> None:
    """Parse a README command with the real parser and validate its shared flags."""
    if words[0] == "make":
        assert words[1] in ("demo", "test", "test-all", "bench", "bench-art", "reliability"), words
        return
    if words[0] == "python":
        _script_parser(words[1])(words[2:])
        return
    assert words[0] == "gluon-robust", words
    args = build_parser().parse_args(words[1:])
    check_common_args(args)
    if args.command == "train":
        from gluon_robust.commands.train import config_from_args

        config_from_args(args)
    if args.command == "launch":
        worker = [w for w in args.worker_command if w != "--"]
        check_command(worker)


def test_readme_has_the_blocks_this_test_expects():
    langs = [lang for lang, _ in blocks()]
    assert langs.count("python") >= 4 and langs.count("console") == 1
    assert len(shell_commands()) >= 20


@pytest.mark.parametrize("words", shell_commands(), ids=lambda w: " ".join(w)[:80])
def test_readme_command_parses(words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_command(words)


def test_readme_console_example_prints_what_it_shows(tmp_path, monkeypatch, capsys):
    (text,) = [text for lang, text in blocks() if lang == "console"]
    lines = text.strip().splitlines()
    assert lines[0].startswith("$ gluon-robust ")
    monkeypatch.chdir(tmp_path)
    status = main(shlex.split(lines[0][2:])[1:])
    captured = capsys.readouterr()
    assert status == 2
    assert (captured.out + captured.err).strip().splitlines() == lines[1:]


def write_photos(root: Path, per_class: int = 4, size: int = 64) -> None:
    """``photos/``: two classes of noisy colour squares (reddish, bluish), as PNG files."""
    rng = np.random.RandomState(0)
    for name, bgr in (("red", (40, 40, 200)), ("blue", (200, 60, 40))):
        folder = root / "photos" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = np.asarray(bgr, np.float32) + rng.normal(0, 25, (size, size, 3))
            cv2.imwrite(str(folder / f"{i}.png"), np.clip(image, 0, 255).astype(np.uint8))


def random_pretrained(cache: Path):
    """A stand-in for :func:`gluon_robust.zoo.pretrained_weights_path`: random, fixed weights for any zoo name."""
    from gluoncv.model_zoo import get_model

    def path_for(name: str) -> Path:
        path = cache / f"{name}-random.params"
        if not path.exists():
            mx.random.seed(0)
            net = get_model(name)
            net.initialize(mx.init.Xavier())
            net(mx.nd.zeros((1, 3, 224, 224)))
            net.save_parameters(str(path))
        return path

    return path_for


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path)
    cache = tmp_path / "weights"
    cache.mkdir()
    monkeypatch.setattr(gluon_robust.zoo, "pretrained_weights_path", random_pretrained(cache))
    namespace: Dict[str, object] = {"__name__": "readme"}
    start = time.perf_counter()
    for i, (lang, text) in enumerate(blocks()):
        if lang == "python":
            exec(compile(text, f"README.md python block {i}", "exec"), namespace)  # noqa: S102 -- the README's own code
    assert time.perf_counter() - start < 120  # the README's examples stay small
    assert (tmp_path / "photos_mobilenet.params").is_file()
    assert namespace["evaluated"].num_classes == 2


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """Run every README command line for real, in order, in one working directory (except :data:`NOT_RUN`)."""
    write_photos(tmp_path)
    from gluon_robust.data import load_data
    from gluoncv.model_zoo import get_model

    x, y = load_data("mnist-sample", limit=50).arrays()
    np.savez(tmp_path / "suspects.npz", x=x, y=y)
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "cifar_test.npz", x=rng.randint(0, 256, (20, 3, 32, 32)).astype(np.uint8),
             y=rng.randint(0, 10, 20))
    mx.random.seed(0)
    net = get_model("cifar_resnet20_v1", classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.export(str(tmp_path / "net"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ran = 0
    for words in shell_commands():
        line = " ".join(words)
        if any(key in line for key in NOT_RUN):
            continue
        argv = ([sys.executable, "-m", "gluon_robust.cli"] + words[1:] if words[0] == "gluon-robust"
                else [sys.executable, str(ROOT / words[1])] + words[2:])
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 15

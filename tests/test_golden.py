"""Golden outputs: proof that a refactoring changed no behaviour (issue 17).

What it proves: every registered attack (each norm it supports, untargeted
and, where supported, targeted), every registered training method, every
detector and every defence, run on a fixed tiny model with fixed seeds,
produces exactly (bit for bit) the arrays recorded in ``tests/golden/*.npz``
from the code before the redesign: adversarial examples, success, distances,
predictions, iterations and queries; losses, parameters and adversarial
batches after a few training steps; detector scores and flags after
calibration; defence outputs and the gradients passed back through them.
The cases are defined in ``tests/golden/cases.py``; each seeds itself, so the
result does not depend on which cases ran before it.

Re-record ONLY when a behaviour change is intended (and say so in the commit):
``python -m tests.golden.record`` (all cases) or
``python -m tests.golden.record CASE ...`` (some), from the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest

from golden.cases import CASES

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


class Worker:
    """A separate process that runs the cases (tests/golden/worker.py), with one OpenMP thread.

    MXNet's CPU kernels change their last bits with the thread count, and the
    rest of the suite may leave global state behind; a fresh process with a
    fixed environment sees neither. ``GOLDEN_IN_PROCESS=1`` runs the cases in
    the test process instead (for debugging; it matches only when MXNet was
    started with ``OMP_NUM_THREADS=1``).
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.in_process = os.environ.get("GOLDEN_IN_PROCESS") == "1"
        self.process = None if self.in_process else subprocess.Popen(
            [sys.executable, str(GOLDEN_DIR / "worker.py"), str(out_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(GOLDEN_DIR.parent.parent),
        )

    def run(self, case: str) -> Dict[str, np.ndarray]:
        if self.in_process:
            return CASES[case]()
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        if self.process.poll() is not None:
            pytest.fail(f"the golden worker exited with status {self.process.returncode}; see the captured stderr")
        self.process.stdin.write(case + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the golden worker died while running case {case}; see the captured stderr")
        answer = json.loads(line)
        if not answer["ok"]:
            pytest.fail(f"golden case {case} raised:\n{answer['error']}")
        with np.load(self.out_dir / f"{case}.npz", allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def close(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    runner = Worker(tmp_path_factory.mktemp("golden"))
    yield runner
    runner.close()


def _difference(expected: np.ndarray, actual: np.ndarray) -> str:
    if expected.shape != actual.shape:
        return f"shape {actual.shape} instead of {expected.shape}"
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} instead of {expected.dtype}"
    if expected.dtype.kind in "fc":
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        diff = np.where(np.isnan(actual) & np.isnan(expected), 0.0, diff)
        where = np.unravel_index(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)), diff.shape) if diff.size else ()
        return (f"{int((diff != 0).sum())} of {diff.size} values differ, max abs difference "
                f"{np.nanmax(np.where(np.isnan(diff), np.inf, diff)):.3g} at {tuple(int(i) for i in where)}")
    unequal = actual != expected
    return f"{int(np.sum(unequal))} of {expected.size} values differ (expected {expected.ravel()[:8]}, got {actual.ravel()[:8]})"


def compare(case: str, expected: Dict[str, np.ndarray], actual: Dict[str, np.ndarray]) -> None:
    """Assert that two dicts of arrays are bit-identical, naming the case and each differing array."""
    problems = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            problems.append(f"{key}: missing from the output")
        elif key not in expected:
            problems.append(f"{key}: not in the golden file")
        else:
            want, got = expected[key], np.asarray(actual[key])
            if not (want.shape == got.shape and want.dtype == got.dtype and np.array_equal(want, got, equal_nan=want.dtype.kind in "fc")):
                problems.append(f"{key}: {_difference(want, got)}")
    assert not problems, f"golden case {case} changed:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, worker: Worker) -> None:
    path = GOLDEN_DIR / f"{case}.npz"
    assert path.exists(), f"no golden file for case {case}: record it with `python -m tests.golden.record {case}`"
    with np.load(path, allow_pickle=False) as data:
        expected = {key: data[key] for key in data.files}
    compare(case, expected, worker.run(case))


def test_every_golden_file_has_a_case() -> None:
    stale = sorted(p.stem for p in GOLDEN_DIR.glob("*.npz") if p.stem not in CASES)
    assert not stale, f"golden files without a case (remove them or restore the case): {stale}"

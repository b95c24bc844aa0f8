"""Record the golden outputs: ``python -m tests.golden.record [CASE ...]`` (or ``python tests/golden/record.py``).

Run by hand only, on code whose behaviour is meant to be the reference: it
overwrites ``tests/golden/<case>.npz`` for every case (or the cases named)
with what the current code computes. ``tests/test_golden.py`` then checks the
code against these files bit for bit.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from env import golden_environ, is_golden_environ  # noqa: E402

if __name__ == "__main__" and not is_golden_environ():  # before MXNet is imported: one OpenMP thread
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], golden_environ())

import numpy as np  # noqa: E402

from cases import CASES  # noqa: E402

logger = logging.getLogger("golden.record")

GOLDEN_DIR = Path(__file__).resolve().parent


def record(names: list[str]) -> None:
    """Run each named case once and write its arrays to ``<case>.npz`` (compressed, no pickles)."""
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown golden cases: {', '.join(unknown)}")
    for name in names:
        start = time.perf_counter()
        arrays = CASES[name]()
        for key, value in arrays.items():
            if value.dtype == object:
                raise TypeError(f"case {name}: array {key} has dtype object, which np.load cannot read without pickles")
        np.savez_compressed(GOLDEN_DIR / f"{name}.npz", **arrays)
        logger.info("%s: %d arrays in %.2f s", name, len(arrays), time.perf_counter() - start)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gluon_robust").setLevel(logging.WARNING)
    record(sys.argv[1:] or sorted(CASES))


if __name__ == "__main__":
    main()

"""The reliability tally: which class of bad input or fault a test case belongs to, and whether it was handled.

Tests call :func:`tally` once per generated case. When the environment
variable ``GLUON_ROBUST_RELIABILITY_LOG`` names a file, every call appends a
JSON line ``{"class": ..., "handled": ...}`` to it; ``make reliability`` runs
the fuzz suite with a large budget and ``benchmarks/reliability_table.py``
turns the log into the committed JSON and the README's reliability table.
Without the variable nothing is written.
"""

from __future__ import annotations

import json
import os

__all__ = ["tally", "LOG_VARIABLE"]

LOG_VARIABLE = "GLUON_ROBUST_RELIABILITY_LOG"


def tally(kind: str, handled: bool) -> None:
    """Count one case of ``kind`` (a row of the README table); ``handled`` is whether its property held."""
    path = os.environ.get(LOG_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"class": kind, "handled": bool(handled)}) + "\n")

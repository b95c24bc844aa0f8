"""Shared helpers of the benchmark scripts: timing, JSON output, tables."""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from gluon_robust.io import atomic_write_json
from gluon_robust.reporting import format_table, versions


def time_call(fn: Callable[[], None], repeats: int = 5, warmup: int = 2) -> Dict[str, float]:
    """Median and minimum wall time of ``fn`` in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_results(out_dir: str, name: str, payload: Dict, rows: List[Sequence[object]], header: Sequence[str]) -> Path:
    """Write ``payload`` (plus machine info) as JSON and log the table."""
    payload = dict(payload, machine={"cpus": os.cpu_count(), "platform": platform.platform()}, versions=versions())
    path = Path(out_dir) / f"{name}.json"
    atomic_write_json(path, payload)
    table = format_table(rows, header)
    logging.getLogger("benchmarks").info("results (%s):\n%s", path, table)
    return path


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gluon_robust").setLevel(logging.WARNING)

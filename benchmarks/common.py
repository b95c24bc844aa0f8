"""Shared helpers of the benchmark scripts: timing, provenance, JSON output, tables.

Every results file records where it came from (:func:`provenance`): the git
revision and whether the working tree differed from it, a digest of the code
alone, the machine's core count and the versions of the packages that
determine the numbers. A bench that adds rows to an existing file
(``--update``) goes through :func:`load_results`, which refuses a file
measured with other code or from a dirty tree, so one table never silently
mixes code versions.

This module imports neither MXNet nor gluon_robust, so that the benchmarks
whose own environment cannot import GluonCV (``vs_autoattack.py``) use it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
#: Packages whose versions a results file records, when installed.
PACKAGES = ("gluon_robust", "mxnet", "gluoncv", "numpy", "torch", "pyautoattack", "adversarial-robustness-toolbox")


class ProvenanceError(SystemExit):
    """Refusal to mix results of different revisions (a one-line message, exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


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


#: What decides the numbers: a results file's ``code`` digest covers these paths (results and README excluded).
CODE_PATHS = ("gluon_robust", "benchmarks", ":(exclude)benchmarks/results", "model_configs", "setup.py",
              "constraints.txt", "Makefile")


def git_revision(repo: Path = REPO) -> Dict[str, Any]:
    """The commit of ``repo``, whether its files differ from it, and the same for the code alone.

    ``dirty``: any tracked or untracked (not ignored) file differs from the
    commit. ``code``: SHA-256 of the commit's tree entries under
    :data:`CODE_PATHS`, so that committing results or README text keeps it;
    ``code_dirty``: a file under those paths differs. Outside a git checkout
    every value is None.
    """
    def git(*args: str) -> Optional[str]:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "code": None, "code_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=normal")
    code_status = git("status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS)
    tree = git("ls-tree", "-r", "HEAD", "--", *[p for p in CODE_PATHS if not p.startswith(":")])
    if tree is not None:  # ls-tree takes no exclude pathspec
        tree = "".join(line + "\n" for line in tree.splitlines()
                       if not line.split("\t", 1)[-1].startswith("benchmarks/results/"))
    return {
        "commit": commit.strip(),
        "dirty": None if status is None else bool(status.strip()),
        "code": None if tree is None else hashlib.sha256(tree.encode()).hexdigest(),
        "code_dirty": None if code_status is None else bool(code_status.strip()),
    }


def package_versions(names: Sequence[str] = PACKAGES) -> Dict[str, str]:
    """Python's version and those of the installed ``names`` (from their metadata, nothing imported)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(revision: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Where a results file comes from: revision, machine (core count, platform) and versions."""
    return {
        "revision": revision if revision is not None else git_revision(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": package_versions(),
    }


def same_revision(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> bool:
    """Whether two revisions ran the same committed code.

    With a ``code`` digest on both sides: equal digests and neither side's
    code dirty (commits that only add results or README text still match).
    Otherwise (an older file): the same commit and neither tree dirty. An
    unknown revision never matches.
    """
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    if a.get("code") and b.get("code"):
        return a["code"] == b["code"] and a.get("code_dirty") is False and b.get("code_dirty") is False
    return bool(a.get("commit") and a.get("commit") == b.get("commit")
                and a.get("dirty") is False and b.get("dirty") is False)


def load_results(out_dir: str | os.PathLike, name: str, revision: Dict[str, Any]) -> Dict[str, Any]:
    """The payload of an existing ``NAME.json`` that new rows may be added to; ``{}`` when there is none.

    Raises
    ------
    ProvenanceError
        When the file was written at another revision, from a dirty tree, or
        without a revision: its rows and new ones would be different code.
    """
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    theirs = old.get("revision")
    if not same_revision(theirs, revision):
        def show(r: Any) -> str:
            if not isinstance(r, dict) or not r.get("commit"):
                return "no recorded revision"
            dirty = r.get("code_dirty") if r.get("code") else r.get("dirty")
            code = f", code {r['code'][:12]}" if r.get("code") else ""
            return f"{r['commit'][:12]}{code}{' (dirty)' if dirty is not False else ''}"
        raise ProvenanceError(f"--update: {path} is from {show(theirs)}, this run is {show(revision)}; "
                              "re-run without --update so that one file never mixes code versions")
    return old


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=_json_default)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(rows: List[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(out_dir: str, name: str, payload: Dict, rows: List[Sequence[object]], header: Sequence[str],
                  revision: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``payload`` plus its provenance as ``OUT_DIR/NAME.json``, atomically, and log the table.

    ``revision`` is the one taken when the run started (default: now).
    """
    payload = dict(payload, **provenance(revision))
    path = Path(out_dir) / f"{name}.json"
    write_json_atomic(path, payload)
    logging.getLogger("benchmarks").info("results (%s):\n%s", path, format_table(rows, header))
    return path


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished descendants (a command's workers are reaped by it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gluon_robust").setLevel(logging.WARNING)

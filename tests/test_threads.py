"""MXNet's OpenMP threads (``gluon_robust.threads``): one per physical core, a user's setting kept, same numbers.

The interpreter cases run fresh processes, because MXNet sizes its pool when
its engine starts. The oracle for the core count is sysfs's
``thread_siblings_list``: one distinct list per physical core, a different
file from the ``core_id`` and ``physical_package_id`` the code reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gluon_robust import threads

_SYSFS = Path("/sys/devices/system/cpu")

#: Reports the variable after the import, the process's OS threads after a convolution, and the digest of a
#: PGD input-gradient step (the numbers must not depend on the thread count).
_CHILD = r"""
import hashlib, json, os
import gluon_robust
import mxnet as mx
import numpy as np
from gluon_robust import load_classifier
from gluon_robust.attacks.pgd import PGD
from gluon_robust.data import load_data
model = load_classifier("mnist_resnet20_pgdat")
x, y = load_data("mnist-sample", split="test", limit=16).arrays()
result = PGD(eps=0.3, steps=3)(model, x.astype(np.float32), y)
print(json.dumps({"variable": os.environ.get("MXNET_OMP_MAX_THREADS"), "tasks": len(os.listdir("/proc/self/task")),
                  "digest": hashlib.sha256(np.asarray(result.x_adv).tobytes()).hexdigest()}))
"""


def _child(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS",
                                                               threads.THREADS_VARIABLE)}
    done = subprocess.run([sys.executable, "-c", _CHILD], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sibling_lists() -> int:
    lists = {(_SYSFS / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
             for cpu in os.sched_getaffinity(0)}
    return len(lists)


def _fake_cpu(root: Path, cpu: int, package: int, core: int) -> None:
    topology = root / f"cpu{cpu}" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text(f"{package}\n")
    (topology / "core_id").write_text(f"{core}\n")


def test_hyperthreads_of_one_core_count_once(tmp_path):
    # Two packages of two cores, each core with two hyperthreads: CPUs 0-3 are the first threads, 4-7 the second.
    for cpu in range(8):
        _fake_cpu(tmp_path, cpu, package=(cpu % 4) // 2, core=cpu % 2)
    assert threads.physical_cores(set(range(8)), sysfs=tmp_path) == 4
    assert threads.physical_cores({0, 4}, sysfs=tmp_path) == 1  # one core's two hyperthreads
    assert threads.physical_cores({0, 1, 2}, sysfs=tmp_path) == 3


def test_a_cpu_without_topology_is_a_core_of_its_own(tmp_path):
    _fake_cpu(tmp_path, 0, package=0, core=0)
    assert threads.physical_cores({0, 1, 2}, sysfs=tmp_path) == 3


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not _SYSFS.exists(), reason="Linux sysfs topology")
def test_this_host_counts_as_sysfs_sibling_lists_say():
    assert threads.physical_cores() == _sibling_lists()


def test_import_sets_one_thread_per_core_and_keeps_the_numbers():
    tuned = _child()
    mxnet_default = _child(**{threads.THREADS_VARIABLE: "mxnet"})
    one = _child(OMP_NUM_THREADS="1")
    assert tuned["variable"] == str(_sibling_lists())
    assert mxnet_default["variable"] is None and one["variable"] is None  # a user's choice, or MXNet's, is kept
    assert tuned["digest"] == mxnet_default["digest"] == one["digest"]
    if _sibling_lists() > max(1, (os.cpu_count() or 1) // 2):  # MXNet alone would use fewer: OpenMP starts more
        assert tuned["tasks"] > mxnet_default["tasks"]


def test_an_unknown_setting_is_warned_about(caplog, monkeypatch):
    monkeypatch.setenv(threads.THREADS_VARIABLE, "all")
    with caplog.at_level("WARNING", logger="gluon_robust.threads"):
        assert threads._enabled()
    assert "GLUON_ROBUST_THREADS='all' is not 'cores' or 'mxnet'" in caplog.text


def test_child_processes_get_mxnets_default_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(threads, "_applied", {"MXNET_OMP_MAX_THREADS": "2"})
    assert "MXNET_OMP_MAX_THREADS" not in threads.child_environment({"MXNET_OMP_MAX_THREADS": "2", "PATH": "/bin"})
    assert threads.child_environment({"MXNET_OMP_MAX_THREADS": "4"}) == {"MXNET_OMP_MAX_THREADS": "4"}
    monkeypatch.setattr(threads, "_applied", {})
    assert threads.child_environment({"MXNET_OMP_MAX_THREADS": "2"}) == {"MXNET_OMP_MAX_THREADS": "2"}

"""glibc allocator settings (``gluon_robust.allocator``): MXNet's large arrays reused, not re-faulted, same numbers.

Each case runs a fresh interpreter, because the settings only take effect
before MXNet's worker threads choose their arenas. The oracle for "reused" is
the kernel's count of minor page faults (``ru_minflt``): a freshly mapped
36 MB activation costs 9,216 of them on first touch.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

#: Six forward and input-backward passes of two 3x3 convolutions over a 36 MB activation (above glibc's largest mmap
#: threshold, 32 MB); the page faults of the last five are counted, the last input gradient's bytes hashed.
_CHILD = r"""
import hashlib, json, resource
import gluon_robust
from gluon_robust.allocator import tune_allocator
import mxnet as mx
mx.random.seed(0)
x = mx.nd.random.uniform(shape=(4, 16, 384, 384))
w = mx.nd.random.normal(shape=(16, 16, 3, 3))
x.attach_grad()
def step():
    with mx.autograd.record(train_mode=False):
        h = mx.nd.Convolution(x, w, no_bias=True, kernel=(3, 3), pad=(1, 1), num_filter=16)
        loss = (mx.nd.Convolution(h.relu(), w, no_bias=True, kernel=(3, 3), pad=(1, 1), num_filter=16) ** 2).sum()
    loss.backward()
    return x.grad.asnumpy()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    g = step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": tune_allocator(), "faults": faults, "digest": hashlib.sha256(g.tobytes()).hexdigest(), "mb": x.size * 4 / 2**20}))
"""

#: Pages of one 36 MB activation.
_PAGES = 4 * 16 * 384 * 384 * 4 // 4096


def _child(mode: str) -> dict:
    env = dict(os.environ, GLUON_ROBUST_ALLOCATOR=mode, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def children() -> dict:
    return {mode: _child(mode) for mode in ("tuned", "system")}


def test_importing_gluon_robust_tunes_the_allocator_unless_told_not_to(children):
    assert children["tuned"]["applied"] == {"arena_max": 1, "mmap_max": 0, "trim_threshold": 2**31 - 1}
    assert children["system"]["applied"] == {}


def test_large_arrays_are_reused_instead_of_faulted_in_again(children):
    assert children["system"]["faults"] >= 5 * _PAGES  # glibc's defaults: every step maps its activations afresh
    assert 4 * children["tuned"]["faults"] < children["system"]["faults"]  # tuned: freed activations are reused


def test_the_numbers_do_not_change(children):
    assert children["tuned"]["digest"] == children["system"]["digest"]


def test_an_unknown_setting_is_warned_and_tuned(caplog):
    from gluon_robust import allocator

    os.environ[allocator.ALLOCATOR_VARIABLE] = "jemalloc"
    try:
        assert allocator._enabled()
    finally:
        del os.environ[allocator.ALLOCATOR_VARIABLE]
    assert "GLUON_ROBUST_ALLOCATOR='jemalloc' is not 'tuned' or 'system'" in caplog.text

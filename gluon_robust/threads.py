"""MXNet's OpenMP threads: one per physical core, not half the logical CPUs.

MXNet 1.x sizes its OpenMP pool (its own kernels and MKLDNN's) when its
engine starts. Unless ``OMP_NUM_THREADS`` or ``MXNET_OMP_MAX_THREADS`` is set,
it takes ``omp_get_num_procs()`` and, on x86, halves it, on the assumption
that every core carries two hyperthreads. On a machine whose CPUs are whole
cores (cloud VMs often are: each CPU's ``thread_siblings_list`` is itself),
that leaves half the cores idle. On this 2-core host PGD-10 on ResNet-50 at
224x224 and batch 32 took 264 ms per image-step with MXNet's one thread and
157 ms with two (``benchmarks/results/vs_torch.json``, threads 1 and 2).

:func:`use_physical_cores` counts the physical cores this process may run
on (distinct ``(package, core)`` pairs of ``os.sched_getaffinity``, read
from sysfs; the CPU count where sysfs has no topology) and sets
``MXNET_OMP_MAX_THREADS`` to it. On a machine with hyperthreads that is what
MXNet would pick itself; where the CPUs are whole cores it is all of them. A
user's ``OMP_NUM_THREADS`` or ``MXNET_OMP_MAX_THREADS`` is left alone, and
``GLUON_ROBUST_THREADS=mxnet`` keeps MXNet's own choice.

Like :mod:`gluon_robust.allocator`, it must run before MXNet's engine starts
(its first operator); ``import gluon_robust`` calls it right after the
allocator. The variable it sets is this process's: :func:`child_environment`
removes it from the environment handed to the processes a job starts (the
``launch`` workers and servers), which share the machine's cores and so keep
MXNet's default, as before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Set, Tuple

__all__ = ["THREADS_VARIABLE", "physical_cores", "use_physical_cores", "child_environment"]

logger = logging.getLogger(__name__)

#: The environment variable that keeps MXNet's own thread count (``mxnet``).
THREADS_VARIABLE = "GLUON_ROBUST_THREADS"
#: The variables through which a user (or a job's launcher) sets the thread count; any one of them wins.
_USER_VARIABLES = ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS")
_SET = "MXNET_OMP_MAX_THREADS"

_applied: Dict[str, str] = {}


def physical_cores(cpus: Optional[Set[int]] = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """The number of physical cores among ``cpus`` (default: the CPUs this process may run on).

    Two CPUs are one core when sysfs gives them the same package and core id
    (hyperthreads). A CPU without topology files counts as a core of its own.
    """
    if cpus is None:
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: Set[Tuple[str, str]] = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            package, core = "cpu", str(cpu)
        cores.add((package, core))
    return max(1, len(cores))


def _enabled() -> bool:
    value = os.environ.get(THREADS_VARIABLE, "").strip().lower()
    if value not in ("", "cores", "mxnet"):
        logger.warning("%s=%r is not 'cores' or 'mxnet'; using 'cores'", THREADS_VARIABLE, value)
    return value != "mxnet"


def use_physical_cores() -> Dict[str, str]:
    """Set ``MXNET_OMP_MAX_THREADS`` to :func:`physical_cores` (once); return what was set.

    Returns an empty dict when the user set ``OMP_NUM_THREADS`` or
    ``MXNET_OMP_MAX_THREADS``, or ``GLUON_ROBUST_THREADS=mxnet``.
    """
    if _applied:
        return dict(_applied)
    if not _enabled() or any(name in os.environ for name in _USER_VARIABLES):
        return {}
    _applied[_SET] = os.environ[_SET] = str(physical_cores())
    logger.debug("MXNet OpenMP threads: %s (one per physical core)", _applied[_SET])
    return dict(_applied)


def child_environment(env: Mapping[str, str]) -> Dict[str, str]:
    """``env`` without the thread count :func:`use_physical_cores` set for this process (a user's stays)."""
    out = dict(env)
    if _applied and out.get(_SET) == _applied[_SET]:
        del out[_SET]
    return out

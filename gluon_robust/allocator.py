"""glibc's allocator, set for MXNet's large short-lived arrays.

MXNet 1.x on CPU allocates every NDArray with ``malloc`` and frees it with
``free``: no pool. With glibc's defaults an array above the mmap threshold
(128 KiB, rising at most to 32 MiB), or any array above 64 MiB allocated from
one of MXNet's worker threads (their arenas are 64 MiB heaps), is a fresh
``mmap``. Its pages are zeroed by the kernel on first touch and handed back
with ``munmap`` when it is freed, so each attack step pays those page faults
again. At 224x224 this can be half the time: one forward and input-backward
pass of MobileNetV2 at batch 32 took 490,000 minor page faults and 1.6 s of
system time of its 3.4 s, and 11,000 faults and 1.7 s in all with the
settings below; ResNet-50's took as long either way
(``benchmarks/results/allocator.json``).

:func:`tune_allocator` asks glibc (``mallopt``) to serve every thread from
the main arena (``M_ARENA_MAX = 1``), from the heap rather than ``mmap``
(``M_MMAP_MAX = 0``), and to hand the heap's free top back to the system
only above 2 GiB (``M_TRIM_THRESHOLD``). Freed arrays are then reused by the
next step. The numbers computed do not change, only where the memory comes
from. The cost is memory: the heap keeps freed arrays, fragmented, and the
resident memory stays at the run's peak (MobileNetV2's PGD-10 at batch 32
peaked at 4.8 GiB instead of 3.6); :data:`gluon_robust.memory.BACKWARD_FACTOR`
is calibrated with these settings.

It must run before MXNet runs its first operator, when its worker threads
pick their arenas; ``import gluon_robust`` calls it first thing. Set
``GLUON_ROBUST_ALLOCATOR=system`` to keep glibc's defaults. On a C library
other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from typing import Dict

__all__ = ["ALLOCATOR_VARIABLE", "MALLOPT_SETTINGS", "tune_allocator", "allocator_environment"]

logger = logging.getLogger(__name__)

#: The environment variable that turns the tuning off (``system``).
ALLOCATOR_VARIABLE = "GLUON_ROBUST_ALLOCATOR"

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: The settings: (name, mallopt parameter, value, the environment variable glibc reads for it at start-up).
MALLOPT_SETTINGS = (
    ("arena_max", _M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    ("mmap_max", _M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_"),
    ("trim_threshold", _M_TRIM_THRESHOLD, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),
)

_applied: Dict[str, int] = {}


def _enabled() -> bool:
    value = os.environ.get(ALLOCATOR_VARIABLE, "").strip().lower()
    if value not in ("", "tuned", "system"):
        logger.warning("%s=%r is not 'tuned' or 'system'; using 'tuned'", ALLOCATOR_VARIABLE, value)
    return value != "system"


def tune_allocator() -> Dict[str, int]:
    """Apply :data:`MALLOPT_SETTINGS` to this process's glibc allocator (once); return what was set.

    Returns an empty dict when ``GLUON_ROBUST_ALLOCATOR=system`` or when the C
    library is not glibc. A setting glibc refuses is left out and logged.
    """
    if _applied or not _enabled() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return dict(_applied)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for name, parameter, value, _ in MALLOPT_SETTINGS:
        if mallopt(parameter, value) == 1:
            _applied[name] = value
        else:
            logger.debug("mallopt refused %s=%d", name, value)
    return dict(_applied)



def allocator_environment() -> Dict[str, str]:
    """The same settings as environment variables, for a child process: glibc reads them when it starts.

    A child that runs other Python code before it imports gluon_robust (a Dask
    worker) gets them for every thread this way. Empty when
    ``GLUON_ROBUST_ALLOCATOR=system``.
    """
    if not _enabled():
        return {}
    return {variable: str(value) for _, _, value, variable in MALLOPT_SETTINGS}

"""The environment every golden case runs in (set before MXNet is imported).

MXNet 1.9.1's CPU kernels (oneDNN convolution and BatchNorm backward, OpenMP
reductions) sum in an order that depends on the number of threads, so the
last bits of training updates change with ``OMP_NUM_THREADS``. The goldens
are recorded, and checked, with one thread.
"""

from __future__ import annotations

import os
from typing import Dict

GOLDEN_ENV: Dict[str, str] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def golden_environ() -> Dict[str, str]:
    """The current environment with :data:`GOLDEN_ENV` imposed."""
    return {**os.environ, **GOLDEN_ENV}


def is_golden_environ() -> bool:
    """Whether this process already runs with :data:`GOLDEN_ENV`."""
    return all(os.environ.get(key) == value for key, value in GOLDEN_ENV.items())

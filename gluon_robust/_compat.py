"""Import-time version gate with actionable messages.

gluon_robust targets MXNet 1.x (Gluon's 1.x API) and, through MXNet 1.9.1,
NumPy < 1.24 (MXNet uses the removed ``np.bool`` alias).
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["check_versions"]


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_versions() -> None:
    """Raise ImportError naming the fix when numpy or mxnet cannot work."""
    import numpy

    if _version_tuple(numpy.__version__) >= (1, 24):
        raise ImportError(
            f"gluon_robust needs numpy<1.24 (MXNet 1.9.1 uses np.bool); found numpy {numpy.__version__}. "
            "Run: pip install 'numpy<1.24'"
        )
    try:
        import mxnet
    except ImportError as err:
        raise ImportError(
            "gluon_robust needs MXNet 1.x: pip install 'gluon_robust[cpu]' (mxnet==1.9.1) "
            "or 'gluon_robust[gpu]' (mxnet-cu112==1.9.1)"
        ) from err
    if _version_tuple(mxnet.__version__) >= (2, 0):
        raise ImportError(
            f"gluon_robust needs MXNet 1.x (Gluon 1.x API); found mxnet {mxnet.__version__}. "
            "Run: pip install 'mxnet==1.9.1' (or mxnet-cu112==1.9.1 for CUDA 11.2)"
        )

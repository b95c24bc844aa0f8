"""Small helpers shared by the data modules."""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from gluon_robust.errors import DataError

__all__ = ["InputSize", "is_int", "one_line", "parse_input_size"]

#: An image size: ``n`` for ``n x n``, or ``(height, width)``.
InputSize = Union[int, Tuple[int, int]]


def is_int(value: object) -> bool:
    """Return whether `value` is a Python or NumPy integer (bools excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def one_line(error: BaseException) -> str:
    """Return the last non-empty line of an exception's message.

    MXNet and some NumPy errors carry multi-line messages (with C++ stack
    traces); the last line is the one that says what went wrong.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def parse_input_size(input_size: InputSize) -> tuple[int, int]:
    """Normalise an image size to ``(height, width)``.

    Parameters
    ----------
    input_size : int or (int, int)
        ``n`` for ``n x n``, or ``(height, width)``.

    Returns
    -------
    (int, int)
        ``(height, width)``.

    Raises
    ------
    DataError
        If the size is not a positive integer or a pair of them.
    """
    pair = (input_size, input_size) if is_int(input_size) else input_size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(is_int(dim) and dim >= 1 for dim in pair)):
        raise DataError(f"input size must be a positive integer or a (height, width) pair of "
                        f"positive integers, got {input_size!r}")
    return int(pair[0]), int(pair[1])

"""Parsers of command-line values (``type=`` of argparse flags): fractions, counts, lists, bounds, contexts.

Re-exported by :mod:`gluon_robust.cli`, where the commands import them from. A bad value raises
``argparse.ArgumentTypeError`` with the text given.
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from typing import List, Tuple

__all__ = ["parse_fraction", "parse_count", "parse_floats", "parse_bounds", "parse_ctx"]


def parse_fraction(text: str) -> float:
    """Parse ``0.03``, ``8/255`` or ``1e-2`` into a finite float (NaN and infinities are refused)."""
    try:
        value = float(Fraction(str(text).strip())) if "/" in str(text) else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def parse_count(text: str) -> int:
    """Parse a whole number: ``1000``, ``1_000`` or ``1e3`` (exact integers only; ``1.5`` is refused)."""
    cleaned = str(text).strip().replace("_", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value.denominator != 1:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def parse_floats(text: str) -> Tuple[float, ...]:
    """Parse a comma-separated list of numbers or fractions: ``0.485,0.456,0.406``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected one or more numbers, got {text!r}")
    return tuple(parse_fraction(p) for p in parts)


def parse_bounds(text: str) -> Tuple[float, float]:
    """Parse ``LO,HI``."""
    values = parse_floats(text)
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"bounds must be LO,HI with LO < HI, got {text!r}")
    return values[0], values[1]


def parse_ctx(text: str) -> List["object"]:
    """Parse ``cpu``, ``gpu:0`` or ``gpu:0,gpu:1`` into a list of MXNet contexts."""
    import mxnet as mx

    contexts = []
    for part in str(text).split(","):
        kind, _, index = part.strip().lower().partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise argparse.ArgumentTypeError(f"context must be cpu or gpu:N (comma-separated), got {text!r}")
        contexts.append(mx.cpu(int(index or 0)) if kind == "cpu" else mx.gpu(int(index or 0)))
    return contexts

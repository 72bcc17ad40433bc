"""The type checks every entry point shares: an integer or a real number that is not a bool, finite in float32.

`True` is an int in Python and `np.float64(1e39)` a real number; a spec, config or data
argument takes neither as a number, so every check of them goes through these.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def float32_finite(value) -> bool:
    """Whether a real number stays finite when trained in float32 (ints beyond float64 included)."""
    try:
        return math.isfinite(value) and abs(float(value)) <= FLOAT32_MAX
    except OverflowError:
        return False

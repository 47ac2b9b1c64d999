"""Argument checks shared by the training modules: a clear ValueError naming the argument."""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np


def check_real(
    name: str, value: Any, expected: str, *, low: float, low_ok: bool = False,
    high: Optional[float] = None,
) -> None:
    """Raise ValueError unless ``value`` is a finite real number, ``> low`` (``>= low``
    with ``low_ok``) and ``<= high``."""
    array = np.asarray(value) if isinstance(value, (int, float, np.generic, jax.Array)) else None
    is_real = array is not None and array.ndim == 0 and array.dtype.kind in "iuf"  # not bool
    if (
        not is_real
        or not math.isfinite(array)
        or array < low
        or (array == low and not low_ok)
        or (high is not None and array > high)
    ):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def check_int(name: str, value: Any, *, low: int) -> None:
    """Raise ValueError unless ``value`` is an integer (not a bool) ``>= low``."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


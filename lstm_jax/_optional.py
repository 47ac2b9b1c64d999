"""Optional dependencies: import them where a feature needs them, with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` naming the extra that provides it.

    >>> require("math", "none", "a doctest").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs {module.split('.')[0]!r}, which is not installed; "
            f"install it with: pip install 'lstm_jax[{extra}]'"
        ) from error

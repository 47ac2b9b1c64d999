"""Choosing a function per platform when a call is lowered, not when it is traced."""

from __future__ import annotations

from typing import Callable

import jax

__all__ = ["per_platform"]


def per_platform(args: tuple, branches: dict[str, Callable], default: Callable):
    """``branches[platform](*args)`` for the platform the call is lowered for, else ``default``.

    Platforms are :func:`jax.lax.platform_dependent`'s names (``"cpu"``,
    ``"cuda"``, ``"rocm"``, ``"tpu"``). Every branch is traced; XLA compiles
    only the lowered platform's. Branches that are ``default`` share it, and
    with a single distinct function no conditional is staged at all.
    """
    special = {p: f for p, f in branches.items() if f is not default}
    if not special:
        return default(*args)
    return jax.lax.platform_dependent(*args, default=default, **special)

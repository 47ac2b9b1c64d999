"""Choosing a function per platform when a call is lowered, not when it is traced."""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax._src import core
from jax._src.interpreters import batching, mlir

__all__ = ["per_platform", "platform_only", "lowering_error"]


def per_platform(branches: dict[str, Callable], default: Callable) -> Callable:
    """A function that calls ``branches[platform]`` for the platform the call is lowered for,
    else ``default``, with its arguments.

    Platforms are :func:`jax.lax.platform_dependent`'s names (``"cpu"``,
    ``"cuda"``, ``"rocm"``, ``"tpu"``). Every branch is traced; XLA compiles
    only the lowered platform's. Branches that are ``default`` share it, and
    with a single distinct function that function is returned: no conditional
    is staged, and no frame is added between the caller and the branch.
    """
    special = {p: f for p, f in branches.items() if f is not default}
    if not special:
        return default
    return functools.partial(jax.lax.platform_dependent, default=default, **special)


# ``lax.platform_dependent`` keeps only the branches a module needs, but lowers each
# kept branch for every platform of the module (jax 0.10), and a Pallas call or
# cuDNN's custom call has no CPU lowering: a multi-platform export would fail.
# ``platform_only`` stages ``fn`` as one primitive whose lowering lowers ``fn`` for
# ``platform`` alone; inside a ``platform_dependent`` branch for that platform the
# other platforms never run it.
platform_only_p = core.Primitive("lstm_jax_platform_only")
platform_only_p.multiple_results = True


def platform_only(platform: str, fn: Callable, *args):
    """``fn(*args)``, lowered for ``platform`` only; use it inside that platform's branch.

    Not differentiable by itself (use it inside a ``custom_vjp``'s forward and
    backward); ``vmap`` batches ``fn``.
    """
    flat, in_tree = jax.tree_util.tree_flatten(args)
    closed, out_shape = jax.make_jaxpr(lambda *xs: fn(*jax.tree_util.tree_unflatten(in_tree, xs)),
                                       return_shape=True)(*flat)  # fmt: skip
    outs = platform_only_p.bind(*flat, jaxpr=closed, platform=platform)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)


def _impl(*args, jaxpr, platform):
    del platform
    return jax.jit(core.jaxpr_as_fun(jaxpr))(*args)


def _abstract_eval(*avals, jaxpr, platform):
    del avals, platform
    return jaxpr.out_avals


def _lowering(ctx, *args, jaxpr, platform):
    narrowed = ctx.replace(module_context=ctx.module_context.replace(platforms=(platform,)))
    return mlir.lower_fun(core.jaxpr_as_fun(jaxpr), multiple_results=True)(narrowed, *args)


def _batching(args, dims, *, jaxpr, platform):
    batched = jax.vmap(core.jaxpr_as_fun(jaxpr), in_axes=tuple(dims))
    closed = jax.make_jaxpr(batched)(*args)
    return platform_only_p.bind(*args, jaxpr=closed, platform=platform), (0,) * len(jaxpr.out_avals)


platform_only_p.def_impl(_impl)
platform_only_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(platform_only_p, _lowering)
batching.primitive_batchers[platform_only_p] = _batching


# A size one platform's kernel cannot serve must not stop the others: every
# platform branch is traced, so the error is raised when that branch is lowered.
lowering_error_p = core.Primitive("lstm_jax_lowering_error")
lowering_error_p.multiple_results = True
lowering_error_p.def_abstract_eval(lambda *, message, avals: avals)


def _raise(ctx, *, message, avals):
    del ctx, avals
    raise ValueError(message)


mlir.register_lowering(lowering_error_p, _raise)


def lowering_error(message: str, out_shape):
    """Values shaped like ``out_shape`` (a pytree of ``jax.ShapeDtypeStruct``) whose lowering
    raises ``ValueError(message)``: for a branch of a platform that cannot serve a call."""
    leaves, tree = jax.tree_util.tree_flatten(out_shape)
    avals = tuple(core.ShapedArray(x.shape, x.dtype) for x in leaves)
    return jax.tree_util.tree_unflatten(tree, lowering_error_p.bind(message=message, avals=avals))

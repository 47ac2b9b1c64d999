"""One layer call as a value, and the one record that describes a kernel.

Every kernel is a function ``kernel(call: LayerCall) -> (ys, final_carry)``:
the arguments of :func:`lstm_jax.scan.scan_layer` are gathered once, at the
boundary (:func:`as_layer`, :func:`layer_call`), instead of being restated by
each kernel. :class:`KernelSpec` is one row of the kernel table
(:data:`lstm_jax.kernels.dispatch.KERNELS`).

A :class:`LayerCall` is a pytree whose leaves are its arrays (the cell and
the static options are its structure), so it is itself the operand of a
per-platform conditional (:func:`lstm_jax.kernels.platform.per_platform`):
the kernels are the branches, with no adapter between.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.scan import scan_layer

__all__ = ["Kernel", "KernelSpec", "LayerCall", "LayerOptions", "PER_STEP", "as_layer", "layer_call",
           "scan_kernel"]  # fmt: skip

# the per-step options, which a kernel takes or not (KernelSpec.per_step)
PER_STEP = ("mask", "resets")


class LayerOptions(NamedTuple):
    """The keyword arguments of :func:`lstm_jax.scan.scan_layer`, plus ``compute_dtype``."""

    seq_lengths: Optional[Array] = None  # (B,) int
    reverse: bool = False
    recurrent_mask: Optional[Array] = None  # (B, R)
    unroll: int = 1
    time_major: bool = False
    mask: Optional[Array] = None  # (B, T) bool, (T, B) with time_major
    resets: Optional[Array] = None  # (B, T) bool, (T, B) with time_major
    reset_to: Any = None  # the carry resets restore (initial_carry if None)
    compute_dtype: Any = None  # matmul input dtype of the kernels (scan reads the cell's)


class LayerCall(NamedTuple):
    """One layer, one direction: the arguments of a kernel."""

    cell: Cell
    weights: Any  # the cell's weights for this layer and direction
    xs: Array  # (B, T, I), (T, B, I) with options.time_major
    initial_carry: Any  # the cell's carry, batch axis leading
    options: LayerOptions

    def per_step(self) -> tuple[str, ...]:
        """The per-step options (:data:`PER_STEP`) this call gives."""
        return tuple(name for name in PER_STEP if getattr(self.options, name) is not None)


# the array fields of the options: pytree children; the others are static structure
_ARRAY_OPTIONS = ("seq_lengths", "recurrent_mask", "mask", "resets", "reset_to")
_STATIC_OPTIONS = tuple(name for name in LayerOptions._fields if name not in _ARRAY_OPTIONS)


def _flatten_options(options: LayerOptions) -> tuple[tuple, tuple]:
    arrays = tuple(getattr(options, name) for name in _ARRAY_OPTIONS)
    return arrays, tuple(getattr(options, name) for name in _STATIC_OPTIONS)


def _unflatten_options(static: tuple, arrays) -> LayerOptions:
    return LayerOptions(**dict(zip(_ARRAY_OPTIONS, arrays)), **dict(zip(_STATIC_OPTIONS, static)))


jax.tree_util.register_pytree_node(LayerOptions, _flatten_options, _unflatten_options)
jax.tree_util.register_pytree_node(
    LayerCall,
    lambda call: ((call.weights, call.xs, call.initial_carry, call.options), call.cell),
    lambda cell, children: LayerCall(cell, *children),
)


Kernel = Callable[[LayerCall], tuple[Array, Any]]
WhyNot = Callable[[LayerCall], Optional[str]]


def _accepts_all(call: LayerCall) -> None:
    del call


class KernelSpec(NamedTuple):
    """One row of the kernel table: a cell kind's layer on one backend.

    ``layer`` runs a call that ``why_not`` accepts (it checks nothing).
    ``why_not(call)`` says why the kernel cannot run ``call`` in this process
    (an explicit ``backend=`` raises it), or None. ``auto_why_not`` (default
    ``why_not``) says why ``"auto"`` does not choose it for ``call``.
    ``per_step``: the per-step options (:data:`PER_STEP`) ``layer`` takes.
    ``forward``: a forward of :mod:`lstm_jax.kernels.shared`, where the kernel
    shares the fused backward; ``"auto"`` runs all platforms that have one
    inside one custom VJP. ``explicit``: what ``backend=<backend>`` runs, where
    it is not ``layer`` (cuDNN warns and runs ``scan`` where it cannot run).
    """

    cell: str
    backend: str
    layer: Kernel
    why_not: WhyNot = _accepts_all
    per_step: tuple[str, ...] = ()
    auto_why_not: Optional[WhyNot] = None
    forward: Optional[Callable] = None
    explicit: Optional[Kernel] = None

    def declines(self, call: LayerCall) -> Optional[str]:
        """Why ``"auto"`` does not run this kernel for ``call``, or None."""
        missing = [name for name in call.per_step() if name not in self.per_step]
        if missing:
            return f"it does not implement {missing[0]}"
        return (self.auto_why_not or self.why_not)(call)

    def run(self, call: LayerCall):
        """``backend=<backend>``: the layer, or ``ValueError`` saying why it cannot run ``call``."""
        for name in call.per_step():
            if name not in self.per_step:
                raise ValueError(
                    f"backend={self.backend!r} does not implement {name}; use backend='auto' or "
                    f"'scan', which run calls with {name}."
                )
        reason = self.why_not(call)
        if reason is not None:
            raise ValueError(f"backend={self.backend!r}: {reason}; use backend='auto' or 'scan'.")
        return (self.explicit or self.layer)(call)


def layer_call(cell: Cell, weights: Any, xs: Array, initial_carry: Any, **options) -> LayerCall:
    """The call of a function with :func:`lstm_jax.scan.scan_layer`'s signature (keywords of
    :class:`LayerOptions`; another keyword raises ``TypeError``)."""
    return LayerCall(cell, weights, xs, initial_carry, LayerOptions(**options))


def as_layer(kernel: Kernel, compute_dtype: Any = None) -> Callable:
    """``kernel`` as a function with :func:`lstm_jax.scan.scan_layer`'s signature."""

    def layer(cell, weights, xs, initial_carry, **options):
        options.setdefault("compute_dtype", compute_dtype)
        return kernel(layer_call(cell, weights, xs, initial_carry, **options))

    layer.kernel = kernel
    return layer


def scan_kernel(call: LayerCall):
    """:func:`lstm_jax.scan.scan_layer` (the cell carries its compute dtype)."""
    options = call.options._asdict()
    del options["compute_dtype"]
    return scan_layer(call.cell, call.weights, call.xs, call.initial_carry, **options)

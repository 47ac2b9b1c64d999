"""lstm_jax itself: one peer per registered backend that implements "lstm"."""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional

import jax
import jax.numpy as jnp

import lstm_jax as lj
from benchmarks.peers.base import JaxPeer, Unsupported, compute_dtype, platform, split_inputs

# Backends that only make sense on an accelerator when the registry says nothing
# about platforms (Pallas would run in the slow interpret mode on CPU).
_GPU_ONLY_BACKENDS = ("cudnn", "pallas", "triton", "mosaic", "mosaic_gpu")


class LstmJaxPeer(JaxPeer):
    """``lstm_jax.lstm`` (``lstm_jax.gru`` in GRU cases) with one registered backend
    (``lstm_jax.kernels.BACKENDS``), with ``resets=`` in reset cases."""

    cells = ("lstm", "gru")
    handles_resets = True

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"lstm_jax[{backend}]"
        self.description = f"lstm_jax.lstm(..., backend={backend!r})"

    def unavailable(self) -> Optional[str]:
        from lstm_jax import kernels

        platforms = getattr(kernels, "BACKEND_PLATFORMS", None)
        if isinstance(platforms, dict) and self.backend in platforms:
            if platform() not in platforms[self.backend]:
                return f"backend runs on {', '.join(platforms[self.backend])} only"
        elif self.backend in _GPU_ONLY_BACKENDS and platform() == "cpu":
            return "GPU-only backend, skipped on CPU"
        if self.backend == "scan":  # the reference: runs everywhere
            return None
        try:  # a tiny forward and backward pass: does it run here at all?
            params = lj.init_lstm(jax.random.key(0), 2, 3)
            xs = jnp.ones((2, 4, 2), jnp.float32)
            jax.block_until_ready(
                jax.jit(jax.grad(lambda p: jnp.sum(lj.lstm(p, xs, backend=self.backend)[0])))(params)
            )
        except Exception as error:  # report, never crash the suite
            return f"fails on {platform()}: {type(error).__name__}: {str(error)[:200]}"
        return None

    @contextlib.contextmanager
    def trace_guard(self):
        """A backend that warns it falls back (e.g. "cudnn" off GPU or in bf16) would be
        timed under a wrong name, and one that declines the case (its kernel table
        reason, e.g. bfloat16 without AVX512_BF16) is no error of the suite: report
        either as unsupported."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            try:
                yield
            except ValueError as error:
                if str(error).startswith(f"backend={self.backend!r}:"):
                    raise Unsupported(str(error)[:200]) from error
                raise
        fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        if fallbacks:
            raise Unsupported(f"backend {self.backend!r}: {str(fallbacks[0].message)[:200]}")
        for w in caught:  # pass the other warnings on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def unsupported(self, config):
        from lstm_jax import kernels

        kinds = kernels.BACKENDS.get(self.backend, ("lstm", "gru"))  # "auto" runs every cell
        if config.cell not in kinds:
            return f"backend {self.backend!r} has no {config.cell.upper()}"
        return super().unsupported(config)

    def convert(self, params, config):
        return params

    def apply(self, peer_params, x, config):
        xs, resets = split_inputs(x)
        network = lj.gru if config.cell == "gru" else lj.lstm
        return network(peer_params, xs, resets=resets, compute_dtype=compute_dtype(config),
                       backend=self.backend)[0]  # fmt: skip

    def to_reference(self, peer_tree, config):
        return peer_tree

"""What every peer shares: the interface (:class:`Peer`, :class:`Prepared`),
the common constants and helpers, and :class:`JaxPeer`, the compiled training
and inference step of every JAX peer.

JAX training steps are ``jax.jit`` with the parameters and optimizer state
donated; compile time is ``lower(...).compile()`` timed apart, and memory is
``compiled.memory_analysis().temp_size_in_bytes``. Float32 cases are traced
under ``jax.default_matmul_precision("float32")``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from benchmarks.grid import Config

LEARNING_RATE = 1e-3
BASELINE = "flax_linen_optimized"  # speed-ups are relative to this peer (LSTM cases)
BASELINES = {"lstm": BASELINE, "gru": "flax_linen_gru"}  # cell -> the baseline peer
REFERENCE = "lstm_jax[scan]"  # every peer is checked against this function


class WithResets(NamedTuple):
    """A case's input when it has resets (``Config.reset_rate`` > 0); a plain array otherwise."""

    xs: Any  # (B, T, I) float32
    resets: Any  # (B, T) bool: reset the carry to zeros before step t


def split_inputs(x) -> tuple[Any, Any]:
    """``(xs, resets)`` of a case's input; ``resets`` is None without resets."""
    return (x.xs, x.resets) if isinstance(x, WithResets) else (x, None)


def platform() -> str:
    return jax.devices()[0].platform


def compute_dtype(config: Config):
    return None if config.dtype == "float32" else jnp.dtype(config.dtype)


def precision_scope(config: Config):
    """True float32 matmuls for float32 cases (no TF32 on GPU); default for bf16."""
    if config.dtype == "float32":
        return jax.default_matmul_precision("float32")
    return jax.default_matmul_precision("default")


def mse(ys, target):
    return jnp.mean(jnp.square(ys.astype(jnp.float32) - target))


class Unsupported(Exception):
    """Raised while tracing when a peer cannot run a case as labelled (e.g. a
    backend that would silently fall back to another implementation)."""


@dataclasses.dataclass
class Prepared:
    """One peer compiled for one case. ``step()`` runs one step and waits for it.

    For ``train`` a step returns the loss *before* its update (so the first
    step's loss checks the forward pass at full size); for ``infer`` it returns
    the outputs ``(B, T, D*H)``.
    """

    step: Callable[[], Any]
    compile_s: Optional[float]
    memory_bytes: Optional[int]
    memory_kind: str
    measure_memory: Optional[Callable[[], Optional[int]]] = None
    # an extra untimed step after the first: PyTorch builds the Adam state and
    # oneDNN primitives lazily in its first step; a compiled JAX step is warm
    # after its first call
    extra_warmup: bool = False


class Peer:
    """Interface. Subclasses set ``name`` and ``description``, and ``cells`` and
    ``handles_resets`` when they run more than plain LSTM cases."""

    name: str = ""
    description: str = ""
    cells: tuple[str, ...] = ("lstm",)
    handles_resets: bool = False

    def unavailable(self) -> Optional[str]:
        """Why this peer cannot run here (missing package, wrong platform), or None."""
        return None

    def unsupported(self, config: Config) -> Optional[str]:
        """Why this peer cannot run ``config`` (e.g. bf16 on cuDNN-JAX), or None."""
        if config.cell not in self.cells:
            return f"no {config.cell.upper()} in this peer"
        if config.reset_rate and not self.handles_resets:
            return "no per-step resets in this peer"
        return None

    def reference_outputs_and_grads(self, params, x, target, config: Config):
        """``(ys, loss, grads)`` as numpy; ``grads`` is an :class:`lstm_jax.LSTMParams`
        (:class:`lstm_jax.GRUParams` for GRU cases)."""
        raise NotImplementedError

    def prepare(self, params, x, target, config: Config, workload: str) -> Prepared:
        raise NotImplementedError


def _package_missing(*modules: str) -> Optional[str]:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"package {module!r} is not installed"
    return None


def _np_tree(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def _copy_tree(tree):
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def _temp_bytes(compiled) -> Optional[int]:
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


class JaxPeer(Peer):
    """A JAX peer: subclasses give ``convert``, ``apply`` and ``to_reference``."""

    def convert(self, params: lj.LSTMParams, config: Config) -> Any:
        raise NotImplementedError

    def apply(self, peer_params: Any, x, config: Config):
        """``(B, T, I) -> (B, T, D*H)`` outputs; ``x`` is :class:`WithResets` in reset cases."""
        raise NotImplementedError

    def to_reference(self, peer_tree: Any, config: Config) -> lj.LSTMParams:
        raise NotImplementedError

    def loss(self, peer_params, x, target, config: Config):
        return mse(self.apply(peer_params, x, config), target)

    def trace_guard(self):
        """Context around tracing; subclasses may raise :class:`Unsupported`."""
        return contextlib.nullcontext()

    def reference_outputs_and_grads(self, params, x, target, config: Config):
        peer_params = self.convert(params, config)

        def loss_and_outputs(peer_params, x, target):
            ys = self.apply(peer_params, x, config)
            return mse(ys, target), ys

        with precision_scope(config), self.trace_guard():
            (loss, ys), grads = jax.jit(jax.value_and_grad(loss_and_outputs, has_aux=True))(
                peer_params, x, target
            )
        return np.asarray(ys, np.float32), float(loss), _np_tree(self.to_reference(grads, config))

    def prepare(self, params, x, target, config: Config, workload: str) -> Prepared:
        import optax

        peer_params = _copy_tree(self.convert(params, config))
        if workload == "infer":
            fn = jax.jit(functools.partial(self.apply, config=config))
            args = (peer_params, x)
        else:
            optimizer = optax.adam(LEARNING_RATE)

            def train_step(peer_params, opt_state, x, target):
                loss, grads = jax.value_and_grad(functools.partial(self.loss, config=config))(
                    peer_params, x, target
                )
                updates, opt_state = optimizer.update(grads, opt_state, peer_params)
                return optax.apply_updates(peer_params, updates), opt_state, loss

            fn = jax.jit(train_step, donate_argnums=(0, 1))
            args = (peer_params, optimizer.init(peer_params), x, target)
        start = time.perf_counter()
        with precision_scope(config), self.trace_guard():
            compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start

        if workload == "infer":

            def step():
                return jax.block_until_ready(compiled(*args))

        else:
            state = list(args[:2])

            def step():
                new_params, new_opt_state, loss = jax.block_until_ready(
                    compiled(state[0], state[1], x, target)
                )
                state[:] = [new_params, new_opt_state]
                return loss

        return Prepared(step, compile_s, _temp_bytes(compiled), "xla_temp_bytes")

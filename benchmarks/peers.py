"""The implementations under test ("peers"), each behind one small interface.

Every peer is built from the same :class:`lstm_jax.LSTMParams` (through
``lstm_jax.to_flax``/``to_torch`` where a converter exists, else a mapping
here), runs the same function (a stacked, optionally bidirectional LSTM with
zero initial state, outputs ``(B, T, D*H)``), the same loss (mean squared error
of the outputs against a fixed target, in float32) and the same optimizer
(Adam, ``LEARNING_RATE``, default betas and eps: ``optax.adam`` for the JAX
peers, ``torch.optim.Adam`` for PyTorch). ``to_reference`` maps a peer's
parameters (or gradients) back to our layout so the runner can check them.

JAX training steps are ``jax.jit`` with the parameters and optimizer state
donated; compile time is ``lower(...).compile()`` timed apart, and memory is
``compiled.memory_analysis().temp_size_in_bytes``. Float32 cases are traced
under ``jax.default_matmul_precision("float32")`` and PyTorch runs with TF32
off, so on GPU every peer computes true float32 matmuls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import sys
import time
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from benchmarks.grid import Config
from benchmarks.machine import num_cores

__all__ = [
    "LEARNING_RATE",
    "Prepared",
    "Peer",
    "JaxPeer",
    "LstmJaxPeer",
    "FlaxLinenPeer",
    "FlaxNnxPeer",
    "EquinoxPeer",
    "TorchPeer",
    "JaxCudnnPeer",
    "Unsupported",
    "BASELINE",
    "REFERENCE",
    "all_peers",
    "select_peers",
]

LEARNING_RATE = 1e-3
BASELINE = "flax_linen_optimized"  # speed-ups are relative to this peer
REFERENCE = "lstm_jax[scan]"  # every peer is checked against this function
# Backends that only make sense on an accelerator when the registry says nothing
# about platforms (Pallas would run in the slow interpret mode on CPU).
_GPU_ONLY_BACKENDS = ("cudnn", "pallas", "triton", "mosaic", "mosaic_gpu")


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
    """Interface. Subclasses set ``name`` and ``description``."""

    name: str = ""
    description: str = ""

    def unavailable(self) -> Optional[str]:
        """Why this peer cannot run here (missing package, wrong platform), or None."""
        return None

    def unsupported(self, config: Config) -> Optional[str]:
        """Why this peer cannot run ``config`` (e.g. bf16 on cuDNN-JAX), or None."""
        del config
        return None

    def reference_outputs_and_grads(self, params, x, target, config: Config):
        """``(ys, loss, grads)`` as numpy; ``grads`` is an :class:`lstm_jax.LSTMParams`."""
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
        """``(B, T, I) -> (B, T, D*H)`` outputs."""
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


# ------------------------------------------------------------------ lstm_jax


class LstmJaxPeer(JaxPeer):
    """``lstm_jax.lstm`` with one registered backend (``lstm_jax.kernels.BACKENDS``)."""

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
        timed under a wrong name: report the case unsupported instead."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            yield
        fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        if fallbacks:
            raise Unsupported(f"backend {self.backend!r}: {str(fallbacks[0].message)[:200]}")
        for w in caught:  # pass the other warnings on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def convert(self, params, config):
        return params

    def apply(self, peer_params, x, config):
        return lj.lstm(peer_params, x, compute_dtype=compute_dtype(config), backend=self.backend)[0]

    def to_reference(self, peer_tree, config):
        return peer_tree


# ---------------------------------------------------------------- Flax linen


class FlaxLinenPeer(JaxPeer):
    """``flax.linen.RNN(OptimizedLSTMCell | LSTMCell)``, one module per layer and direction.

    The reverse direction is ``nn.RNN(..., reverse=True, keep_order=True)``
    (what ``nn.Bidirectional`` builds); layers are stacked in a Python loop.
    Weights come from ``lstm_jax.to_flax``; bf16 is the cell's ``dtype``.
    """

    def __init__(self, cell: str):
        self.cell = cell
        self.name = {"optimized": "flax_linen_optimized", "lstm": "flax_linen_lstmcell"}[cell]
        self.description = {
            "optimized": "flax.linen.RNN(OptimizedLSTMCell)",
            "lstm": "flax.linen.RNN(LSTMCell)",
        }[cell]

    def unavailable(self):
        return _package_missing("flax")

    @functools.lru_cache(maxsize=None)
    def _modules(self, config: Config):
        import flax.linen as nn

        cell_type = nn.OptimizedLSTMCell if self.cell == "optimized" else nn.LSTMCell
        return [
            [
                nn.RNN(cell_type(config.hidden, dtype=compute_dtype(config)), reverse=d == 1,
                       keep_order=True)
                for d in range(config.directions)
            ]
            for _ in range(config.layers)
        ]  # fmt: skip

    def convert(self, params, config):
        return [
            [{"params": {"cell": jax.tree_util.tree_map(jnp.asarray, lj.to_flax(w))}} for w in layer]
            for layer in params.layers
        ]

    def apply(self, peer_params, x, config):
        for modules, layer_params in zip(self._modules(config), peer_params):
            outs = [m.apply(p, x) for m, p in zip(modules, layer_params)]
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        return lj.LSTMParams(
            tuple(tuple(lj.from_flax(_np_tree(p)) for p in layer) for layer in peer_tree)
        )


# ------------------------------------------------------------------ Flax NNX


class FlaxNnxPeer(JaxPeer):
    """``flax.nnx.RNN(OptimizedLSTMCell | LSTMCell)`` used functionally.

    Each layer-direction module is ``nnx.split`` into (graphdef, params); the
    params are a pure dict set from ours (NNX has its own key names: the
    optimized cell holds ``dense_i``/``dense_h`` with all four gates side by
    side, the plain cell ``ii, if_, ig, io, hi, ...``) and the module is
    ``nnx.merge``-d inside the jitted function: the usual NNX + ``jax.jit``
    pattern, so the same Optax update applies to the param dict.
    """

    def __init__(self, cell: str):
        self.cell = cell
        self.name = {"optimized": "flax_nnx_optimized", "lstm": "flax_nnx_lstmcell"}[cell]
        self.description = {
            "optimized": "flax.nnx.RNN(OptimizedLSTMCell)",
            "lstm": "flax.nnx.RNN(LSTMCell)",
        }[cell]

    def unavailable(self):
        missing = _package_missing("flax")
        if missing:
            return missing
        try:
            from flax import nnx  # noqa: F401
        except ImportError as error:
            return f"flax.nnx cannot be imported: {error}"
        return None

    @functools.lru_cache(maxsize=None)
    def _modules(self, config: Config):
        from flax import nnx

        cell_type = nnx.OptimizedLSTMCell if self.cell == "optimized" else nnx.LSTMCell
        layers = []
        for layer in range(config.layers):
            in_features = config.input if layer == 0 else config.hidden * config.directions
            row = []
            for d in range(config.directions):
                cell = cell_type(in_features, config.hidden, dtype=compute_dtype(config),
                                 rngs=nnx.Rngs(0))  # fmt: skip
                rnn = nnx.RNN(cell, reverse=d == 1, keep_order=True, rngs=False)
                row.append(nnx.split(rnn, nnx.Param, ...))
            layers.append(row)
        return layers

    def _pure(self, w: lj.LSTMWeights) -> dict:
        if self.cell == "optimized":
            cell = {
                "dense_i": {"kernel": w.w_ih},
                "dense_h": {"kernel": w.w_hh, "bias": w.b},
            }
        else:
            cell = {
                ("if_" if k == "if" else k): jax.tree_util.tree_map(jnp.asarray, v)
                for k, v in lj.to_flax(w).items()
            }
        return {"cell": jax.tree_util.tree_map(jnp.asarray, cell)}

    def convert(self, params, config):
        return [[self._pure(w) for w in layer] for layer in params.layers]

    def apply(self, peer_params, x, config):
        from flax import nnx

        batch = x.shape[0]
        for modules, layer_params in zip(self._modules(config), peer_params):
            outs = []
            for (graphdef, param_state, rest), pure in zip(modules, layer_params):
                state = jax.tree_util.tree_map(lambda a: a, param_state)
                nnx.replace_by_pure_dict(state, pure)
                rnn = nnx.merge(graphdef, state, rest)
                zeros = jnp.zeros((batch, config.hidden), jnp.float32)
                outs.append(rnn(x, initial_carry=(zeros, zeros)))  # carry is (c, h)
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        def weights(pure):
            cell = _np_tree(pure["cell"])
            if self.cell == "optimized":
                return lj.LSTMWeights(
                    jnp.asarray(cell["dense_i"]["kernel"]),
                    jnp.asarray(cell["dense_h"]["kernel"]),
                    jnp.asarray(cell["dense_h"]["bias"]),
                )
            return lj.from_flax({("if" if k == "if_" else k): v for k, v in cell.items()})

        return lj.LSTMParams(tuple(tuple(weights(p) for p in layer) for layer in peer_tree))


# ------------------------------------------------------------------ Equinox


class EquinoxPeer(JaxPeer):
    """``equinox.nn.LSTMCell`` (one example), ``jax.vmap`` over batch, ``lax.scan`` over time.

    Equinox stores ``weight_ih (4H, I)``, ``weight_hh (4H, H)`` and one bias,
    gates i, f, g, o: ours transposed. For bf16 the cell's arrays and the
    inputs are cast to bfloat16 inside the step (float32 master params).
    """

    name = "equinox"
    description = "equinox.nn.LSTMCell + vmap + lax.scan"

    def unavailable(self):
        return _package_missing("equinox")

    def convert(self, params, config):
        import equinox as eqx

        layers = []
        for layer in params.layers:
            row = []
            for w in layer:
                cell = eqx.nn.LSTMCell(w.w_ih.shape[0], config.hidden, key=jax.random.key(0))
                cell = eqx.tree_at(
                    lambda c: (c.weight_ih, c.weight_hh, c.bias),
                    cell,
                    (jnp.asarray(w.w_ih).T, jnp.asarray(w.w_hh).T, jnp.asarray(w.b)),
                )
                row.append(cell)
            layers.append(row)
        return layers

    def apply(self, peer_params, x, config):
        dtype = compute_dtype(config) or jnp.float32
        batch = x.shape[0]
        for layer in peer_params:
            outs = []
            for d, cell in enumerate(layer):
                cell = jax.tree_util.tree_map(lambda a: a.astype(dtype), cell)
                xs = jnp.swapaxes(x.astype(dtype), 0, 1)  # [T, B, I]
                if d == 1:
                    xs = xs[::-1]
                zeros = jnp.zeros((batch, config.hidden), dtype)

                def body(carry, x_t, cell=cell):
                    carry = jax.vmap(cell)(x_t, carry)
                    return carry, carry[0]

                _, hs = jax.lax.scan(body, (zeros, zeros), xs)  # [T, B, H]
                if d == 1:
                    hs = hs[::-1]
                outs.append(jnp.swapaxes(hs, 0, 1))
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        return lj.LSTMParams(
            tuple(
                tuple(
                    lj.LSTMWeights(
                        jnp.asarray(np.asarray(c.weight_ih, np.float32).T),
                        jnp.asarray(np.asarray(c.weight_hh, np.float32).T),
                        jnp.asarray(np.asarray(c.bias, np.float32)),
                    )
                    for c in layer
                )
                for layer in peer_tree
            )
        )


# --------------------------------------------------------------- cuDNN (JAX)


def pack_cudnn_weights(params: lj.LSTMParams) -> jnp.ndarray:
    """Our params as ``jax.experimental.rnn``'s flat cuDNN vector.

    Layout (its module docstring): every pseudo-layer's ``W_ih (4H, in)`` and
    ``W_hh (4H, H)`` in order (layer-major, forward before reverse), then every
    pseudo-layer's ``b_ih, b_hh``. Our summed bias goes to ``b_ih``.
    """
    weights = [w for layer in params.layers for w in layer]
    flat = [jnp.ravel(jnp.asarray(m).T) for w in weights for m in (w.w_ih, w.w_hh)]
    flat += [jnp.ravel(b) for w in weights for b in (w.b, jnp.zeros_like(w.b))]
    return jnp.concatenate(flat)


def unpack_cudnn_weights(flat, config: Config) -> lj.LSTMParams:
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
        jnp.asarray(flat), config.input, config.hidden, config.layers, config.bidirectional
    )
    d = config.directions
    return lj.LSTMParams(
        tuple(
            tuple(
                lj.LSTMWeights(w_ih[k].T, w_hh[k].T, b_ih[k] + b_hh[k])
                for k in range(layer * d, layer * d + d)
            )
            for layer in range(config.layers)
        )
    )


class JaxCudnnPeer(JaxPeer):
    """``jax.experimental.rnn.lstm``: JAX's own cuDNN binding (GPU, float32 only)."""

    name = "jax_cudnn"
    description = "jax.experimental.rnn.lstm (cuDNN)"

    def unavailable(self):
        if platform() != "gpu":
            return "cuDNN only: needs a GPU"
        try:
            from jax.experimental import rnn  # noqa: F401
        except ImportError as error:
            return f"jax.experimental.rnn cannot be imported: {error}"
        return None

    def unsupported(self, config):
        if config.dtype != "float32":
            return "jax.experimental.rnn supports float32 only"
        return None

    def convert(self, params, config):
        return pack_cudnn_weights(params)

    def apply(self, peer_params, x, config):
        from jax.experimental import rnn

        batch = x.shape[0]
        states = config.layers * config.directions
        zeros = jnp.zeros((states, batch, config.hidden), jnp.float32)
        ys, _, _ = rnn.lstm(
            x, zeros, zeros, peer_params,
            seq_lengths=jnp.full((batch,), x.shape[1], jnp.int32),
            input_size=config.input, hidden_size=config.hidden, num_layers=config.layers,
            dropout=0.0, bidirectional=config.bidirectional, precision="highest",
        )  # fmt: skip
        return ys

    def to_reference(self, peer_tree, config):
        return unpack_cudnn_weights(peer_tree, config)


# ------------------------------------------------------------------ PyTorch


class TorchPeer(Peer):
    """``torch.nn.LSTM(batch_first=True)``: cuDNN on GPU, the native kernels on CPU.

    Weights from ``lstm_jax.to_torch``. Threads: ``torch.set_num_threads`` to
    the cores of this process, which is what XLA's CPU client uses. bf16 is
    ``torch.autocast(dtype=torch.bfloat16)`` with float32 master weights.
    Inference runs under ``torch.inference_mode()``. Memory: on GPU the peak of
    ``torch.cuda.max_memory_allocated`` above what was allocated before the
    step; on CPU the peak of the CPU allocator's total above its level before
    one step, from ``torch.profiler``'s allocation events (params and optimizer
    state that existed before the step excluded, like XLA's temp bytes).
    """

    name = "torch"
    description = "torch.nn.LSTM"

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads  # None: the cores of this process, as XLA uses

    def unavailable(self):
        missing = _package_missing("torch")
        if missing or platform() == "cpu":
            return missing
        import torch

        if platform() != "gpu" or not torch.cuda.is_available():  # not host CPU vs device
            return f"torch {torch.__version__} has no CUDA device here (platform {platform()})"
        return None

    def _device(self):
        import torch

        return "cuda" if platform() == "gpu" and torch.cuda.is_available() else "cpu"

    def _setup(self, params, config):
        import torch

        torch.set_num_threads(self.threads or num_cores())
        if config.dtype == "float32":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        module = torch.nn.LSTM(
            config.input, config.hidden, config.layers,
            batch_first=True, bidirectional=config.bidirectional,
        )  # fmt: skip
        state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in lj.to_torch(params).items()}
        module.load_state_dict(state)
        return module.to(self._device())

    def _autocast(self, config):
        import contextlib

        import torch

        if config.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self._device(), dtype=getattr(torch, config.dtype))

    def _tensor(self, a):
        import torch

        return torch.from_numpy(np.array(a, np.float32)).to(self._device())

    def reference_outputs_and_grads(self, params, x, target, config):
        module = self._setup(params, config)
        xt, yt = self._tensor(x), self._tensor(target)
        with self._autocast(config):
            ys, _ = module(xt)
        loss = ((ys.float() - yt) ** 2).mean()
        loss.backward()
        grads = {}
        for name, p in module.named_parameters():
            g = p.grad.detach().float().cpu().numpy()
            # our bias is b_ih + b_hh, and its gradient that of either one
            grads[name] = np.zeros_like(g) if name.startswith("bias_hh") else g
        return (
            ys.detach().float().cpu().numpy(),
            float(loss.item()),
            _np_tree(lj.from_torch(grads)),
        )

    def prepare(self, params, x, target, config, workload):
        import torch

        module = self._setup(params, config)
        xt, yt = self._tensor(x), self._tensor(target)
        cuda = self._device() == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        if workload == "infer":

            def step():
                with torch.inference_mode(), self._autocast(config):
                    ys, _ = module(xt)
                sync()
                return ys

        else:
            optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)

            def step():
                with self._autocast(config):
                    ys, _ = module(xt)
                loss = ((ys.float() - yt) ** 2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
                return loss.detach()

        def measure_memory() -> Optional[int]:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                step()
                return int(torch.cuda.max_memory_allocated() - before)
            return _torch_cpu_peak(step)

        kind = "torch_cuda_peak_bytes" if cuda else "torch_profiler_peak_bytes"
        return Prepared(step, None, None, kind, measure_memory, extra_warmup=True)


@contextlib.contextmanager
def _os_output_silenced():
    """Send file descriptors 1 and 2 to /dev/null: Kineto prints ``USDT ... profiler_start``
    lines from C++ that Python's ``sys.stdout``/``sys.stderr`` cannot catch."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _torch_cpu_peak(step) -> Optional[int]:
    """Peak bytes allocated by PyTorch's CPU allocator during ``step()``, above the
    level before it, from the allocation events of ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with _os_output_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:  # the event tree is semi-private API: report no number rather than a wrong one
        from torch._C._profiler import _EventType

        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                events.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
            stack.extend(node.children)
    except Exception:
        return None
    if not events:
        return None
    events.sort()
    before = events[0][1] - events[0][2]
    return int(max(total for _, total, _ in events) - before)


# ------------------------------------------------------------------ registry


def all_peers(*, torch_threads: Optional[int] = None) -> list[Peer]:
    """Every peer, in table order: each lstm_jax backend that implements "lstm"
    (read from the registry now, so new backends appear), then the others."""
    from lstm_jax import kernels

    # "auto" (the default) first: what a user gets without choosing
    peers: list[Peer] = [LstmJaxPeer("auto")] + [
        LstmJaxPeer(name) for name, kinds in kernels.BACKENDS.items() if "lstm" in kinds
    ]
    peers += [
        FlaxLinenPeer("optimized"),
        FlaxLinenPeer("lstm"),
        FlaxNnxPeer("optimized"),
        FlaxNnxPeer("lstm"),
        EquinoxPeer(),
        TorchPeer(torch_threads),
        JaxCudnnPeer(),
    ]
    return peers


def matches(name: str, patterns) -> bool:
    """``name`` equals one of ``patterns`` or starts with ``pattern + "["`` / ``"_"``."""
    return any(
        name == p or name.startswith(p + "[") or name.startswith(p + "_") for p in patterns
    )


def select_peers(spec: Optional[str], *, torch_threads: Optional[int] = None) -> list[Peer]:
    """Peers named by a comma list (names or prefixes: ``lstm_jax,flax,torch``); all if None."""
    peers = all_peers(torch_threads=torch_threads)
    if not spec:
        return peers
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in patterns if not any(matches(peer.name, [p]) for peer in peers)]
    if unknown:
        raise ValueError(
            f"unknown peer(s) {unknown}; choose from {[p.name for p in peers]} "
            "or a prefix such as 'lstm_jax' or 'flax'."
        )
    return [peer for peer in peers if matches(peer.name, patterns)]

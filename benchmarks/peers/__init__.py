"""The implementations under test ("peers"), each behind one small interface.

Every peer is built from the same :class:`lstm_jax.LSTMParams` (or
``GRUParams``; through ``lstm_jax.to_flax``/``to_torch`` where a converter
exists, else a mapping here), runs the same function (a stacked, optionally
bidirectional LSTM or GRU with zero initial state, and ``resets`` in the RL
case; outputs ``(B, T, D*H)``), the same loss (mean squared error of the
outputs against a fixed target, in float32) and the same optimizer
(Adam, ``LEARNING_RATE``, default betas and eps: ``optax.adam`` for the JAX
peers, ``torch.optim.Adam`` for PyTorch). ``to_reference`` maps a peer's
parameters (or gradients) back to our layout so the runner can check them.

JAX training steps are ``jax.jit`` with the parameters and optimizer state
donated; compile time is ``lower(...).compile()`` timed apart, and memory is
``compiled.memory_analysis().temp_size_in_bytes``. Float32 cases are traced
under ``jax.default_matmul_precision("float32")`` and PyTorch runs with TF32
off, so on GPU every peer computes true float32 matmuls.

Modules: ``base`` (the interface, shared helpers and :class:`JaxPeer`), one
module per peer (``lstm_jax_peer``, ``flax_linen``, ``flax_nnx``,
``equinox_peer``, ``torch_peer``, ``jax_cudnn``) and, here, the registry
(:func:`all_peers`, :func:`select_peers`). Modules are not named after the
packages they wrap, which they would shadow under some import modes.
"""

from __future__ import annotations

from typing import Optional

from benchmarks.peers.base import (
    BASELINE,
    BASELINES,
    LEARNING_RATE,
    REFERENCE,
    JaxPeer,
    Peer,
    Prepared,
    Unsupported,
    WithResets,
    compute_dtype,
    mse,
    platform,
    precision_scope,
    split_inputs,
)
from benchmarks.peers.equinox_peer import EquinoxPeer
from benchmarks.peers.flax_linen import FlaxLinenPeer, gru_grads_from_flax, gru_to_flax
from benchmarks.peers.flax_nnx import FlaxNnxPeer
from benchmarks.peers.jax_cudnn import JaxCudnnPeer, pack_cudnn_weights, unpack_cudnn_weights
from benchmarks.peers.lstm_jax_peer import LstmJaxPeer
from benchmarks.peers.torch_peer import TorchPeer

__all__ = [
    "BASELINE",
    "BASELINES",
    "LEARNING_RATE",
    "REFERENCE",
    "EquinoxPeer",
    "FlaxLinenPeer",
    "FlaxNnxPeer",
    "JaxCudnnPeer",
    "JaxPeer",
    "LstmJaxPeer",
    "Peer",
    "Prepared",
    "TorchPeer",
    "Unsupported",
    "WithResets",
    "all_peers",
    "compute_dtype",
    "gru_grads_from_flax",
    "gru_to_flax",
    "matches",
    "mse",
    "pack_cudnn_weights",
    "platform",
    "precision_scope",
    "select_peers",
    "split_inputs",
    "unpack_cudnn_weights",
]


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
        FlaxLinenPeer("gru"),
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

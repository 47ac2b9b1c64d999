"""Benchmark cases as constants: configurations, workloads and the grids that group them.

Notation: B = batch, T = time steps, I = input features, H = hidden units,
L = layers, D = directions, G = gates per cell (LSTM 4, GRU 3).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = [
    "Config",
    "Case",
    "Grid",
    "TARGETS",
    "RL_CONFIG",
    "gru_target_cases",
    "rl_cases",
    "GRIDS",
    "quick_grid",
    "full_grid",
    "targets_grid",
    "rl_grid",
    "tiny_grid",
    "device_grid",
    "DEVICE_SHAPES",
]

WORKLOADS = ("train", "infer")
DTYPES = ("float32", "bfloat16")
CELLS = {"lstm": 4, "gru": 3}  # cell -> gates


@dataclasses.dataclass(frozen=True)
class Config:
    """One problem size. ``dtype`` is the compute dtype; parameters are always float32.

    ``cell`` is ``"lstm"`` or ``"gru"``. ``reset_rate`` > 0 makes the case an
    RL-style one: each ``(b, t)`` resets the carry before step ``t`` with this
    probability (``resets=`` of ``lj.lstm``; seeded, the same for every peer).
    """

    batch: int
    time: int
    input: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    cell: str = "lstm"
    reset_rate: float = 0.0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {self.cell!r}.")
        if not 0.0 <= self.reset_rate < 1.0:
            raise ValueError(f"reset_rate must be in [0, 1), got {self.reset_rate!r}.")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gates(self) -> int:
        return CELLS[self.cell]

    @property
    def label(self) -> str:
        text = f"B{self.batch} T{self.time} I{self.input} H{self.hidden}"
        if self.cell != "lstm":
            text = f"{self.cell.upper()} {text}"
        if self.reset_rate:
            text += f" resets {self.reset_rate:.0%}"
        if self.layers != 1:
            text += f" L{self.layers}"
        if self.bidirectional:
            text += " bi"
        if self.dtype != "float32":
            text += " bf16"
        return text

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def matmul_flops(self, workload: str) -> int:
        """The matmul FLOPs of one step (what a FLOP peak bounds; gate math not counted).

        Forward: ``2 B T (I_l + H) G H`` per layer and direction (``I_l`` is the
        layer's input width, ``G`` the gates). A training step adds two matmuls of the same size
        per forward one (input gradients and weight gradients): 3x.
        """
        forward = 0
        for layer in range(self.layers):
            width = self.input if layer == 0 else self.directions * self.hidden
            forward += 2 * self.batch * self.time * (width + self.hidden) * self.gates * self.hidden
        forward *= self.directions
        return forward * (3 if workload == "train" else 1)


@dataclasses.dataclass(frozen=True)
class Case:
    """A configuration, a workload, and which peers run it.

    ``peers`` lists peer names or prefixes (``"lstm_jax"`` matches every
    backend); None means every selected peer. ``tags`` group cases for the
    report: ``"targets"`` (the performance targets), ``"sweep"`` (the plots of
    time and memory vs sequence length), ``"grid"``.
    """

    config: Config
    workload: str
    tags: tuple[str, ...] = ("grid",)
    peers: Optional[tuple[str, ...]] = None

    def __post_init__(self):
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}, got {self.workload!r}.")


@dataclasses.dataclass(frozen=True)
class Grid:
    """Cases plus the timing budget: ``repeats`` interleaved rounds, fewer when a
    round is slow (at least ``min_repeats``; rounds stop after ``budget_s``)."""

    name: str
    cases: tuple[Case, ...]
    repeats: int
    min_repeats: int
    budget_s: float


# The performance targets (issue 3): (B, T, I, H), 1 layer, float32, training step.
TARGETS = (
    Config(8, 512, 32, 64),
    Config(64, 128, 128, 256),
    Config(32, 256, 64, 128),
    Config(128, 64, 256, 512),
)

# Peers for the slow cases of --quick: every lstm_jax backend, Flax's optimized
# cell (the baseline) and PyTorch.
CORE_PEERS = ("lstm_jax", "flax_linen_optimized", "torch")


def quick_grid() -> Grid:
    """The four targets (training) for lstm_jax, Flax and PyTorch; every peer on
    the third target (training and inference); a sweep over T at its sizes."""
    t1, t2, t3, t4 = TARGETS
    cases = [
        Case(t1, "train", ("targets",), CORE_PEERS),
        Case(t2, "train", ("targets",), CORE_PEERS),
        Case(t3, "train", ("targets", "sweep")),
        Case(t4, "train", ("targets",), CORE_PEERS),
        Case(t3, "infer", ("targets",)),
    ]
    cases += [
        Case(dataclasses.replace(t3, time=t), "train", ("sweep",), CORE_PEERS) for t in (32, 64, 128)
    ]
    return Grid("quick", tuple(cases), repeats=7, min_repeats=3, budget_s=3.0)


def full_grid() -> Grid:
    """Every peer: the targets (both workloads, and bf16 training), layers x
    directions x dtype at one size, and time and memory vs T up to 4096."""
    cases = [Case(c, w, ("targets",)) for c in TARGETS for w in WORKLOADS]
    cases += [Case(dataclasses.replace(c, dtype="bfloat16"), "train") for c in TARGETS]
    for dtype in DTYPES:
        for layers in (1, 2):
            for bidirectional in (False, True):
                config = Config(32, 128, 64, 128, layers, bidirectional, dtype)
                cases += [Case(config, w) for w in WORKLOADS]
    cases += [
        Case(Config(16, t, 64, 256), "train", ("sweep",))
        for t in (64, 128, 256, 512, 1024, 2048, 4096)
    ]
    return Grid("full", tuple(cases), repeats=15, min_repeats=3, budget_s=30.0)


# issue 21's RL case: many environments, T = H = 128, ~2% episode resets.
RL_CONFIG = Config(256, 128, 32, 128, reset_rate=0.02)
GRU_TARGET_PEERS = ("lstm_jax[auto]", "flax_linen_gru", "torch")


def gru_target_cases() -> list[Case]:
    """The four target shapes as GRUs (float32 training and inference): lstm_jax's
    default backend against Flax ``nn.GRUCell`` and PyTorch ``nn.GRU``."""
    return [Case(dataclasses.replace(c, cell="gru"), w, ("targets",), GRU_TARGET_PEERS)
            for c in TARGETS for w in WORKLOADS]  # fmt: skip


def rl_cases() -> list[Case]:
    """:data:`RL_CONFIG` with and without its resets, both workloads: lstm_jax's
    default against Flax (``nn.RNN`` without resets, the PureJaxRL ``ScannedRNN``
    pattern with them)."""
    peers = ("lstm_jax[auto]", "flax_linen_optimized")
    plain = dataclasses.replace(RL_CONFIG, reset_rate=0.0)
    return [Case(c, w, ("rl",), peers) for c in (plain, RL_CONFIG) for w in WORKLOADS]


def targets_grid() -> Grid:
    """The four targets (float32 training and inference, bfloat16 training) for
    lstm_jax[auto], [native] and [fused], Flax and PyTorch; the same shapes as GRUs;
    the RL case. More rounds than --quick (its few rounds per case leave ~10% noise here)."""
    peers = ("lstm_jax[auto]", "lstm_jax[native]", "lstm_jax[fused]", "flax_linen_optimized",
             "torch")  # fmt: skip
    cases = [Case(c, w, ("targets",), peers) for c in TARGETS for w in WORKLOADS]
    cases += [Case(dataclasses.replace(c, dtype="bfloat16"), "train", ("targets",), peers)
              for c in TARGETS]  # fmt: skip
    cases += gru_target_cases() + rl_cases()
    return Grid("targets", tuple(cases), repeats=25, min_repeats=7, budget_s=25.0)


def rl_grid() -> Grid:
    """Only the RL case (``--rl``): :func:`rl_cases`, with the rounds of --targets."""
    return Grid("rl", tuple(rl_cases()), repeats=25, min_repeats=7, budget_s=25.0)


def tiny_grid() -> Grid:
    """Seconds, for the tests: a two-point sweep and a 2-layer bidirectional forward."""
    cases = [
        Case(Config(2, 4, 3, 4), "train", ("sweep",)),
        Case(Config(2, 8, 3, 4), "train", ("sweep",)),
        Case(Config(2, 8, 3, 4, layers=2, bidirectional=True), "infer"),
    ]
    return Grid("tiny", tuple(cases), repeats=3, min_repeats=2, budget_s=1.0)


# GPU/TPU sizes (B, T, I, H): FlashRNN's setting (B=16, T=1024, H=768), and the
# shapes the Pallas kernels are lowered at in tests/test_accel.py.
DEVICE_SHAPES = (
    Config(16, 1024, 768, 768),
    Config(16, 1024, 256, 256),
    Config(64, 512, 128, 128),
    Config(8, 2048, 512, 768),
)


def device_grid() -> Grid:
    """For a GPU or TPU (``--device``): the accelerator sizes, both workloads,
    every peer (cuDNN through PyTorch and ``jax.experimental.rnn`` where there is
    CUDA); bf16 training at those sizes; the four CPU targets, both workloads;
    2 layers x bidirectional at one size; training time vs T. In that order, so
    that a ``--time-limit`` drops the least telling cases."""
    cases = [Case(c, w, ("targets",)) for c in DEVICE_SHAPES for w in WORKLOADS]
    cases += [Case(dataclasses.replace(c, dtype="bfloat16"), "train") for c in DEVICE_SHAPES]
    cases += [Case(c, w) for c in TARGETS for w in WORKLOADS]
    cases += [Case(Config(32, 256, 256, 256, 2, True), w) for w in WORKLOADS]
    cases += [
        Case(Config(16, t, 256, 256), "train", ("sweep",)) for t in (128, 256, 512, 2048, 4096)
    ]
    return Grid("device", tuple(cases), repeats=15, min_repeats=5, budget_s=30.0)


GRIDS = {
    "quick": quick_grid,
    "full": full_grid,
    "targets": targets_grid,
    "rl": rl_grid,
    "tiny": tiny_grid,
    "device": device_grid,
}

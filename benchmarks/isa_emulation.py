"""``--isa avx2``: run every peer as on a CPU without AVX-512.

Most CPUs people train on have AVX2 and no AVX-512 (AMD Zen 2/3, Intel client
chips). On an AVX-512 machine, ``LSTM_JAX_NATIVE_ISA=avx2`` narrows only our
native kernels; Flax, XLA's parts of every step and PyTorch keep AVX-512, and
the comparison is lopsided. This module narrows all of them, in this process:

* lstm_jax's native kernels: ``LSTM_JAX_NATIVE_ISA``.
* XLA's generated code (fusions): ``--xla_cpu_max_isa`` in ``XLA_FLAGS``.
* XLA's GEMMs, which run in YNNPACK: YNNPACK picks its kernels from a bit mask
  of the CPU's features that it computes once (``ynn::get_supported_arch_flags``,
  a function-local static in jaxlib's ``libjax_common.so``) and offers no
  setting. :func:`narrow_ynnpack` writes the mask before its first use; the
  symbols are found in the library's ELF symbol table.
* PyTorch: ``ONEDNN_MAX_CPU_ISA`` (its LSTM and GRU run in oneDNN),
  ``MKL_ENABLE_INSTRUCTIONS`` (its GEMMs) and ``ATEN_CPU_CAPABILITY`` (its own
  vectorised kernels).

The measured GEMM peak of a run shows that it took: a 2048³ GEMM stays under
the AVX2 FMA peak (``benchmarks/results/cpu-intel-xeon-2c/isa_emulation.md``).
What stays wider: XLA dots that YNNPACK does not take (Eigen), and code that
picks its ISA by other means. It is a stand-in for an AVX2 CPU, not one: the
caches, clock and memory are still this machine's.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import Mapping, MutableMapping, Optional

__all__ = ["ISAS", "environment", "apply_environment", "narrow_ynnpack", "ynnpack_mask", "emulate",
           "active"]

ISAS = ("avx2",)
_CPU_FLAGS = {"avx2": ("avx2", "fma")}
_active: Optional[str] = None

# YNNPACK's arch_flag bits (ynnpack/base/arch.h, x86): sse2 1<<0, ssse3 1<<1, sse41 1<<2,
# avx 1<<3, f16c 1<<4, avx2 1<<5, fma3 1<<6; AVX-512, AVX512-BF16/FP16/VNNI and AMX above.
_YNN_MASKS = {"avx2": (1 << 7) - 1}
_YNN_FLAGS = b"_ZZN3ynn24get_supported_arch_flagsEvE5flags"
_YNN_GUARD = b"_ZGVZN3ynn24get_supported_arch_flagsEvE5flags"
_XLA_ISA = {"avx2": "AVX2"}
_TORCH = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                   "ATEN_CPU_CAPABILITY": "avx2"}}  # fmt: skip


def _check(isa: str) -> None:
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}.")


def environment(isa: str, environ: Mapping[str, str]) -> dict:
    """The variables to set for ``isa``, given the current ``environ``: lstm_jax's,
    XLA's (appended to any ``XLA_FLAGS`` already set) and PyTorch's."""
    _check(isa)
    flags = environ.get("XLA_FLAGS", "")
    xla = f"--xla_cpu_max_isa={_XLA_ISA[isa]}"
    return {
        "LSTM_JAX_NATIVE_ISA": isa,
        "XLA_FLAGS": f"{flags} {xla}".strip() if xla not in flags else flags,
        **_TORCH[isa],
    }


def apply_environment(isa: str, environ: MutableMapping[str, str] = os.environ) -> dict:
    """Set :func:`environment`; before jax's backend, lstm_jax and torch are loaded,
    which read the variables once. Returns what was set."""
    import sys

    loaded = [name for name in ("torch", "lstm_jax") if name in sys.modules]
    if loaded:
        raise RuntimeError(f"--isa must be set before {loaded} are imported; they read it once.")
    values = environment(isa, environ)
    environ.update(values)
    return values


def _symbol_offsets(path: str, names: tuple) -> dict:
    """``{name: st_value}`` for ``names`` in the ELF64 ``.symtab`` of ``path``."""
    import numpy as np

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:5] != b"\x7fELF\x02":
            raise RuntimeError(f"{path} is not a 64-bit ELF file")
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
        if symtab is None:
            raise RuntimeError(f"{path} has no symbol table (stripped)")
        strtab = sections[symtab[6]]
        strings = data[strtab[4]:strtab[4] + strtab[5]]
        symbols = np.frombuffer(data[symtab[4]:symtab[4] + symtab[5]], dtype=np.dtype(
            [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
             ("value", "<u8"), ("size", "<u8")]))  # fmt: skip
        found = {}
        for name in names:
            at = strings.find(b"\0" + name + b"\0")
            hits = symbols["value"][symbols["name"] == at + 1] if at >= 0 else []
            if len(hits) != 1:
                raise RuntimeError(f"symbol {name.decode()} not found once in {path}")
            found[name] = int(hits[0])
        return found


def _load_base(path: str) -> int:
    """Where ``path`` is mapped in this process (its mapping at file offset 0)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{real} is not loaded in this process")


def _ynnpack_statics() -> tuple:
    """YNNPACK's feature mask and its guard variable in this process, as ctypes values."""
    import jax  # noqa: F401  (loads jaxlib's shared library)
    import jaxlib

    path = os.path.join(os.path.dirname(jaxlib.__file__), "libjax_common.so")
    offsets = _symbol_offsets(path, (_YNN_FLAGS, _YNN_GUARD))
    base = _load_base(path)
    return (ctypes.c_uint64.from_address(base + offsets[_YNN_FLAGS]),
            ctypes.c_uint8.from_address(base + offsets[_YNN_GUARD]))  # fmt: skip


def ynnpack_mask() -> Optional[int]:
    """YNNPACK's feature mask in this process, None before its first use."""
    flags, guard = _ynnpack_statics()
    return flags.value if guard.value else None


def narrow_ynnpack(isa: str) -> int:
    """Make YNNPACK (XLA's GEMMs) use only ``isa``'s kernels in this process; returns
    the mask it had (0 before its first use). Call it before the first computation:
    a plan made earlier may keep wider kernels."""
    _check(isa)
    flags, guard = _ynnpack_statics()
    before = flags.value if guard.value else 0
    if before and before & _YNN_MASKS[isa] != _YNN_MASKS[isa]:
        raise RuntimeError(f"this CPU lacks {isa} (YNNPACK's feature mask is {before:#x})")
    # The guard set means "computed": YNNPACK never runs its detection, which would overwrite us.
    flags.value = _YNN_MASKS[isa]
    guard.value = 1
    return before


def active() -> Optional[str]:
    """The instruction set :func:`emulate` narrowed this process to, or None."""
    return _active


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def emulate(isa: str) -> dict:
    """Narrow lstm_jax, XLA and PyTorch to ``isa`` in this process (see the module
    docstring); returns what was done, for the results' record.

    Raises:
      ValueError: ``isa`` is not one of :data:`ISAS`, or this CPU lacks it.
    """
    global _active
    _check(isa)
    missing = set(_CPU_FLAGS[isa]) - _cpu_flags()
    if missing:
        raise ValueError(f"--isa {isa} needs the CPU flags {sorted(missing)}, which this CPU lacks "
                         "(/proc/cpuinfo).")  # fmt: skip
    values = apply_environment(isa)
    before = narrow_ynnpack(isa)
    _active = isa
    return {"isa": isa, "environment": values, "ynnpack_mask": _YNN_MASKS[isa],
            "ynnpack_mask_before": before}  # fmt: skip

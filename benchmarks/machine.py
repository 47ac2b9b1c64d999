"""What the numbers were measured on: machine, versions, date, command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from typing import Optional

import jax

__all__ = [
    "cpu_model", "num_cores", "machine_info", "versions", "machine_slug", "run_info",
    "load_info", "busy", "busy_warning", "flop_per_cycle", "clock", "nominal_peak",
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def num_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _accelerator() -> Optional[str]:
    device = jax.devices()[0]
    return None if device.platform == "cpu" else device.device_kind


def machine_info() -> dict:
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cores": num_cores(),
        "platform": devices[0].platform,
        "accelerator": _accelerator(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "os": platform.platform(),
    }


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def versions() -> dict:
    import lstm_jax

    return {
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "equinox": _version("equinox"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "lstm_jax": lstm_jax.__version__,
        "lstm_jax_commit": _git_commit(),
    }


def _slugify(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|cpu @.*|processor|\d+-core", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_slug() -> str:
    """``cpu-<model>-<cores>c`` or ``gpu-<name>``: the folder under ``benchmarks/results``."""
    accelerator = _accelerator()
    if accelerator is not None:
        return f"{jax.devices()[0].platform}-{_slugify(accelerator)}"
    return f"cpu-{_slugify(cpu_model())}-{num_cores()}c"


def measure_flop_peak(size: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 FLOP/s: the best of ``repeats`` jitted ``(size, size)`` GEMMs.

    The best, not the median: the peak is what the machine can do when it is
    not disturbed (it is shared); the per-case shares are relative to it.
    """
    import time

    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    with jax.default_matmul_precision("float32"):
        matmul = jax.jit(lambda x: x @ x)
        jax.block_until_ready(matmul(a))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(matmul(a))
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


# Nominal float32 FLOP per cycle and core by ISA: FMA pipes x float32 lanes x 2 (an FMA is
# a multiply and an add). Nominal: e.g. AMD Zen 4 runs a 512-bit FMA as two 256-bit halves.
_FLOP_PER_CYCLE = (
    (("avx512f",), 64, "AVX-512: 2 FMA pipes x 16 float32 lanes x 2"),
    (("avx2", "fma"), 32, "AVX2 + FMA: 2 FMA pipes x 8 float32 lanes x 2"),
    (("avx",), 16, "AVX: 1 add + 1 multiply pipe x 8 float32 lanes"),
    (("sse2",), 8, "SSE2: 1 add + 1 multiply pipe x 4 float32 lanes"),
)


def flop_per_cycle(flags) -> tuple[Optional[int], str]:
    """Nominal float32 FLOP per cycle and core from the CPU's ISA ``flags`` (as in
    /proc/cpuinfo), and how: ``(64, "AVX-512: ...")``; ``(None, why)`` when unknown."""
    for needed, flop, how in _FLOP_PER_CYCLE:
        if set(needed) <= set(flags):
            return flop, how
    return None, "no x86 SIMD flags found (unknown ISA)"


def _read_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _command_output(argv: list) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo_field(cpuinfo: str, field: str) -> Optional[str]:
    """The first CPU's ``field`` in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return None


def clock(lscpu: str, cpuinfo: str) -> tuple[Optional[float], str]:
    """Clock in Hz and where it came from: lscpu's ``CPU max MHz`` (the highest
    rated clock), else the first CPU's ``cpu MHz`` in /proc/cpuinfo (the clock
    the kernel reports now; in a VM, usually the host's base clock)."""
    for line in lscpu.splitlines():
        if line.startswith("CPU max MHz:"):
            return float(line.split(":", 1)[1]) * 1e6, "lscpu 'CPU max MHz'"
    mhz = _cpuinfo_field(cpuinfo, "cpu MHz")
    if mhz:
        return float(mhz) * 1e6, "/proc/cpuinfo 'cpu MHz' of the first CPU"
    return None, "no clock in lscpu or /proc/cpuinfo"


def nominal_peak() -> dict:
    """This machine's nominal float32 peak: FLOP/cycle (from the ISA) x clock x cores
    (the CPUs this process may run on, which XLA's CPU client uses), with the source
    of each number. ``flops`` is None when one of them is unknown."""
    cpuinfo = _read_file("/proc/cpuinfo")
    flop, isa = flop_per_cycle((_cpuinfo_field(cpuinfo, "flags") or "").split())
    hz, clock_source = clock(_command_output(["lscpu"]), cpuinfo)
    cores = num_cores()
    return {
        "flops": flop * hz * cores if flop and hz else None,
        "flop_per_cycle": flop,
        "isa": isa,
        "clock_hz": hz,
        "clock_source": clock_source,
        "cores": cores,
        "cores_source": "os.sched_getaffinity: the CPUs this process and XLA's CPU client use",
    }


def load_average() -> Optional[list]:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_info(argv: Optional[list] = None) -> dict:
    argv = sys.argv if argv is None else argv
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv[1:]])
        if argv and argv[0].endswith("__main__.py")
        else " ".join(argv),
    }


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")


def load_info() -> dict:
    """What else the machine was doing: load averages, this process's CPU affinity, thread settings."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    threads = {name: os.environ[name] for name in _THREAD_VARIABLES if name in os.environ}
    if "torch" in sys.modules:
        threads["torch.get_num_threads"] = sys.modules["torch"].get_num_threads()
    return {"loadavg_1_5_15": load, "affinity": affinity, "threads": threads}


def busy(load: Optional[list], cores: int) -> bool:
    """The load rule: the 1-minute load average exceeds the cores this process may use."""
    return bool(load) and load[0] > cores


def busy_warning(info: dict, cores: int) -> Optional[str]:
    """A warning when :func:`busy` says so."""
    load = info.get("loadavg_1_5_15")
    if busy(load, cores):
        return (
            f"the machine is busy: 1-minute load average {load[0]:.2f} > {cores} cores; "
            "timings and speed-ups from this run are unreliable"
        )
    return None

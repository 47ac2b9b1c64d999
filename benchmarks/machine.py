"""What the numbers were measured on: machine, versions, date, command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import resource
import subprocess
import sys
from typing import Optional

import jax

__all__ = [
    "cpu_model", "num_cores", "machine_info", "versions", "machine_slug", "run_info",
    "load_info", "busy", "busy_warning", "flop_per_cycle", "clock", "nominal_peak", "fma_peak",
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
# a multiply and an add); AMD Zen 4's AVX-512 is in flop_per_cycle.
_FLOP_PER_CYCLE = (
    (("avx512f",), 64, "AVX-512: 2 FMA pipes x 16 float32 lanes x 2"),
    (("avx2", "fma"), 32, "AVX2 + FMA: 2 FMA pipes x 8 float32 lanes x 2"),
    (("avx",), 16, "AVX: 1 add + 1 multiply pipe x 8 float32 lanes"),
    (("sse2",), 8, "SSE2: 1 add + 1 multiply pipe x 4 float32 lanes"),
)


def flop_per_cycle(flags, vendor: str = "", family: Optional[int] = None) -> tuple[Optional[int], str]:
    """Nominal float32 FLOP per cycle and core from the CPU's ISA ``flags`` (as in
    /proc/cpuinfo), and how: ``(64, "AVX-512: ...")``; ``(None, why)`` when unknown.
    AMD Zen 4 (``vendor`` AuthenticAMD, CPU ``family`` 25 with AVX-512) runs a
    512-bit FMA as two 256-bit halves: 32."""
    if vendor == "AuthenticAMD" and family == 25 and "avx512f" in flags:
        return 32, "AVX-512 on Zen 4 (CPU family 25): 2 FMA pipes x 8 float32 lanes x 2, 512-bit ops in two halves"
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


def _cpu_flop_per_cycle(cpuinfo: str) -> tuple[Optional[int], str]:
    """:func:`flop_per_cycle` of the first CPU in /proc/cpuinfo text."""
    family = _cpuinfo_field(cpuinfo, "cpu family")
    return flop_per_cycle((_cpuinfo_field(cpuinfo, "flags") or "").split(),
                          _cpuinfo_field(cpuinfo, "vendor_id") or "",
                          int(family) if family and family.isdigit() else None)  # fmt: skip


def nominal_peak() -> dict:
    """This machine's nominal float32 peak: FLOP/cycle (from the ISA, or the one
    ``--isa`` narrowed this process to) x clock x cores (the CPUs this process may
    run on, which XLA's CPU client uses), with the source of each number. ``flops``
    is None when one of them is unknown."""
    from benchmarks import isa_emulation

    cpuinfo = _read_file("/proc/cpuinfo")
    flop, isa = _cpu_flop_per_cycle(cpuinfo)
    if isa_emulation.active() == "avx2":
        flop, isa = 32, "AVX2 + FMA, emulated (--isa avx2): 2 FMA pipes x 8 float32 lanes x 2"
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


def fma_peak() -> Optional[dict]:
    """The float32 multiply-add peak of the native kernels' instruction set, measured on
    every core this process may use (:func:`lstm_jax.kernels.native_ops.native_fma_peak`),
    and the clock per core it implies: what the cores reach now, where the nominal peak
    takes the reported clock (in a VM, usually the host's base clock). None without the
    native kernels or with their portable C++ (no vector FMA to time)."""
    from lstm_jax.kernels import native_ops

    cores = num_cores()
    flops = native_ops.native_fma_peak(cores)
    if flops is None:
        return None
    isa = native_ops.native_isa()
    # avx512: the CPU's 64, or 32 where 512-bit FMAs run in two halves (Zen 4)
    per_cycle = 32 if isa == "avx2" else _cpu_flop_per_cycle(_read_file("/proc/cpuinfo"))[0] or 64
    return {"flops": flops, "isa": isa, "cores": cores, "flop_per_cycle": per_cycle,
            "clock_hz": flops / (per_cycle * cores)}  # fmt: skip


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
    """The load rule, for results without :func:`others_cpu` (another OS, older runs):
    the 1-minute load average exceeds the cores this process may use. The load
    counts the benchmark's own threads too, so on a quiet 2-core machine it ends
    near 2."""
    return bool(load) and load[0] > cores


# Other processes may keep at most this many cores busy on average during a judged run.
OTHERS_LIMIT_CORES = 0.25

# /proc/stat's per-CPU fields counted as busy: user nice system idle iowait irq softirq steal
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
_STEAL_FIELD = 7


def cpu_counters() -> Optional[dict]:
    """CPU seconds so far: ``busy_s``, the busy time of the CPUs this process may
    use (/proc/stat: user, nice, system, irq, softirq and steal, the time the
    hypervisor gave to other machines), ``steal_s`` of it, and ``own_s``, this
    process's user + system time (all its threads). None without /proc/stat."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except (OSError, AttributeError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    fields = [[int(v) for v in line[1:9]] for line in lines if line[0] in cpus]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "busy_s": sum(f[i] for f in fields for i in _BUSY_FIELDS) / tick,
        "steal_s": sum(f[_STEAL_FIELD] for f in fields) / tick,
        "own_s": usage.ru_utime + usage.ru_stime,
    }


def others_cpu(start: Optional[dict], end: Optional[dict], wall_s: float) -> Optional[dict]:
    """The cores other processes kept busy on average between two :func:`cpu_counters`
    (``cores``: busy time not this process's, steal included, over the wall time), and
    the hypervisor's steal alone (``steal_cores``). Unlike the load average it leaves
    out the benchmark's own threads. None when either reading is missing."""
    if not start or not end or wall_s <= 0:
        return None
    own = end["own_s"] - start["own_s"]
    return {
        "cores": max(0.0, end["busy_s"] - start["busy_s"] - own) / wall_s,
        "steal_cores": (end["steal_s"] - start["steal_s"]) / wall_s,
    }


def others_busy(others: Optional[dict]) -> bool:
    """The quiet rule: other processes kept more than :data:`OTHERS_LIMIT_CORES` busy."""
    return bool(others) and others["cores"] > OTHERS_LIMIT_CORES


def others_warning(others: Optional[dict], cores: int) -> Optional[str]:
    """A warning when :func:`others_busy` says so."""
    if others_busy(others):
        return (
            f"the machine was shared: other processes kept {others['cores']:.2f} of {cores} cores "
            f"busy on average during the run (steal {others['steal_cores']:.2f}); timings and "
            "speed-ups from this run are unreliable"
        )
    return None


def busy_warning(info: dict, cores: int) -> Optional[str]:
    """A warning when :func:`busy` says so."""
    load = info.get("loadavg_1_5_15")
    if busy(load, cores):
        return (
            f"the machine is busy: 1-minute load average {load[0]:.2f} > {cores} cores; "
            "timings and speed-ups from this run are unreliable"
        )
    return None

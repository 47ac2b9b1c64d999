"""``python -m benchmarks --isa avx2``: every peer narrowed to AVX2 in one process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import lstm_jax  # noqa: F401  (loaded: it has read LSTM_JAX_NATIVE_ISA)
from benchmarks import isa_emulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_has(*flags):
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next(line for line in cpuinfo if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return set(flags) <= set(line.split(":", 1)[1].split())


def test_environment_narrows_lstm_jax_xla_and_torch_and_keeps_xla_flags():
    values = isa_emulation.environment("avx2", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert values == {
        "LSTM_JAX_NATIVE_ISA": "avx2",
        "XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_cpu_max_isa=AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    }
    again = isa_emulation.environment("avx2", {"XLA_FLAGS": values["XLA_FLAGS"]})
    assert again["XLA_FLAGS"] == values["XLA_FLAGS"]


def test_unknown_isa_and_late_setting_are_refused():
    with pytest.raises(ValueError, match=r"isa must be one of \('avx2',\), got 'avx3'"):
        isa_emulation.environment("avx3", {})
    # this process has loaded lstm_jax, which read LSTM_JAX_NATIVE_ISA already
    environ = {}
    with pytest.raises(RuntimeError, match="before .*lstm_jax.* are imported"):
        isa_emulation.apply_environment("avx2", environ)
    assert environ == {}


def _run_fresh(script):
    """``script``'s stdout in a fresh Python without our ISA settings; skips where this
    jaxlib has no YNNPACK feature mask."""
    env = {k: v for k, v in os.environ.items() if k not in ("LSTM_JAX_NATIVE_ISA", "XLA_FLAGS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)  # fmt: skip
    if "not found once in" in child.stderr:
        pytest.skip("this jaxlib has no YNNPACK feature mask: " + child.stderr.splitlines()[-1])
    assert child.returncode == 0, child.stderr
    return child.stdout


_CHILD = textwrap.dedent(
    """
    import json
    from benchmarks import isa_emulation
    record = isa_emulation.emulate("avx2")
    import jax, jax.numpy as jnp, torch
    from lstm_jax.kernels import native_ops
    a = jnp.ones((256, 256))
    jax.block_until_ready(jax.jit(lambda x: x @ x)(a))
    print(json.dumps({"record": record, "mask_after": isa_emulation.ynnpack_mask(),
                      "active": isa_emulation.active(),
                      "torch": torch.backends.cpu.get_cpu_capability(),
                      "native": native_ops.native_isa()}))
    """
)


_DEFAULT_CHILD = textwrap.dedent(
    """
    from benchmarks import isa_emulation
    import jax, jax.numpy as jnp
    before = isa_emulation.ynnpack_mask()
    a = jnp.ones((256, 256))
    jax.block_until_ready(jax.jit(lambda x: x @ x)(a))
    print(before, isa_emulation.ynnpack_mask())
    """
)


@pytest.mark.skipif(not _cpu_has("avx2", "fma"), reason="needs an x86 CPU with AVX2 and FMA")
def test_the_symbols_found_are_ynnpacks_own_mask():
    """Untouched, the static read is unset before the first GEMM and YNNPACK's detected mask
    after it (this CPU's SSE2..FMA3 bits at least): the address is the right one."""
    before, after = _run_fresh(_DEFAULT_CHILD).split()[-2:]
    assert before == "None"
    assert int(after) & 0x7F == 0x7F


@pytest.mark.skipif(not _cpu_has("avx2", "fma"), reason="needs an x86 CPU with AVX2 and FMA")
def test_emulate_narrows_ynnpack_torch_and_the_native_kernels_in_a_fresh_process():
    pytest.importorskip("torch")
    result = json.loads(_run_fresh(_CHILD).splitlines()[-1])
    # bits 0-6: sse2 .. fma3; nothing of AVX-512 or AMX, and still so after a GEMM ran
    assert result["record"]["ynnpack_mask"] == result["mask_after"] == 0x7F
    assert result["record"]["ynnpack_mask_before"] == 0  # narrowed before YNNPACK's first use
    assert result["active"] == "avx2"
    assert result["torch"] == "AVX2"
    assert result["native"] in ("avx2", None)
    assert "--xla_cpu_max_isa=AVX2" in result["record"]["environment"]["XLA_FLAGS"]


def test_report_says_every_peer_ran_the_emulated_isa():
    from benchmarks import report

    emulation = {"isa": "avx2", "environment": isa_emulation.environment("avx2", {}),
                 "ynnpack_mask": 0x7F, "ynnpack_mask_before": 0}  # fmt: skip
    nominal = {"flops": 32 * 2.5e9 * 2, "flop_per_cycle": 32, "isa": "AVX2 + FMA, emulated",
               "clock_hz": 2.5e9, "clock_source": "lscpu", "cores": 2, "cores_source": "affinity"}  # fmt: skip
    fma = {"flops": 256e9, "isa": "avx2", "cores": 2, "flop_per_cycle": 32, "clock_hz": 4e9}
    results = {"nominal_peak": nominal, "fma_peak": fma, "isa_emulation": emulation}
    text = "\n".join(report._peak_lines(results))
    assert "32 FLOP/cycle (AVX2 + FMA, emulated; from --isa)" in text
    assert "Every peer ran AVX2 (`--isa avx2`)" in text and "keep the wider one" not in text
    assert report.train_geomean_target(results) == 2.0

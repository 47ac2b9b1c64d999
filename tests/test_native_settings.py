"""The native kernels' ``LSTM_JAX_NATIVE_*`` settings, and what ``"auto"`` runs per instruction set.

The table of variables and accepted values is ``csrc/settings.cc``; Python
checks it when it loads the extension (:func:`native_ops.check_settings`) and every
custom call checks it again. The instruction set is chosen once per process,
so tests that force one run in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import lstm_jax as lj
from lstm_jax.kernels import native, native_ops
from lstm_jax.kernels.native_ops import isa_fallbacks, native_unavailable, unknown_settings
from lstm_jax.kernels.native_gru import native_gru_layer

needs_native = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACS = "an integer from 0 to 4611686018427387904"

# (variable, invalid value, the message naming both and the accepted values)
INVALID = [
    ("LSTM_JAX_NATIVE_ISA", "avx-2", "'avx-2' is not one of 'avx512', 'avx2', 'portable'"),
    ("LSTM_JAX_NATIVE_ISA", "AVX2", "'AVX2' is not one of 'avx512', 'avx2', 'portable'"),
    ("LSTM_JAX_NATIVE_BF16", "amx-bf16", "'amx-bf16' is not one of 'amx', 'avx512bf16'"),
    ("LSTM_JAX_NATIVE_HUGEPAGES", "off", "'off' is not one of '0', '1'"),
    ("LSTM_JAX_NATIVE_SPLIT_MACS", "32k", f"'32k' is not {MACS}"),
    ("LSTM_JAX_NATIVE_UNITS_MACS", "", f"'' is not {MACS}"),
    ("LSTM_JAX_NATIVE_THREADS", "two", "'two' is not an integer from 1 to 4096"),
    ("LSTM_JAX_NATIVE_THREADS", "0", "'0' is not an integer from 1 to 4096"),
    ("LSTM_JAX_NATIVE_MIN_ROWS", "-1", "'-1' is not an integer from 1 to 1073741824"),
    ("LSTM_JAX_NATIVE_MIN_ROWS", " 4", "' 4' is not an integer from 1 to 1073741824"),
]


def _run(script: str, settings: dict, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python (argv: the repository root, ``args``) with exactly the
    ``LSTM_JAX_NATIVE_*`` variables of ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_JAX_NATIVE_")}
    env.update(JAX_PLATFORMS="cpu", **settings)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), ROOT, *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def _clear_settings(monkeypatch):
    """Unset every ``LSTM_JAX_NATIVE_*`` variable for this test."""
    for name in [n for n in os.environ if n.startswith("LSTM_JAX_NATIVE_")]:
        monkeypatch.delenv(name)


@needs_native
@pytest.mark.parametrize("name, value, message", INVALID)
def test_invalid_value_raises_when_loaded(monkeypatch, name, value, message):
    """The check the loader runs: a ValueError naming variable, value and accepted values."""
    _clear_settings(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(f"{name}={message} (an lstm_jax native")):
        native_ops.check_settings(native_ops.library()[0], os.environ)


@needs_native
def test_valid_values_pass(monkeypatch, recwarn):
    _clear_settings(monkeypatch)
    valid = {"ISA": native_ops.native_isa(), "HUGEPAGES": "1", "SPLIT_MACS": "0",
             "UNITS_MACS": "4096", "THREADS": "3", "MIN_ROWS": "2"}  # fmt: skip
    for name, value in valid.items():
        monkeypatch.setenv(f"LSTM_JAX_NATIVE_{name}", value)
    native_ops.check_settings(native_ops.library()[0], os.environ)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@needs_native
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_invalid_value_set_later_fails_the_call(monkeypatch, cell):
    """Per-call settings set after loading: every custom call checks the table again."""
    keys = jax.random.split(jax.random.key(0), 2)
    xs = jax.random.normal(keys[1], (2, 4, 3))
    h0 = jnp.zeros((2, 5))
    if cell == "lstm":
        weights, carry = lj.init_lstm(keys[0], 3, 5).layers[0][0], (h0, h0)
        layer = native.native_lstm_layer
    else:
        weights, carry, layer = lj.init_gru(keys[0], 3, 5).layers[0][0], h0, native_gru_layer
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", "two")
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match="LSTM_JAX_NATIVE_THREADS='two' is not an integer from 1 to 4096"):  # fmt: skip
        jax.block_until_ready(layer(None, weights, xs, carry))


def test_fallback_messages_name_what_was_asked_and_what_runs():
    isa = {"LSTM_JAX_NATIVE_ISA": "avx512"}
    (message,) = isa_fallbacks(isa, "avx2", None)
    assert message == (
        "LSTM_JAX_NATIVE_ISA='avx512': this CPU (or this build) does not have it; the native "
        "kernels run 'avx2' instead"
    )
    (message,) = isa_fallbacks({"LSTM_JAX_NATIVE_BF16": "amx"}, "avx512", "avx512bf16")
    assert message.endswith("does not have it; the bfloat16 kernels run 'avx512bf16' instead")
    (message,) = isa_fallbacks({"LSTM_JAX_NATIVE_BF16": "avx512bf16"}, "avx2", None)
    assert "no bfloat16 native kernels with the instruction set 'avx2' here" in message


def test_settings_the_cpu_has_give_no_fallback_message():
    asked = {"LSTM_JAX_NATIVE_ISA": "avx2", "LSTM_JAX_NATIVE_BF16": "amx"}
    assert isa_fallbacks(asked, "avx2", "amx") == []
    assert isa_fallbacks({}, "portable", None) == []


def test_unknown_setting_names_are_reported():
    environ = {"LSTM_JAX_NATIVE_THREAD": "2", "LSTM_JAX_NATIVE_ISA": "avx2", "HOME": "/"}
    known = ("LSTM_JAX_NATIVE_ISA", "LSTM_JAX_NATIVE_THREADS")
    assert unknown_settings(environ, known) == [
        (
            "LSTM_JAX_NATIVE_THREAD is not an lstm_jax native kernel setting and is ignored "
            "(they are LSTM_JAX_NATIVE_ISA, LSTM_JAX_NATIVE_THREADS)"
        )
    ]


@needs_native
def test_an_invalid_value_at_import_raises_at_the_first_native_call():
    """``import lstm_jax`` loads the extension (so that exported artifacts find its
    handlers) but an invalid setting does not stop the import: the first native call
    raises the loader's ValueError."""
    script = """
        import sys
        sys.path.insert(0, sys.argv[1])
        import jax
        import lstm_jax as lj
        try:
            lj.lstm(lj.init_lstm(jax.random.key(0), 3, 5), jax.numpy.ones((2, 4, 3)))
        except ValueError as error:
            print(error)
    """
    result = _run(script, {"LSTM_JAX_NATIVE_ISA": "avx-2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(f"LSTM_JAX_NATIVE_ISA={INVALID[0][2]} (an lstm_jax")


@needs_native
def test_fresh_process_runs_valid_settings_then_fails_each_invalid_one():
    """End to end in a fresh process: settings given before the import run the instruction
    set asked for, with one warning each for what the CPU lacks and for a mistyped name;
    then every invalid value set later fails the next native call, naming it."""
    script = """
        import json, os, sys, warnings
        sys.path.insert(0, sys.argv[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import jax, jax.numpy as jnp
            import lstm_jax as lj
            from lstm_jax.kernels import native_ops
            params = lj.init_lstm(jax.random.key(0), 3, 5)
            xs = jax.random.normal(jax.random.key(1), (2, 4, 3))
            ys, _ = lj.lstm(params, xs)
            lj.lstm(params, xs)
        error = float(jnp.max(jnp.abs(ys - lj.lstm(params, xs, backend="scan")[0])))
        raised = []
        for name, value, _ in json.loads(sys.argv[2]):  # not imported: tests load the extension
            before = dict(os.environ)
            os.environ[name] = value
            try:
                jax.block_until_ready(lj.lstm(params, xs))
            except Exception as failure:  # the custom call's INVALID_ARGUMENT
                raised.append(str(failure))
            os.environ.clear()
            os.environ.update(before)
        print(json.dumps(dict(raised=raised, isa=native_ops.native_isa(), error=error,
                              warned=[str(w.message) for w in caught
                                      if "LSTM_JAX_NATIVE" in str(w.message)])))
    """
    settings = {"LSTM_JAX_NATIVE_ISA": "avx2", "LSTM_JAX_NATIVE_BF16": "amx",
                "LSTM_JAX_NATIVE_THRED": "1"}  # fmt: skip
    result = _run(script, settings, json.dumps(INVALID))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["raised"]) == len(INVALID)
    for (name, _, message), raised in zip(INVALID, out["raised"]):
        assert f"{name}={message}" in raised
    assert out["isa"] == "avx2" and out["error"] < 2e-5
    assert len(out["warned"]) == 2, out["warned"]
    assert out["warned"][0].startswith("LSTM_JAX_NATIVE_THRED is not an lstm_jax native kernel")
    assert out["warned"][1].startswith("LSTM_JAX_NATIVE_BF16='amx': this CPU")


@needs_native
def test_auto_never_runs_the_portable_kernels():
    """With only the portable kernels (``LSTM_JAX_NATIVE_ISA=portable``, as on ARM), ``"auto"``
    lowers no native custom call for the LSTM or the GRU, logs why once, and equals
    ``"scan"``; ``backend="native"`` still runs them and equals ``"scan"``."""
    script = """
        import json, logging, sys
        sys.path.insert(0, sys.argv[1])
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("lstm_jax.kernels.native_ops").setLevel(logging.INFO)
        import jax, jax.numpy as jnp
        import lstm_jax as lj
        from lstm_jax.kernels.native_ops import native_isa
        from tests.native_cases import assert_trees_close

        def step(run, backend):
            def loss(params, xs):
                ys, state = run(params, xs, backend=backend)
                return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(s) for s in jax.tree.leaves(state))
            return jax.jit(jax.value_and_grad(loss))

        xs = jax.random.normal(jax.random.key(1), (7, 9, 5))
        found = {}
        for name, run, init in (("lstm", lj.lstm, lj.init_lstm), ("gru", lj.gru, lj.init_gru)):
            params = init(jax.random.key(0), 5, 21)
            want = step(run, "scan")(params, xs)
            for backend in ("auto", "native"):
                hlo = step(run, backend).lower(params, xs).as_text()
                found[f"{name} {backend}"] = "lstm_jax_native" in hlo
                assert_trees_close(step(run, backend)(params, xs), want)
        print(json.dumps(dict(isa=native_isa(), found=found)))
    """
    result = _run(script, {"LSTM_JAX_NATIVE_ISA": "portable"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["isa"] == "portable"
    assert out["found"] == {"lstm auto": False, "lstm native": True, "gru auto": False,
                            "gru native": True}  # fmt: skip
    assert result.stderr.count("backend='auto' uses 'fused' instead of 'native'") == 1
    assert "only its portable C++ kernels run here" in result.stderr

"""jax.export of lstm_jax functions: serialise here, deserialise and run in a fresh process.

The reload runs in a subprocess that only imports lstm_jax (which registers the
params/state types and the native FFI handlers) and must give this process's
``jit`` results bit for bit: values and ``vjp_order=1`` gradients.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lstm_jax as lj
from lstm_jax.kernels.native_ops import native_unavailable
from tests.test_accel import stub_cuda_rnn  # noqa: F401 (a fixture)

pytest.importorskip(
    "flatbuffers", reason="jax.export serialisation needs flatbuffers ([export] extra)"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = native_unavailable() is None
CELLS = {
    "lstm": (lj.init_lstm, lj.lstm),
    "gru": (lj.init_gru, lj.gru),
    "rnn": (lj.init_rnn, lj.rnn),
}
B, T, I, H = 4, 6, 3, 8
LENGTHS = jnp.array([6, 3, 1, 5], jnp.int32)


def custom_calls(text: str) -> set[str]:
    found = re.findall(r'custom_call @([\w$.]+)|call_target_name = "([\w$.]+)"', text)
    return {a or b for a, b in found}


def _run_python(code: str, *args, cwd) -> str:
    """``code`` in a fresh interpreter that imports this worktree's lstm_jax; its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _save(path, tree) -> None:
    np.savez(path, *[np.asarray(a) for a in jax.tree_util.tree_leaves(tree)])


# The reloading process: only lstm_jax is imported (for its registrations). It
# rebuilds the arguments from the artifact's own in_tree, runs forward and VJP,
# and writes the results for the parent to compare.
RELOAD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax import export
import lstm_jax

blob, args_path, out_path = sys.argv[1:]
exp = export.deserialize(bytearray(open(blob, "rb").read()))
saved = np.load(args_path)
(params, xs, lengths), _ = jax.tree_util.tree_unflatten(
    exp.in_tree, [saved[f"arr_{i}"] for i in range(len(saved.files))])
outs, vjp = jax.vjp(lambda p, x: exp.call(p, x, lengths), params, xs)
grads = vjp(jax.tree_util.tree_map(jnp.cos, outs))
print(type(params).__name__, type(outs[1]).__name__)
np.savez(out_path, *[np.asarray(a) for a in jax.tree_util.tree_leaves((outs, grads))])
"""


@pytest.mark.parametrize("kind", list(CELLS))
def test_export_reloads_in_a_fresh_process(kind, tmp_path):
    """Default backend, 2 layers, bidirectional, ragged: serialize here, deserialize and call in
    a new process that imported lstm_jax: values and vjp_order=1 gradients equal jit's."""
    init, fn = CELLS[kind]
    params = init(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))

    def f(p, x, lengths):
        return fn(p, x, seq_lengths=lengths)

    exp = export.export(jax.jit(f), disabled_checks=lj.export_safety_checks())(params, xs, LENGTHS)
    if NATIVE and kind != "rnn":  # the artifact holds the native kernels: the case at stake
        assert any(c.startswith("lstm_jax_native_") for c in custom_calls(exp.mlir_module()))
    (tmp_path / "model.bin").write_bytes(exp.serialize(vjp_order=1))
    _save(tmp_path / "args.npz", (params, xs, LENGTHS))
    out = _run_python(
        RELOAD, tmp_path / "model.bin", tmp_path / "args.npz", tmp_path / "out.npz", cwd=tmp_path
    )
    state_type = "LSTMState" if kind == "lstm" else "ArrayImpl"
    assert out.split() == [type(params).__name__, state_type]

    outs, vjp = jax.vjp(lambda p, x: jax.jit(f)(p, x, LENGTHS), params, xs)
    expected = jax.tree_util.tree_leaves((outs, vjp(jax.tree_util.tree_map(jnp.cos, outs))))
    got = np.load(tmp_path / "out.npz")
    assert len(got.files) == len(expected)
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(got[f"arr_{i}"], np.asarray(want), err_msg=f"leaf {i}")


PORTABLE = """
import sys
import jax, numpy as np
from jax import export

exp = export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
saved = np.load(sys.argv[2])
args, _ = jax.tree_util.tree_unflatten(
    exp.in_tree, [saved[f"arr_{i}"] for i in range(len(saved.files))])
ys, h, c = exp.call(*args)
assert "lstm_jax" not in sys.modules
np.savez(sys.argv[3], ys, h, c)
"""


def test_fused_export_of_plain_arrays_loads_without_lstm_jax(tmp_path):
    """backend="fused" over the params' leaves: no custom call, and the artifact runs in a
    process that never imports lstm_jax."""
    params = lj.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))

    def f(leaves, x, lengths):
        ys, state = lj.lstm(
            jax.tree_util.tree_unflatten(treedef, leaves), x, seq_lengths=lengths, backend="fused"
        )
        return ys, state.h, state.c

    exp = export.export(jax.jit(f))(leaves, xs, LENGTHS)  # no disabled checks needed
    assert custom_calls(exp.mlir_module()) == set()
    (tmp_path / "model.bin").write_bytes(exp.serialize())
    _save(tmp_path / "args.npz", (leaves, xs, LENGTHS))
    _run_python(
        PORTABLE, tmp_path / "model.bin", tmp_path / "args.npz", tmp_path / "out.npz", cwd=tmp_path
    )
    got = np.load(tmp_path / "out.npz")
    for i, want in enumerate(jax.jit(f)(leaves, xs, LENGTHS)):
        np.testing.assert_array_equal(got[f"arr_{i}"], np.asarray(want))


@pytest.mark.skipif(not NATIVE, reason="the native extension is not built")
def test_native_export_needs_the_safety_checks():
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="lstm_jax_native_forward_infer"):
        export.export(jax.jit(lj.lstm))(params, xs)


@pytest.mark.filterwarnings("ignore:backend='cudnn' cannot run this layer:RuntimeWarning")
def test_safety_checks_cover_every_custom_call_emitted(stub_cuda_rnn):  # noqa: F811
    """Every custom call any backend lowers to, on cpu, cuda and tpu (cuDNN stubbed, as in
    test_accel), is in export_safety_checks() or guaranteed stable by jax.export; one
    three-platform export of each passes with them."""
    from jax._src.export._export import _CUSTOM_CALL_TARGETS_GUARANTEED_STABLE as stable

    checks = lj.export_safety_checks()
    assert all(isinstance(c, export.DisabledSafetyCheck) for c in checks)
    allowed = {c.is_custom_call() for c in checks}
    params = lj.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    gru_params = lj.init_gru(jax.random.key(0), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))

    def forward(fn, p, **kwargs):
        return lambda x: fn(p, x, seq_lengths=LENGTHS, **kwargs)

    def grad(fn, p, **kwargs):
        def loss(p, x):
            ys, state = fn(p, x, seq_lengths=LENGTHS, **kwargs)
            return jnp.sum(ys * jnp.sin(ys)) + sum(
                jnp.sum(a) for a in jax.tree_util.tree_leaves(state)
            )

        return lambda x: jax.grad(loss, argnums=(0, 1))(p, x)

    cases = [
        (make(fn, p, **kw), name)
        for make in (forward, grad)
        for fn, p, kw, name in (
            (lj.lstm, params, {}, "lstm auto"),
            (lj.lstm, params, {"backend": "pallas"}, "lstm pallas"),
            (lj.lstm, params, {"backend": "cudnn"}, "lstm cudnn"),
            (lj.gru, gru_params, {}, "gru auto"),
        )
    ]
    emitted = set()
    for fn, name in cases:
        for platform in ("cpu", "cuda", "tpu"):
            lowered = jax.jit(fn).trace(xs).lower(lowering_platforms=(platform,))
            emitted |= custom_calls(lowered.as_text())
        exp = export.export(jax.jit(fn), platforms=["cpu", "cuda", "tpu"], disabled_checks=checks)(
            xs
        )
        assert exp.platforms == ("cpu", "cuda", "tpu"), name
    expected = {"cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi", "__gpu$xla.gpu.triton", "tpu_custom_call"}
    if NATIVE:
        expected |= {
            "lstm_jax_native_forward_infer",
            "lstm_jax_native_forward_train",
            "lstm_jax_native_backward",
            "lstm_jax_native_gru_forward_infer",
            "lstm_jax_native_gru_forward_train",
            "lstm_jax_native_gru_backward",
        }
    assert expected <= emitted  # the lowering really produced each kernel's calls
    assert emitted - stable <= allowed, sorted(emitted - stable - allowed)


def test_symbolic_batch_and_time(tmp_path):
    """One artifact for every batch and time size (inference; gradients with a symbolic batch)."""
    params = lj.init_lstm(jax.random.key(0), I, H, bidirectional=True)
    b, t = export.symbolic_shape("b, t")

    def f(p, x, lengths):
        return lj.lstm(p, x, seq_lengths=lengths)

    grad = jax.grad(lambda p, x, lengths: jnp.sum(f(p, x, lengths)[0] ** 2))
    checks = lj.export_safety_checks()
    spec = jax.ShapeDtypeStruct((b, t, I), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32)
    exp = export.deserialize(
        export.export(jax.jit(f), disabled_checks=checks)(params, *spec).serialize()
    )
    spec = jax.ShapeDtypeStruct((b, T, I), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32)
    exp_grad = export.export(jax.jit(grad), disabled_checks=checks)(params, *spec)
    for batch, steps in ((2, T), (5, 9)):
        xs = jax.random.normal(jax.random.key(batch), (batch, steps, I))
        lengths = jnp.arange(batch, dtype=jnp.int32) % steps + 1
        for a, b_ in zip(
            jax.tree_util.tree_leaves(exp.call(params, xs, lengths)),
            jax.tree_util.tree_leaves(jax.jit(f)(params, xs, lengths)),
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
        if steps == T:
            for a, b_ in zip(
                jax.tree_util.tree_leaves(exp_grad.call(params, xs, lengths)),
                jax.tree_util.tree_leaves(jax.jit(grad)(params, xs, lengths)),
            ):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))


def test_every_params_and_state_type_is_registered():
    from jax._src.export._export import serialization_registry

    from lstm_jax import export as lj_export

    for nodetype in (
        lj.LSTMParams,
        lj.LSTMWeights,
        lj.LSTMState,
        lj.LayerNormWeights,
        lj.GRUParams,
        lj.GRUWeights,
        lj.RNNParams,
        lj.RNNWeights,
        lj.training.Dense,
    ):
        assert serialization_registry[nodetype][0] == f"lstm_jax.{nodetype.__name__}"
    lj_export._register_serialization()  # a second registration (importlib.reload) is harmless


def test_params_with_every_variant_round_trip_through_serialization():
    """None fields (no projection / peepholes / layer norm) and set ones both survive."""
    params = lj.init_lstm(jax.random.key(0), I, H, proj_size=4, peephole=True, layer_norm=True)

    def f(p, x):
        return p, lj.lstm(p, x)

    xs = jnp.ones((2, 3, I))
    exp = export.deserialize(
        export.export(jax.jit(f), disabled_checks=lj.export_safety_checks())(params, xs).serialize()
    )
    back, (ys, state) = exp.call(params, xs)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    assert isinstance(state, lj.LSTMState)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

"""``resets`` and ``mask`` of ``lstm``, ``gru`` and ``rnn`` against running the pieces alone.

The reference runs every sequence on its own: it cuts it at its resets (and at
its length), drops the masked steps of each segment, runs what is left through
the plain call from the initial state, and scatters the outputs back with zeros
in between. The final state is the last segment's. Every pair of the backend matrix
(``tests/backends.py``) that takes ``resets`` or ``mask`` is checked against it.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstm_jax as lj
from lstm_jax.cells import gru_kind, lstm_kind, rnn_kind
from lstm_jax.kernels.native import native_lstm_layer
from lstm_jax.kernels.native_gru import native_gru_layer
from lstm_jax.kernels.native_ops import (
    native_auto_unavailable,
    native_has_bf16,
    native_unavailable,
)
from lstm_jax.kernels.native_rnn import native_rnn_layer
from lstm_jax.scan import scan_layer
from tests.backends import NETWORKS as KINDS
from tests.backends import all_pairs, matrix
from tests.test_native_bf16 import CELLS as BF16_CELLS

INPUT, HIDDEN = 3, 4


def _setup(kind, batch, steps, *, num_layers=2, bidirectional=True, seed=0):
    init, fn = KINDS[kind]
    keys = jax.random.split(jax.random.key(seed), 4)
    params = init(keys[0], INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional)
    xs = jax.random.normal(keys[1], (batch, steps, INPUT))
    shape = (num_layers * (2 if bidirectional else 1), batch, HIDDEN)
    h0 = jax.random.normal(keys[2], shape)
    state = lj.LSTMState(h0, jax.random.normal(keys[3], shape)) if kind == "lstm" else h0
    return fn, params, xs, state


def reference(fn, params, xs, state, *, resets=None, mask=None, lengths=None):
    """``fn`` over each sequence's segments (cut at ``resets``), masked steps dropped.

    Every segment's kept steps become one row of a padded batch run in one call
    with ``seq_lengths`` (tested against PyTorch elsewhere); the outputs are
    gathered back to their steps, zeros elsewhere.
    """
    batch, steps = xs.shape[:2]
    resets = np.zeros((batch, steps), bool) if resets is None else np.asarray(resets)
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask)
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    rows, last = [], []  # rows: (sequence, kept steps); last[b]: b's last segment's row
    for b in range(batch):
        cuts = [0] + [t for t in range(1, lengths[b]) if resets[b, t]] + [lengths[b]]
        for start, end in itertools.pairwise(cuts):
            rows.append((b, [t for t in range(start, end) if mask[b, t]]))
        last.append(len(rows) - 1)
    seq = np.array([b for b, _ in rows])
    time = np.zeros((len(rows), steps), int)
    out_index = np.full((batch, steps), len(rows) * steps)  # -> the appended zero row
    for r, (b, kept) in enumerate(rows):
        time[r, : len(kept)] = kept
        out_index[b, kept] = r * steps + np.arange(len(kept))
    seg_lengths = np.array([max(len(kept), 1) for _, kept in rows])
    init = jax.tree.map(lambda s: s[:, seq], state)
    ys, final = fn(params, xs[seq[:, None], time], initial_state=init, seq_lengths=seg_lengths)
    flat = jnp.concatenate([ys.reshape(-1, ys.shape[-1]), jnp.zeros((1, ys.shape[-1]), ys.dtype)])
    empty = np.array([not rows[r][1] for r in last])  # a last segment with every step masked
    final = jax.tree.map(
        lambda f, s: jnp.where(empty[None, :, None], s, f[:, np.array(last)]), final, state
    )
    return flat[out_index], final


def _loss(out):
    ys, state = out
    weights = jnp.arange(ys.size, dtype=ys.dtype).reshape(ys.shape) / ys.size
    return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state))


def _assert_close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=2e-5)


def _check(kind, resets=None, mask=None, lengths=None, *, grads=True, nan_xs=None,
           backend="auto", remat=False, **setup):  # fmt: skip
    batch, steps = (resets if resets is not None else mask).shape
    fn, params, xs, state = _setup(kind, batch, steps, **setup)
    kw = {"resets": resets, "mask": mask, "seq_lengths": lengths}
    if backend != "auto" or remat:
        kw.update(backend=backend, remat=remat)

    def ours(params, xs, state):
        return fn(params, xs if nan_xs is None else nan_xs(xs), initial_state=state, **kw)

    def ref(params, xs, state):
        return reference(fn, params, xs, state, resets=resets, mask=mask, lengths=lengths)

    key = (kind, grads, *map(_key, (resets, mask, lengths)), *sorted(setup.items()))
    if key not in _REFERENCES:  # every backend of a cell kind compares with the same
        grad_ref = jax.jit(jax.grad(lambda *a: _loss(ref(*a)), argnums=(0, 1, 2)))
        g_ref = grad_ref(params, xs, state) if grads else None
        _REFERENCES[key] = ref(params, xs, state), g_ref
    out_ref, g_ref = _REFERENCES[key]
    if grads:  # outputs and gradients from one compiled function

        def loss(*args):
            out = ours(*args)
            return _loss(out), out

        (_, out), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, xs, state
        )
        _assert_close(g, g_ref)
    else:
        out = ours(params, xs, state)
    _assert_close(out, out_ref)
    return ours, params, xs, state


_REFERENCES = {}  # _check's key -> the reference's outputs and gradients


def _key(a):
    """A hashable stand-in for an optional array argument of ``_check``."""
    return None if a is None else (np.shape(a), np.asarray(a).tobytes())


RESETS = np.array(
    [
        [False, False, True, False, False, True, False],
        [True, False, False, False, True, False, False],
        [False, True, True, False, False, False, True],
    ]
)
MASK = np.array(
    [
        [True, False, True, True, False, True, True],
        [False, True, True, False, True, True, True],
        [True, True, False, False, False, True, False],
    ]
)


# remat (blocks of 3 over 7 steps, a remainder block) on the kernels with a loop of their
# own; "scan" and "auto" (native on CPU, fused elsewhere) run it through the same wrapper
REMAT_BACKENDS = ("native", "fused")


def _masked_or_remat(pairs):
    """``(pair, remat, masked)``: each pair plain, and masked with remat where it runs a
    kernel of :data:`REMAT_BACKENDS`, masked without remat elsewhere."""
    return [(pair, remat, masked) for pair in pairs
            for remat, masked in ((False, False), (3 if pair.name in REMAT_BACKENDS else False, True))]  # fmt: skip


@pytest.mark.parametrize("pair, remat, masked", _masked_or_remat(matrix(takes=("resets",))),
                         ids=lambda v: str(v))  # fmt: skip
def test_resets_equal_each_segment_alone(pair, remat, masked):
    """Outputs, final state (the last segment's) and gradients, both directions (the
    reverse one's final state is its first processed segment's), 2 layers, ragged; with
    a mask a reset can fall on a masked step."""
    _check(pair.kind, resets=RESETS, mask=MASK if masked else None, lengths=np.array([5, 7, 2]),
           backend=pair.name, remat=remat)  # fmt: skip


def test_resets_without_initial_state_reset_to_zeros():
    fn, params, xs, state = _setup("lstm", 3, 7, num_layers=1, bidirectional=False)
    zeros = jax.tree.map(jnp.zeros_like, state)
    _assert_close(fn(params, xs, resets=RESETS), reference(fn, params, xs, zeros, resets=RESETS))


@pytest.mark.parametrize(
    "pair, remat",
    [(pair, remat) for pair in matrix(takes=("mask",))
     for remat in ((False, 3) if pair.name in REMAT_BACKENDS else (False,))],  # fmt: skip
    ids=lambda v: str(v),
)
def test_mask_equals_skipping_the_masked_steps(pair, remat):
    """Outputs, final state and gradients, both directions, 2 layers, ragged too: the
    backward must take ``h_{t-1}`` from the carry, not from the zeroed output, after a
    masked step."""
    _check(pair.kind, mask=MASK, lengths=np.array([7, 3, 5]), backend=pair.name, remat=remat)


def test_resets_mask_and_seq_lengths_together():
    """Resets at or past a sequence's length are ignored; a reset at a masked step applies."""
    _check("gru", resets=RESETS, mask=MASK, lengths=np.array([5, 7, 2]))


def test_nan_at_masked_steps_changes_no_output_or_gradient():
    def poison(xs):
        return jnp.where(jnp.asarray(MASK)[:, :, None], xs, jnp.nan)

    ours, params, xs, state = _check("lstm", resets=RESETS, mask=MASK, nan_xs=poison)
    dxs = jax.grad(lambda xs: _loss(ours(params, xs, state)))(xs)
    assert np.all(np.asarray(dxs)[~MASK] == 0.0)


def test_remat_with_resets_and_mask_equals_without():
    """Blocks of 3 steps over 7 (a remainder block), both directions, ragged."""
    fn, params, xs, state = _setup("lstm", 3, 7, num_layers=1)
    kw = {
        "initial_state": state,
        "resets": RESETS,
        "mask": MASK,
        "seq_lengths": jnp.array([7, 4, 6]),
    }

    def run(params, xs, remat):
        return fn(params, xs, remat=remat, **kw)

    _assert_close(run(params, xs, True), run(params, xs, False))
    g = jax.jit(jax.grad(lambda p, x: _loss(run(p, x, True)), argnums=(0, 1)))(params, xs)
    g_ref = jax.jit(jax.grad(lambda p, x: _loss(run(p, x, False)), argnums=(0, 1)))(params, xs)
    _assert_close(g, g_ref)




@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("name", ["mask", "resets"])
def test_auto_keeps_masked_and_reset_calls_on_the_native_kernel(kind, name):
    if native_auto_unavailable() is not None:
        pytest.skip(native_auto_unavailable())
    fn, params, xs, state = _setup(kind, 3, 7)
    kw = {name: MASK if name == "mask" else RESETS}
    run = jax.jit(jax.grad(lambda p: _loss(fn(p, xs, initial_state=state, **kw))))
    assert "lstm_jax_native" in run.lower(params).as_text()


# native layer name -> (cell, initialiser, native layer)
NATIVE_LAYERS = {
    "lstm": (lstm_kind(), lj.init_lstm, native_lstm_layer),
    "gru": (gru_kind(), lj.init_gru, native_gru_layer),
    "rnn": (rnn_kind(), lj.init_rnn, native_rnn_layer),
    "rnn-relu": (rnn_kind(nonlinearity="relu"), lj.init_rnn, native_rnn_layer),
}


def _layer_setup(kind):
    """One layer's weights, ``xs (3, 7, I)``, initial carry, another carry for ``reset_to``
    and a recurrent dropout mask ``(3, H)``."""
    if native_unavailable() is not None:
        pytest.skip(native_unavailable())
    _, init, _ = NATIVE_LAYERS[kind]
    keys = jax.random.split(jax.random.key(1), 5)
    weights = init(keys[0], INPUT, HIDDEN).layers[0][0]
    xs = jax.random.normal(keys[1], (3, 7, INPUT))

    def carry(key):
        h, c = jax.random.normal(key, (2, 3, HIDDEN))
        return (h, c) if kind == "lstm" else h

    dropout = (jax.random.uniform(keys[4], (3, HIDDEN)) < 0.7) / 0.7
    return weights, xs, carry(keys[2]), carry(keys[3]), dropout


# (native layer, reverse, time_major)
EVERY_OPTION_CASES = [
    ("lstm", False, False), ("lstm", True, True), ("gru", False, True), ("gru", True, False),
    ("rnn", False, True), ("rnn", True, False), ("rnn-relu", False, False), ("rnn-relu", True, True),
]  # fmt: skip


@pytest.mark.isa
@pytest.mark.parametrize("kind, reverse, time_major", EVERY_OPTION_CASES)
def test_native_resets_with_every_option_equal_scan(monkeypatch, kind, reverse, time_major):
    """One native layer against ``scan``: outputs, final carry and the gradients of the
    weights, inputs, initial carry and ``reset_to`` (remat's), with a mask, recurrent
    dropout and ragged lengths; NaN where no sequence reads its input changes nothing.
    ``LSTM_JAX_NATIVE_SPLIT_MACS=0`` splits even these tiny steps across threads; every
    other instruction set reruns it (``tests/test_native_isas.py``)."""
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    cell, _, native = NATIVE_LAYERS[kind]
    weights, xs, carry, reset_to, dropout = _layer_setup(kind)
    lengths = np.array([7, 4, 6])
    unused = ~MASK | (np.arange(7)[None, :] >= lengths[:, None])  # (B, T)

    def layout(a):
        return jnp.swapaxes(a, 0, 1) if time_major else a

    kw = {"seq_lengths": jnp.asarray(lengths), "reverse": reverse, "recurrent_mask": dropout,
          "time_major": time_major, "mask": layout(MASK), "resets": layout(RESETS)}  # fmt: skip

    def run(layer, poison):
        def f(weights, xs, carry, reset_to):
            if poison:
                xs = jnp.where(unused[:, :, None], jnp.nan, xs)
            ys, final = layer(cell, weights, layout(xs), carry, reset_to=reset_to, **kw)
            return layout(ys), final

        return f

    args = (weights, xs, carry, reset_to)
    ours, ref = run(native, True), run(scan_layer, False)
    _assert_close(ours(*args), ref(*args))

    def grads(f):
        return jax.jit(jax.grad(lambda *a: _loss(f(*a)), argnums=(0, 1, 2, 3)))(*args)

    _assert_close(grads(ours), grads(ref))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_native_resets_under_vmap_equal_each_call(kind):
    """Outputs and gradients of ``vmap`` over two native calls (reverse, so the final carry
    is the first processed segment's) equal ``scan``'s calls one by one."""
    cell, _, native = NATIVE_LAYERS[kind]
    weights, xs, carry, _, _ = _layer_setup(kind)

    def value_and_grad(layer):
        def run(xs, carry, resets):
            def loss(xs, carry):
                return _loss(layer(cell, weights, xs, carry, resets=resets, reverse=True))

            return jax.value_and_grad(loss, argnums=(0, 1))(xs, carry)

        return run

    inputs = [(xs, carry, RESETS), (xs[::-1], jax.tree.map(lambda a: a[::-1], carry), RESETS[::-1])]
    mapped = jax.vmap(value_and_grad(native))(*jax.tree.map(lambda *a: jnp.stack(a), *inputs))
    for n, one in enumerate(inputs):
        _assert_close(jax.tree.map(lambda a, n=n: a[n], mapped), value_and_grad(scan_layer)(*one))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-relu"])
def test_native_resets_grad_of_grad_equals_scan(kind):
    """A Hessian-vector product w.r.t. the initial carry (forward- over reverse-mode through
    the native kernels' JAX references), reverse, masked."""
    cell, _, native = NATIVE_LAYERS[kind]
    weights, xs, carry, _, _ = _layer_setup(kind)
    tangent = jax.tree.map(jnp.ones_like, carry)

    def hvp(layer):
        def loss(carry):
            return _loss(layer(cell, weights, xs, carry, resets=RESETS, mask=MASK, reverse=True))

        return jax.jit(lambda c: jax.jvp(jax.grad(loss), (c,), (tangent,))[1])(carry)

    _assert_close(hvp(native), hvp(scan_layer), atol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_native_bf16_resets_equal_the_bf16_reference(kind):
    """``compute_dtype=bfloat16``: the bfloat16 kernels (whose weight-gradient GEMM reads
    ``h * mask`` as the loop rounded it, the reset carry at a start) against a layer with the
    same rounding (``fused``'s; for the GRU ``test_native_bf16``'s), both directions:
    outputs, final carry and gradients."""
    if native_unavailable() is not None or not native_has_bf16():
        pytest.skip("no native bfloat16 kernels here")
    cell = BF16_CELLS[kind]
    weights, xs, carry, _, _ = _layer_setup(kind)

    def loss(layer, reverse):
        def f(weights, xs, carry):
            out = layer(cell.kind(), weights, xs, carry, resets=RESETS, reverse=reverse,
                        compute_dtype=jnp.bfloat16)  # fmt: skip
            return _loss(out), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    for reverse in (False, True):
        args = (weights, xs, carry)
        _assert_close(loss(cell.native, reverse)(*args), loss(cell.reference, reverse)(*args))


def test_unbatched_and_time_major_layouts():
    fn, params, xs, _ = _setup("rnn", 3, 7)
    ys, h = fn(params, xs, resets=RESETS, mask=MASK)
    ys1, h1 = fn(params, xs[1], resets=RESETS[1], mask=MASK[1])
    _assert_close((ys1, h1), (ys[1], h[:, 1]))
    tm = fn(params, jnp.swapaxes(xs, 0, 1), resets=RESETS.T, mask=MASK.T, time_major=True)
    _assert_close((jnp.swapaxes(tm[0], 0, 1), tm[1]), (ys, h))


@pytest.mark.parametrize(
    "pair, name",
    [(p, n) for p in all_pairs() for n in ("resets", "mask") if not p.takes(n)],
    ids=str,
)
def test_explicit_kernels_reject_what_they_do_not_implement(pair, name):
    """Every pair of the table (cuDNN too, off GPU) that does not take an option says so."""
    fn, params, xs, _ = _setup(pair.kind, 3, 7)
    with pytest.raises(
        ValueError, match=f"backend='{pair.name}' does not implement {name}.*'auto'"
    ):
        fn(params, xs, backend=pair.name, **{name: MASK})


@pytest.mark.parametrize("name", ["resets", "mask"])
def test_bad_resets_and_mask_are_rejected(name):
    fn, params, xs, _ = _setup("lstm", 3, 7)
    with pytest.raises(
        ValueError, match=rf"{name} must have shape \(3, 7\) \(batch, time\).*got \(7, 3\)"
    ):
        fn(params, xs, **{name: MASK.T})
    with pytest.raises(ValueError, match=rf"{name} must have shape \(7,\) \(time,\)"):
        fn(params, xs[0], **{name: MASK})
    with pytest.raises(TypeError, match=f"{name} must have dtype bool, got int32"):
        fn(params, xs, **{name: jnp.asarray(MASK, jnp.int32)})


@pytest.mark.slow  # 10 s; the example-based tests above cover each case by default
@settings(max_examples=6, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 6),
    use_lengths=st.booleans(),
)
def test_property_resets_and_mask_equal_the_reference(kind, seed, steps, use_lengths):
    rng = np.random.default_rng(seed)
    resets = rng.random((2, steps)) < 0.3
    mask = rng.random((2, steps)) < 0.7
    lengths = rng.integers(1, steps + 1, size=2) if use_lengths else None
    _check(kind, resets=resets, mask=mask, lengths=lengths, grads=False,
           num_layers=1, seed=seed)  # fmt: skip

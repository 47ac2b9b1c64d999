"""Flax NNX, Flax linen and Equinox modules against the functional calls they wrap."""

import functools
import importlib
import inspect
import io
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstm_jax as lj
from lstm_jax import _modules

nnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")
eqx = pytest.importorskip("equinox")
serialization = pytest.importorskip("flax.serialization")

import lstm_jax.equinox as ljeqx  # noqa: E402
import lstm_jax.linen as ljlinen  # noqa: E402
import lstm_jax.nnx as ljnnx  # noqa: E402

FRAMEWORKS = ("nnx", "linen", "equinox")
FUNCTIONAL = {"LSTM": lj.lstm, "GRU": lj.gru, "RNN": lj.rnn}
INPUT, HIDDEN = 4, 5
XS = jax.random.normal(jax.random.key(1), (3, 6, INPUT))
LENGTHS = jnp.array([6, 2, 4])

# (kind, init_* options, module options that the functional call takes too)
CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3, peephole=True), {}),
    ("GRU", dict(bidirectional=True), {}),
    ("RNN", dict(num_layers=2), dict(nonlinearity="relu")),
]


def _nnx_grads_as_params(grads, like):
    """An ``nnx.grad`` result (a State keyed like the module) as a params pytree like ``like``."""
    pure = nnx.to_pure_dict(grads)["params"]

    def pick(path, _):
        node = pure
        for entry in path:
            node = node[entry.name if hasattr(entry, "name") else entry.idx]
        return node

    return jax.tree_util.tree_map_with_path(pick, like)


def _loss(out):
    ys, state = out
    return jnp.sum(ys**2) + sum(jnp.sum(s**2) for s in jax.tree.leaves(state))


def _loss_and_outputs(out):
    return _loss(out), out


def module_from_params(framework, kind, params, options):
    """``run(xs, **kw) -> (outputs, grads)`` for the module built by ``from_params``, under
    its framework's jit: the call's outputs and the gradient of ``_loss`` in the framework's
    idiom, returned as a params pytree (one compilation for both)."""
    if framework == "nnx":
        module = getattr(ljnnx, kind).from_params(params, **options)
        run = nnx.jit(
            lambda m, xs, kw: nnx.grad(lambda m: _loss_and_outputs(m(xs, **kw)), has_aux=True)(m)
        )

        def nnx_run(xs, **kw):
            grads, out = run(module, xs, kw)
            return out, _nnx_grads_as_params(grads, params)

        return nnx_run
    if framework == "linen":
        module, variables = getattr(ljlinen, kind).from_params(params, **options)
        run = jax.jit(
            jax.grad(
                lambda v, xs, kw: _loss_and_outputs(module.apply(v, xs, **kw)), has_aux=True
            )
        )

        def linen_run(xs, **kw):
            grads, out = run(variables, xs, kw)
            return out, grads["params"]["weights"]

        return linen_run
    module = getattr(ljeqx, kind).from_params(params, **options)
    run = eqx.filter_jit(
        eqx.filter_grad(lambda m, xs, kw: _loss_and_outputs(m(xs, **kw)), has_aux=True)
    )

    def equinox_run(xs, **kw):
        grads, out = run(module, xs, kw)
        return out, grads.params

    return equinox_run


def _assert_trees_equal(a, b, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0.0, atol=atol)


@functools.cache
def _reference(case):
    """Params, call keywords, outputs and gradients of the functional call for ``CASES[case]``."""
    kind, init_kwargs, options = CASES[case]
    fn = FUNCTIONAL[kind]
    params = _modules.__dict__[kind].init(jax.random.key(0), INPUT, HIDDEN, **init_kwargs)
    state_like = jax.eval_shape(lambda: fn(params, XS, **options)[1])
    leaves = jax.tree.leaves(state_like)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noise = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    initial_state = jax.tree.unflatten(jax.tree.structure(state_like), noise)
    kw = dict(seq_lengths=LENGTHS, initial_state=initial_state)
    loss_fn = lambda p: _loss_and_outputs(fn(p, XS, **kw, **options))  # noqa: E731
    grads, out = jax.jit(jax.grad(loss_fn, has_aux=True))(params)
    return params, kw, out, grads


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_module_equals_functional_call(framework, case):
    """Ragged, with an initial state, multi-layer and bidirectional: values, states, gradients."""
    kind, _, options = CASES[case]
    params, kw, out, grads = _reference(case)
    module_out, module_grads = module_from_params(framework, kind, params, options)(XS, **kw)
    _assert_trees_equal(module_out, out, atol=1e-6)
    _assert_trees_equal(module_grads, grads, atol=1e-5)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_constructors_build_the_init_params(case):
    """Each framework's own constructor passes its options to ``init_*`` (shapes and dtypes)."""
    kind, init_kwargs, options = CASES[case]
    expected = jax.eval_shape(
        lambda: _modules.__dict__[kind].init(jax.random.key(0), INPUT, HIDDEN, **init_kwargs)
    )
    key = jax.random.key(0)
    built = [
        getattr(ljnnx, kind)(INPUT, HIDDEN, rngs=nnx.Rngs(0), **init_kwargs, **options).to_params(),
        getattr(ljlinen, kind)(HIDDEN, **init_kwargs, **options).init(key, XS)["params"]["weights"],
        getattr(ljeqx, kind)(INPUT, HIDDEN, key=key, **init_kwargs, **options).params,
    ]
    for params in built:
        assert jax.eval_shape(lambda: params) == expected


def build(framework, kind, init_kwargs=None, options=None, *, seed=0):
    """``(params, call)``: a module built by its framework's constructor, and ``call(xs, **kw)``."""
    init_kwargs, options = init_kwargs or {}, options or {}
    key = jax.random.key(seed)
    if framework == "nnx":
        module = getattr(ljnnx, kind)(INPUT, HIDDEN, rngs=nnx.Rngs(seed), **init_kwargs, **options)
        return module.to_params(), lambda xs, **kw: module(xs, **kw)
    if framework == "linen":
        module = getattr(ljlinen, kind)(HIDDEN, **init_kwargs, **options)
        variables = module.init(key, XS)
        return variables["params"]["weights"], lambda xs, **kw: module.apply(variables, xs, **kw)
    module = getattr(ljeqx, kind)(INPUT, HIDDEN, key=key, **init_kwargs, **options)
    return module.params, lambda xs, **kw: module(xs, **kw)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_call_keywords_pass_through(framework):
    params, call = build(framework, "GRU")
    xs_tm = jnp.swapaxes(XS, 0, 1)
    kw = dict(time_major=True, backend="scan", unroll=2, remat=2)
    _assert_trees_equal(call(xs_tm, **kw), lj.gru(params, xs_tm, **kw))
    one = call(XS[0])  # one unbatched sequence
    _assert_trees_equal(one, lj.gru(params, XS[0]))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resets_and_mask_reach_the_functional_call_only_when_given(framework, monkeypatch):
    seen = []

    def record(params, xs, **kw):
        seen.append(sorted(kw))
        return xs, None

    module_cls = {"nnx": ljnnx, "linen": ljlinen, "equinox": ljeqx}[framework].LSTM
    monkeypatch.setattr(module_cls, "_kind", _modules.LSTM._replace(apply=record))
    _, call = build(framework, "LSTM")
    seen.clear()  # linen's init ran the call once
    flags = jnp.zeros(XS.shape[:2], bool)
    call(XS)
    call(XS, resets=flags, mask=flags, backend="scan")
    assert seen == [
        ["initial_state", "seq_lengths"],
        ["backend", "initial_state", "mask", "resets", "seq_lengths"],
    ]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dropout_is_a_module_option_not_a_call_keyword(framework):
    _, call = build(framework, "LSTM")
    with pytest.raises(TypeError, match="'dropout' is an option of the LSTM module"):
        call(XS, dropout=0.5)


def test_bad_rates_and_params_are_rejected():
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got 1.5"):
        ljnnx.LSTM(INPUT, HIDDEN, dropout=1.5)
    with pytest.raises(ValueError, match=r"recurrent_dropout must lie in \[0, 1\), got -0.1"):
        ljeqx.GRU(INPUT, HIDDEN, key=jax.random.key(0), recurrent_dropout=-0.1)
    gru_params = lj.init_gru(jax.random.key(0), INPUT, HIDDEN)
    for module_cls in (ljnnx.LSTM, ljlinen.LSTM, ljeqx.LSTM):
        with pytest.raises(TypeError, match="params must be a LSTMParams .* got GRUParams"):
            module_cls.from_params(gru_params)
    with pytest.raises(ValueError, match="need a 'dropout' .* stream in rngs, got streams"):
        ljnnx.LSTM(INPUT, HIDDEN, dropout=0.5, rngs=nnx.Rngs(params=0))


def _held_params(framework, module_cls, params, **options):
    if framework == "nnx":
        return module_cls.from_params(params, **options).to_params()
    if framework == "linen":
        return module_cls.from_params(params, **options)[1]["params"]["weights"]
    return module_cls.from_params(params, **options).params


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_converted_weights_drop_in(framework):
    """``from_torch`` results, and one layer's weights from ``from_flax``/``from_keras``."""
    namespace = {"nnx": ljnnx, "linen": ljlinen, "equinox": ljeqx}[framework]
    for kind in ("LSTM", "GRU", "RNN"):
        params = _modules.__dict__[kind].init(jax.random.key(0), INPUT, HIDDEN, num_layers=2)
        params = lj.from_torch(lj.to_torch(params))
        _assert_trees_equal(_held_params(framework, getattr(namespace, kind), params), params)
    weights = lj.init_lstm(jax.random.key(0), INPUT, HIDDEN).layers[0][0]
    for converted in (lj.from_flax(lj.to_flax(weights)), lj.from_keras(lj.to_keras(weights))):
        held = _held_params(framework, namespace.LSTM, converted)
        _assert_trees_equal(held, lj.LSTMParams(((converted,),)))
    rnn_params = lj.init_rnn(jax.random.key(0), INPUT, HIDDEN)
    module = namespace.RNN.from_params(rnn_params, nonlinearity="relu")
    assert (module[0] if framework == "linen" else module).nonlinearity == "relu"


def test_linen_fields_cover_the_init_options():
    for kind, module_cls in (("LSTM", ljlinen.LSTM), ("GRU", ljlinen.GRU), ("RNN", ljlinen.RNN)):
        signature = inspect.signature(_modules.__dict__[kind].init)
        options = {n for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert options <= set(module_cls.__dataclass_fields__), kind


def test_equinox_vmap_over_sequences_equals_the_batched_call():
    model = ljeqx.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, key=jax.random.key(0))
    ys, state = eqx.filter_jit(lambda m: m(XS, seq_lengths=LENGTHS))(model)
    vmapped = jax.vmap(lambda m, x, n: m(x, seq_lengths=n), in_axes=(None, 0, 0))
    ys_v, state_v = eqx.filter_jit(vmapped)(model, XS, LENGTHS)
    np.testing.assert_allclose(ys_v, ys, atol=1e-6)
    # vmap puts the batch axis first; the batched state is (L*D, B, H)
    np.testing.assert_allclose(jnp.moveaxis(state_v.h, 0, 1), state.h, atol=1e-6)
    np.testing.assert_allclose(jnp.moveaxis(state_v.c, 0, 1), state.c, atol=1e-6)


DROPOUT = dict(num_layers=2, dropout=0.5, recurrent_dropout=0.3)
nnx_outputs = nnx.jit(lambda model, xs: model(xs)[0])


def test_nnx_dropout_train_eval_and_seed():
    a = ljnnx.LSTM(INPUT, HIDDEN, rngs=nnx.Rngs(0), **DROPOUT)
    b = ljnnx.LSTM(INPUT, HIDDEN, rngs=nnx.Rngs(0), **DROPOUT)
    c = ljnnx.LSTM(INPUT, HIDDEN, rngs=nnx.Rngs(params=0, dropout=1), **DROPOUT)
    plain, _ = lj.lstm(a.to_params(), XS)
    first, second = nnx_outputs(a, XS), nnx_outputs(a, XS)
    np.testing.assert_array_equal(nnx_outputs(b, XS), first)  # same seed, same masks
    np.testing.assert_array_equal(nnx_outputs(b, XS), second)
    assert not np.allclose(first, second)  # the stream advances
    assert not np.allclose(nnx_outputs(c, XS), first)  # another dropout seed
    assert not np.allclose(first, plain)
    np.testing.assert_allclose(nnx_outputs(nnx.view(a, deterministic=True), XS), plain, atol=1e-6)
    a.eval()
    np.testing.assert_allclose(nnx_outputs(a, XS), plain, atol=1e-6)
    a.train()
    assert not np.allclose(nnx_outputs(a, XS), plain)


def test_linen_dropout_train_eval_and_seed():
    model = ljlinen.LSTM(HIDDEN, **DROPOUT)
    variables = model.init(jax.random.key(0), XS, deterministic=True)
    plain, _ = lj.lstm(variables["params"]["weights"], XS)
    apply = jax.jit(model.apply, static_argnames="deterministic")

    def train(seed):
        return apply(variables, XS, deterministic=False, rngs={"dropout": jax.random.key(seed)})[0]

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), plain)
    np.testing.assert_allclose(apply(variables, XS, deterministic=True)[0], plain, atol=1e-6)
    with pytest.raises(ValueError, match="deterministic"):
        model.apply(variables, XS)


def test_equinox_dropout_train_inference_and_seed():
    model = ljeqx.LSTM(INPUT, HIDDEN, key=jax.random.key(0), **DROPOUT)
    plain, _ = lj.lstm(model.params, XS)
    call = eqx.filter_jit(lambda model, xs, key: model(xs, key=key)[0])
    first = call(model, XS, jax.random.key(1))
    np.testing.assert_array_equal(call(model, XS, jax.random.key(1)), first)
    assert not np.allclose(call(model, XS, jax.random.key(2)), first)
    assert not np.allclose(first, plain)
    np.testing.assert_allclose(call(eqx.nn.inference_mode(model), XS, None), plain, atol=1e-6)
    with pytest.raises(ValueError, match="pass key="):
        model(XS)


# A small task that needs memory: predict the sum of the first feature over time.
TRAIN_XS = jax.random.normal(jax.random.key(5), (32, 8, 2))
TRAIN_YS = TRAIN_XS[..., 0].sum(axis=1)
STEPS = 60


def test_nnx_trains_with_optimizer_and_jit():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = ljnnx.LSTM(2, 16, rngs=rngs)
            self.head = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, xs):
            _, state = self.rnn(xs)
            return self.head(state.h[-1])[:, 0]

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xs, ys):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - ys) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, TRAIN_XS, TRAIN_YS)) for _ in range(STEPS)]
    assert losses[-1] < 0.2 * losses[0], losses[:: STEPS // 6]


def test_linen_trains_with_init_apply_and_jit():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, xs):
            _, state = ljlinen.LSTM(16)(xs)
            return nn.Dense(1)(state.h[-1])[:, 0]

    model = Model()
    params = model.init(jax.random.key(0), TRAIN_XS)["params"]
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xs, ys):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, xs) - ys) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state, TRAIN_XS, TRAIN_YS)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses[:: STEPS // 6]


def test_equinox_trains_with_filter_jit_and_vmap():
    class Model(eqx.Module):
        rnn: ljeqx.LSTM
        head: eqx.nn.Linear

        def __init__(self, key):
            k_rnn, k_head = jax.random.split(key)
            self.rnn = ljeqx.LSTM(2, 16, key=k_rnn)
            self.head = eqx.nn.Linear(16, "scalar", key=k_head)

        def __call__(self, xs):  # one sequence (T, I)
            _, state = self.rnn(xs)
            return self.head(state.h[-1])

    model = Model(jax.random.key(0))
    tx = optax.adam(3e-2)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, xs, ys):
        def loss_fn(model):
            return jnp.mean((jax.vmap(model)(xs) - ys) ** 2)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(STEPS):
        model, opt_state, loss = step(model, opt_state, TRAIN_XS, TRAIN_YS)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses[:: STEPS // 6]


def test_nnx_state_round_trips_through_update_and_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")

    def make(seed):
        return ljnnx.LSTM(INPUT, HIDDEN, num_layers=2, rngs=nnx.Rngs(seed), dropout=0.5)

    model = make(0)
    nnx_outputs(model, XS)  # advance the dropout stream: its state is saved too
    fresh = make(1)
    nnx.update(fresh, nnx.state(model))
    _assert_trees_equal(fresh.to_params(), model.to_params())
    np.testing.assert_array_equal(nnx_outputs(fresh, XS), nnx_outputs(model, XS))

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model))
    checkpointer.wait_until_finished()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: make(1)))
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract_state))
    _assert_trees_equal(restored.to_params(), model.to_params())
    # the same dropout stream position, so the same masks
    np.testing.assert_array_equal(nnx_outputs(restored, XS), nnx_outputs(model, XS))


def test_linen_variables_round_trip_through_flax_serialization():
    model = ljlinen.LSTM(HIDDEN, proj_size=3, layer_norm=True)
    variables = model.init(jax.random.key(0), XS)
    template = model.init(jax.random.key(1), XS)
    restored = serialization.from_bytes(template, serialization.to_bytes(variables))
    assert isinstance(restored["params"]["weights"], lj.LSTMParams)
    _assert_trees_equal(restored, variables)
    _assert_trees_equal(model.apply(restored, XS), model.apply(variables, XS))
    rebuilt = ljlinen.LSTM.variables_from_params(variables["params"]["weights"])
    _assert_trees_equal(rebuilt, variables)


def test_equinox_round_trips_through_tree_serialise_leaves():
    model = ljeqx.GRU(INPUT, HIDDEN, num_layers=2, bidirectional=True, key=jax.random.key(0))
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    buffer.seek(0)
    like = ljeqx.GRU(INPUT, HIDDEN, num_layers=2, bidirectional=True, key=jax.random.key(1))
    restored = eqx.tree_deserialise_leaves(buffer, like)
    _assert_trees_equal(restored.params, model.params)
    _assert_trees_equal(restored(XS), model(XS))


def test_import_lstm_jax_imports_no_framework():
    code = (
        "import sys, lstm_jax\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'equinox'})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "module,framework,extra",
    [("nnx", "flax", "flax"), ("linen", "flax", "flax"), ("equinox", "equinox", "equinox")],
)
def test_missing_framework_names_the_extra(module, framework, extra, monkeypatch):
    for name in list(sys.modules):
        if name == framework or name.startswith(framework + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import flax` fail
    monkeypatch.delitem(sys.modules, f"lstm_jax.{module}")
    with pytest.raises(ImportError, match=rf"pip install 'lstm_jax\[{extra}\]'"):
        importlib.import_module(f"lstm_jax.{module}")


@pytest.mark.slow
def test_modules_demo_quick():
    pytest.importorskip("sklearn")
    root = __file__.rsplit("/tests/", 1)[0]
    proc = subprocess.run(
        [sys.executable, f"{root}/examples/modules_demo.py", "--quick"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("nnx", "linen", "equinox"):
        assert f"{name:8s} train loss" in proc.stdout, proc.stdout


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resets_and_mask_equal_the_functional_call(framework):
    params, call = build(framework, "LSTM", dict(bidirectional=True))
    time = jnp.arange(XS.shape[1])
    resets = (time[None, :] == jnp.array([[2], [1], [4]])) | (time[None, :] == 0)
    mask = (time[None, :] + jnp.arange(3)[:, None]) % 3 != 1
    kw = dict(resets=resets, mask=mask, seq_lengths=LENGTHS)
    out = call(XS, **kw)
    _assert_trees_equal(out, lj.lstm(params, XS, **kw))
    plain = call(XS, seq_lengths=LENGTHS)
    assert not np.allclose(out[0], plain[0])  # resets and mask took effect

"""Tests of lstm_jax.parallel: sharded training equals single-device training.

Multi-device runs happen in fresh processes (tests/_distributed_worker.py):
the device count is fixed when JAX's backend starts, and this pytest process
may already have started it with one CPU device. The single-device reference
is computed here, with plain ``jax.jit`` and without ``lstm_jax.parallel``.

Select them with ``pytest -k "shard or distributed or parallel"``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec

import lstm_jax as lj
from lstm_jax import parallel

sys.path.insert(0, os.path.dirname(__file__))
import _distributed_worker as worker  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "_distributed_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-6  # measured: <= 1.2e-7 on the losses, <= 6e-8 on the params
WORKER_TIMEOUT_S = 300


def _env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
    }
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _load(out_dir, mode: str):
    with open(os.path.join(out_dir, f"{mode}.json")) as f:
        facts = json.load(f)
    with np.load(os.path.join(out_dir, f"{mode}.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, facts


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_REFERENCE_STEP = jax.jit(worker.train_step)


@pytest.fixture(scope="module")
def reference(workers):
    """Single-device losses and final params for each batch size the workers use.

    Computed here, with plain ``jax.jit``, while the workers run (``workers``
    starts them first, so their compilations overlap with these).
    """
    del workers
    out = {}
    for size in sorted({c[1] for c in [*worker.LOCAL_CASES.values(), *worker.DISTRIBUTED_CASES.values()]}):
        state, losses = worker.init_state(), []
        for batch in worker.make_batches(size):
            state, loss = _REFERENCE_STEP(state, {**batch, "weights": np.ones(size, np.float32)})
            losses.append(float(loss))
        out[size] = (np.array(losses), worker.flat(state.params))
    return out


class _Workers:
    """Worker processes started at once, in the background; results on demand."""

    def __init__(self, out_dir, *, local: bool, distributed: bool):
        self.out_dir = str(out_dir)
        self.deadline = time.monotonic() + WORKER_TIMEOUT_S
        self.procs: dict[str, list] = {}
        if local:
            self._start("local", [], XLA_FLAGS="--xla_force_host_platform_device_count=4")
        if distributed:
            port = str(_free_port())
            # process 0 gets its coordinates as arguments, process 1 from the
            # environment variables of the documented launch
            self._start("distributed", ["--port", port, "--process-id", "0", "--num-processes", "2"])
            self._start(
                "distributed", [],
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1",
            )  # fmt: skip

    def _start(self, mode, args, **env):
        entries = self.procs.setdefault(mode, [])
        log_path = os.path.join(self.out_dir, f"{mode}{len(entries)}.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, WORKER, mode, *args, "--out", self.out_dir],
                env=_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        entries.append((proc, log_path))

    def result(self, mode):
        """Wait for ``mode``'s processes (bounded), check they succeeded, load their output."""
        entries = self.procs[mode]
        try:
            codes = [
                proc.wait(timeout=max(1.0, self.deadline - time.monotonic())) for proc, _ in entries
            ]
        except subprocess.TimeoutExpired:
            self.kill()
            codes = [proc.returncode for proc, _ in entries]
        if codes != [0] * len(entries):
            logs = []
            for _, log_path in entries:
                with open(log_path) as log:
                    logs.append(log.read()[-3000:])
            pytest.fail(f"{mode} worker exit codes {codes} (-9: killed at the time limit):\n" + "\n".join(logs))
        return _load(self.out_dir, mode)

    def kill(self):
        for entries in self.procs.values():
            for proc, _ in entries:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def workers(request, tmp_path_factory):
    """Starts the worker processes the selected tests need, and always stops them."""
    names = {item.originalname for item in request.session.items}
    handle = _Workers(
        tmp_path_factory.mktemp("parallel_workers"),
        local=bool(names & {"test_sharded_step_equals_single_device", "test_parallel_sharding_rules_on_4_devices"}),
        distributed="test_distributed_two_processes_equal_single_process" in names,
    )
    yield handle
    handle.kill()


def _check_case(arrays, facts, name, reference, *, data, model, batch):
    losses, params = reference[batch]
    loss_error = np.max(np.abs(arrays[f"{name}/losses"] - losses))
    param_error = np.max(np.abs(arrays[f"{name}/params"] - params))
    assert loss_error <= TOLERANCE, (name, loss_error)
    assert param_error <= TOLERANCE, (name, param_error)
    case = facts[name]
    padded = -(-batch // data) * data
    assert case["mesh"] == {"data": data, "model": model}
    assert case["padded_batch"] == padded
    assert case["weights"] == [1.0] * batch + [0.0] * (padded - batch)
    assert case["batch_shards"] == 4 and case["batch_spec_is_data"]
    # the gate axis (4H = 32) of params and of the optimizer's momentum is split over model
    assert case["w_ih_spec_is_model"] == (model > 1)
    assert case["w_ih_shard_shape"] == [worker.INPUT, 4 * worker.HIDDEN // model]
    assert case["momentum_w_hh_shard_shape"] == [worker.HIDDEN, 4 * worker.HIDDEN // model]
    assert case["head_w_replicated"]
    # the state keeps its layout from step to step: the second step does not recompile
    # (None: built by lstm_jax.training.make_train_step(mesh=...), jitted on first call)
    assert case["cache_sizes"][0] == case["cache_sizes"][-1], case["cache_sizes"]


@pytest.mark.parametrize("name", list(worker.LOCAL_CASES))
def test_sharded_step_equals_single_device(workers, reference, name):
    arrays, facts = workers.result("local")
    assert facts["device_count"] == 4
    model, batch, *_ = worker.LOCAL_CASES[name]
    _check_case(arrays, facts, name, reference, data=4 // model, model=model, batch=batch)


def test_parallel_sharding_rules_on_4_devices(workers):
    rules = workers.result("local")[1]["rules"]
    assert all(rules["gru_specs"]) and len(rules["gru_specs"]) == 4
    assert all(rules["rnn_specs"]) and len(rules["rnn_specs"]) == 3
    assert rules["lstmp_w_hr_replicated"] and rules["lstmp_none_stay_none"]
    assert "GRUWeights.w_ih has 15 gate units" in rules["indivisible_error"]
    assert "pad_batch_to_multiple(batch, 2)" in rules["shard_batch_error"]


def test_distributed_two_processes_equal_single_process(workers, reference):
    """Two processes on 127.0.0.1 join one run; a global 2 x 2 mesh spans them."""
    arrays, facts = workers.result("distributed")
    assert (facts["process_count"], facts["device_count"], facts["local_device_count"]) == (2, 4, 2)
    for name, (model, batch, *_) in worker.DISTRIBUTED_CASES.items():
        _check_case(arrays, facts, name, reference, data=4 // model, model=model, batch=batch)


# ---------------------------------------------------------- in this process


def test_parallel_pad_batch_to_multiple_repeats_last_example():
    batch = {
        "xs": np.arange(15, dtype=np.float32).reshape(5, 3),
        "seq_lengths": np.array([3, 1, 2, 3, 2], np.int32),
    }
    padded, weights = parallel.pad_batch_to_multiple(batch, 4)
    assert isinstance(padded["xs"], np.ndarray) and isinstance(weights, np.ndarray)
    np.testing.assert_array_equal(padded["xs"][:5], batch["xs"])
    np.testing.assert_array_equal(padded["xs"][5:], np.repeat(batch["xs"][-1:], 3, axis=0))
    assert padded["seq_lengths"].tolist() == [3, 1, 2, 3, 2, 2, 2, 2]
    assert weights.dtype == np.float32 and weights.tolist() == [1.0] * 5 + [0.0] * 3
    same, ones = parallel.pad_batch_to_multiple(batch, 5)
    assert same["xs"] is batch["xs"] and ones.tolist() == [1.0] * 5


def test_parallel_pad_batch_to_multiple_under_jit():
    @jax.jit
    def pad(xs):
        return parallel.pad_batch_to_multiple({"xs": xs}, 4)

    padded, weights = pad(jnp.ones((3, 2)))
    assert padded["xs"].shape == (4, 2) and weights.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_parallel_pad_batch_to_multiple_errors():
    with pytest.raises(ValueError, match="multiple must be an integer >= 1, got 0"):
        parallel.pad_batch_to_multiple({"xs": np.ones((3, 2))}, 0)
    with pytest.raises(ValueError, match=r"same leading \(batch\) size, got \[2, 3\]"):
        parallel.pad_batch_to_multiple({"a": np.ones((3, 2)), "b": np.ones(2)}, 2)
    with pytest.raises(ValueError, match="needs a leading batch axis; found a scalar"):
        parallel.pad_batch_to_multiple({"a": np.ones(3), "b": np.float32(1.0)}, 2)
    with pytest.raises(ValueError, match="batch is empty"):
        parallel.pad_batch_to_multiple({"xs": np.ones((0, 2))}, 2)
    with pytest.raises(ValueError, match="batch has no arrays"):
        parallel.pad_batch_to_multiple({}, 2)


def test_parallel_padded_weighted_loss_and_grads_equal_unpadded(reference):
    """Padding examples with weight 0 changes neither the loss nor the gradients.

    After one SGD-with-momentum step from zero momentum, the momentum trace is
    the gradient. (``reference`` only orders this after the shapes compiled.)
    """
    del reference
    batch = worker.make_batches(5)[0]
    padded, weights = parallel.pad_batch_to_multiple(batch, 4)
    state, loss = _REFERENCE_STEP(worker.init_state(), {**batch, "weights": np.ones(5, np.float32)})
    padded_state, padded_loss = _REFERENCE_STEP(worker.init_state(), {**padded, "weights": weights})
    np.testing.assert_allclose(padded_loss, loss, rtol=0, atol=TOLERANCE)
    grads, padded_grads = state.opt_state[0].trace, padded_state.opt_state[0].trace
    assert np.max(np.abs(worker.flat(grads))) > 1e-3
    np.testing.assert_allclose(worker.flat(padded_grads), worker.flat(grads), rtol=0, atol=TOLERANCE)
    # control: counting the padding (weight 1) does change the loss
    _, counted = _REFERENCE_STEP(worker.init_state(), {**padded, "weights": np.ones(8, np.float32)})
    assert abs(float(counted) - float(loss)) > 1e-3


def test_parallel_make_mesh_on_one_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
    with pytest.raises(ValueError, match="model_parallel must be an integer >= 1, got 0"):
        parallel.make_mesh(model_parallel=0)
    with pytest.raises(ValueError, match=r"model_parallel=2 must divide the number of devices \(1\)"):
        parallel.make_mesh(jax.devices()[:1], model_parallel=2)
    with pytest.raises(ValueError, match="devices is empty"):
        parallel.make_mesh([])


def test_parallel_param_sharding_structure():
    mesh = parallel.make_mesh(jax.devices()[:1])
    init = jax.jit(lambda key: lj.init_lstm(key, 3, 4, proj_size=2, bidirectional=True))
    params = init(jax.random.key(0))
    state = (params, optax.adam(1e-3).init(params))
    shardings = parallel.param_sharding(state, mesh)
    # same structure, None entries stay None, one sharding per array
    assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(state)
    assert shardings[0].layers[0][1].w_peep is None and shardings[0].layers[0][1].ln is None
    assert all(s.spec == PartitionSpec() for s in jax.tree_util.tree_leaves(shardings))
    placed = parallel.shard_params(state, mesh)
    for a, b in zip(jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    other = Mesh(np.array(jax.devices()[:1]), ("x",))
    with pytest.raises(ValueError, match=r"mesh has axes \('x',\) but no 'data' axis"):
        parallel.param_sharding(params, other)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        parallel.data_sharding("data")


def test_parallel_training_make_train_step_mesh_excludes_jit_shardings():
    from lstm_jax import training

    with pytest.raises(ValueError, match="pass mesh or jax.jit shardings, not both"):
        training.make_train_step(
            lambda p, b, k: (0.0, {}), optax.sgd(0.1), mesh=parallel.make_mesh(), in_shardings=None
        )

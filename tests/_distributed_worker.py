"""Runs sharded training steps in a fresh process for tests/test_parallel.py.

A fresh process is needed because the number of (fake) CPU devices is fixed
when JAX's backend starts, and the pytest process may already have started it
with one device. Two modes:

  python tests/_distributed_worker.py local --out DIR
      one process with 4 CPU devices (XLA_FLAGS set by the caller): every case
      in LOCAL_CASES, written to DIR/local.npz and DIR/local.json.

  python tests/_distributed_worker.py distributed --out DIR --port P \
      --process-id I --num-processes 2
      one of two processes (2 CPU devices each) joined by
      ``jax.distributed.initialize`` on 127.0.0.1:P; a global mesh over the 4
      devices; process 0 writes DIR/distributed.npz and DIR/distributed.json.
      Without --port, the coordinator address, process count and process id
      come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.

The problem (model, data, loss, optimizer) is defined here once and imported
by the test, which computes the single-device reference in its own process
with plain ``jax.jit`` and no ``lstm_jax.parallel``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np

INPUT, HIDDEN, CLASSES, TIME = 3, 8, 5, 6
NUM_STEPS = 2
LEARNING_RATE, MOMENTUM = 0.5, 0.9

# name -> (model_parallel, real batch size, process_local, how the step is built):
# "jit": parallel.shard_train_step(train_step, mesh, state);
# "training": lstm_jax.training.make_train_step(..., mesh=mesh), which calls
# parallel.shard_train_step without an example state (jitted on first call).
LOCAL_CASES = {
    "data": (1, 8, False, "jit"),
    "ragged_data": (1, 5, False, "jit"),
    "data_model": (2, 8, False, "jit"),
    "ragged_data_model": (2, 5, False, "training"),
}
# The data axis spans both processes, the model axis stays within each.
DISTRIBUTED_CASES = {
    "ragged_data_model": (2, 5, False, "jit"),
    "ragged_data_model_process_local": (2, 5, True, "jit"),
}


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def make_batches(batch_size: int, seed: int = 0) -> list[dict]:
    """NUM_STEPS ragged numpy batches: xs (B, T, I), seq_lengths (B,), targets (B, T)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "xs": rng.standard_normal((batch_size, TIME, INPUT)).astype(np.float32),
            "seq_lengths": rng.integers(1, TIME + 1, size=batch_size).astype(np.int32),
            "targets": rng.integers(0, CLASSES, size=(batch_size, TIME)).astype(np.int32),
        }
        for _ in range(NUM_STEPS)
    ]


def init_params() -> dict:
    """Host (numpy) params of a bidirectional, layer-normalised LSTM and a dense head.

    Drawn with numpy so that no process compiles anything to build them and
    every process gets the same values.
    """
    import jax

    import lstm_jax as lj

    shapes = jax.eval_shape(
        lambda: lj.init_lstm(jax.random.key(0), INPUT, HIDDEN, bidirectional=True, layer_norm=True)
    )
    rng = np.random.default_rng(1)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rnn = jax.tree_util.tree_unflatten(
        treedef, [(0.4 * rng.standard_normal(x.shape)).astype(np.float32) for x in leaves]
    )
    head = {
        "w": (0.4 * rng.standard_normal((2 * HIDDEN, CLASSES))).astype(np.float32),
        "b": (0.1 * rng.standard_normal((CLASSES,))).astype(np.float32),
    }
    return {"rnn": rnn, "head": head}


def init_state() -> TrainState:
    import jax

    params = init_params()
    return TrainState(params, jax.tree_util.tree_map(np.asarray, optimizer().init(params)))


def optimizer():
    import optax

    return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


def loss_fn(params, batch):
    """Token cross-entropy, masked past each length and weighted per example.

    Normalised by the weighted number of valid tokens, so padded examples
    (weight 0) change neither the value nor the gradients.
    """
    import jax.numpy as jnp
    import optax

    import lstm_jax as lj

    ys, _ = lj.lstm(params["rnn"], batch["xs"], seq_lengths=batch["seq_lengths"])  # [B, T, 2H]
    logits = ys @ params["head"]["w"] + params["head"]["b"][None, None, :]  # [B, T, C]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # [B, T]
    valid = jnp.arange(TIME)[None, :] < batch["seq_lengths"][:, None]  # [B, T]
    mask = valid.astype(ce.dtype) * batch["weights"][:, None]  # [B, T]
    return jnp.sum(ce * mask) / jnp.sum(mask)


def train_step(state: TrainState, batch):
    import jax
    import optax

    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = optimizer().update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), loss


def flat(tree) -> np.ndarray:
    """All leaves of ``tree`` (fully addressable) as one float64 vector."""
    import jax

    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


def training_step_and_state(mesh):
    """The same problem through lstm_jax.training: its TrainState and train-step factory."""
    import jax

    from lstm_jax import parallel, training

    state = training.init_train_state(init_params(), optimizer(), jax.random.key(0))
    step = training.make_train_step(
        lambda params, batch, key: (loss_fn(params, batch), {}), optimizer(), mesh=mesh
    )
    return (lambda state, batch: _loss_only(*step(state, batch))), parallel.shard_params(state, mesh)


def _loss_only(state, metrics):
    return state, metrics["loss"]


def run_case(
    model_parallel: int, batch_size: int, process_local: bool, how: str
) -> tuple[dict, dict]:
    """Two sharded train steps; returns (arrays, facts about the placement)."""
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import PartitionSpec as P

    from lstm_jax import parallel

    mesh = parallel.make_mesh(model_parallel=model_parallel)
    data = mesh.shape["data"]
    if how == "training":
        step, state = training_step_and_state(mesh)
    else:
        state = parallel.shard_params(init_state(), mesh)
        step = parallel.shard_train_step(train_step, mesh, state)
    losses, facts = [], {"cache_sizes": []}
    for batch in make_batches(batch_size):
        padded, weights = parallel.pad_batch_to_multiple(batch, data)
        padded = {**padded, "weights": weights}
        if process_local:
            rows = padded["xs"].shape[0] // jax.process_count()
            start = jax.process_index() * rows
            local = {k: v[start : start + rows] for k, v in padded.items()}
            sharded = parallel.shard_batch(local, mesh, process_local=True)
        else:
            sharded = parallel.shard_batch(padded, mesh)
        state, loss = step(state, sharded)
        losses.append(float(loss))
        facts["cache_sizes"].append(step._cache_size() if how == "jit" else None)
        facts["padded_batch"] = int(padded["xs"].shape[0])
        facts["weights"] = np.asarray(weights).tolist()
        facts["batch_shards"] = len(sharded["xs"].sharding.device_set)
        facts["batch_spec_is_data"] = sharded["xs"].sharding.spec == P("data")
    w_ih = state.params["rnn"].layers[0][0].w_ih
    momentum_w_hh = state.opt_state[0].trace["rnn"].layers[0][1].w_hh
    facts["mesh"] = dict(mesh.shape)
    facts["w_ih_spec_is_model"] = w_ih.sharding.spec == P(None, "model")
    facts["w_ih_shard_shape"] = list(w_ih.sharding.shard_shape(w_ih.shape))
    facts["momentum_w_hh_shard_shape"] = list(momentum_w_hh.sharding.shard_shape(momentum_w_hh.shape))
    facts["head_w_replicated"] = state.params["head"]["w"].sharding.is_fully_replicated
    params = multihost_utils.process_allgather(state.params, tiled=True)
    return {"losses": np.array(losses), "params": flat(params)}, facts


def sharding_rule_facts() -> dict:
    """param_sharding on GRU/RNN params and its error, on a 2 x 2 mesh."""
    import jax
    from jax.sharding import PartitionSpec as P

    import lstm_jax as lj
    from lstm_jax import parallel

    mesh = parallel.make_mesh(model_parallel=2)
    key = jax.random.key(0)
    shapes = lambda init, *args, **kwargs: jax.eval_shape(lambda: init(key, *args, **kwargs))  # noqa: E731
    gru = parallel.param_sharding(shapes(lj.init_gru, 3, 4), mesh).layers[0][0]
    rnn = parallel.param_sharding(shapes(lj.init_rnn, 3, 4), mesh).layers[0][0]
    lstmp = parallel.param_sharding(shapes(lj.init_lstm, 3, 4, proj_size=2), mesh).layers[0][0]
    facts = {
        "gru_specs": [s.spec == e for s, e in zip(gru, [P(None, "model"), P(None, "model"), P("model"), P("model")])],
        "rnn_specs": [s.spec == e for s, e in zip(rnn, [P(None, "model"), P(None, "model"), P("model")])],
        "lstmp_w_hr_replicated": lstmp.w_hr.spec == P(),
        "lstmp_none_stay_none": lstmp.w_peep is None and lstmp.ln is None,
    }
    try:
        parallel.param_sharding(shapes(lj.init_gru, 3, 5), mesh)
        facts["indivisible_error"] = ""
    except ValueError as error:
        facts["indivisible_error"] = str(error)
    try:
        parallel.shard_batch({"xs": np.ones((3, 2), np.float32)}, mesh)
        facts["shard_batch_error"] = ""
    except ValueError as error:
        facts["shard_batch_error"] = str(error)
    return facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["local", "distributed"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--num-processes", type=int)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_platforms", "cpu")
    if args.mode == "distributed":
        jax.config.update("jax_num_cpu_devices", 2)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        from lstm_jax import parallel

        parallel.initialize_distributed(
            None if args.port is None else f"127.0.0.1:{args.port}",
            args.num_processes,
            args.process_id,
            initialization_timeout=60,
            heartbeat_timeout_seconds=30,
            shutdown_timeout_seconds=30,
        )
        cases = DISTRIBUTED_CASES
    else:
        cases = LOCAL_CASES
    arrays, facts = {}, {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }
    started = time.perf_counter()
    for name, config in cases.items():
        case_arrays, facts[name] = run_case(*config)
        facts[name]["seconds"] = round(time.perf_counter() - started, 2)
        arrays.update({f"{name}/{k}": v for k, v in case_arrays.items()})
    if args.mode == "local":
        facts["rules"] = sharding_rule_facts()
    if jax.process_index() == 0:
        np.savez(os.path.join(args.out, f"{args.mode}.npz"), **arrays)
        with open(os.path.join(args.out, f"{args.mode}.json"), "w") as f:
            json.dump(facts, f, indent=1)
    if args.mode == "distributed":
        jax.distributed.shutdown()
    print(f"worker {args.mode} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

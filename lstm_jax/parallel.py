"""Scale-out with ``jax.sharding``: one train step over many devices and hosts.

The same pure train step runs on one device, on every device of a host, or on
every device of many hosts; only where the arrays live changes. Nothing here
rewrites the model: ``jax.jit`` with input and output shardings lets XLA split
the computation and insert the collectives (the gradient all-reduce over
``data``, the gathers over ``model``).

Mesh axes:
  ``data``   the batch axis of every batch array is split over it; parameters
             and optimizer state are replicated over it.
  ``model``  (optional, ``model_parallel > 1``) the gate axis of the
             recurrent layers -- the last axis of ``w_ih (I, G*H)``,
             ``w_hh (R, G*H)``, the biases ``(G*H,)`` and the layer-norm gains
             of the gate pre-activations -- is split over it (G = 4 LSTM,
             3 GRU, 1 RNN). Every other array is replicated. This divides the
             memory of parameters and optimizer state of very wide layers,
             at a price in time: the gate math needs all four gates of a
             unit, so every scan iteration communicates over ``model`` (in
             the compiled LSTM step an all-gather plus all-reduces per time
             step, forward and backward), whereas ``data`` alone costs one
             gradient all-reduce per step.

Ragged batches: :func:`pad_batch_to_multiple` pads the batch axis to a
multiple of the ``data`` size by repeating the last example, and returns
per-example weights (1 real, 0 padding). A loss that weights each example by
them (and normalises by the weighted count) has the value and the gradients of
the unpadded batch; no example is dropped. Repeating a real example keeps every
field valid (``seq_lengths`` stays in ``1..T``, labels stay in range).

Multi-host: call :func:`initialize_distributed` first in every process (one
process per host, or per accelerator group), then build the mesh over
``jax.devices()`` -- all devices of all processes. Every process runs the same
program; :func:`shard_params` and :func:`shard_batch` place each process's
part of the global arrays.

Example, single host (every local device on ``data``):

>>> import jax, jax.numpy as jnp, optax, lstm_jax as lj
>>> from lstm_jax import parallel
>>> mesh = parallel.make_mesh()
>>> params = parallel.shard_params(lj.init_lstm(jax.random.key(0), 3, 8), mesh)
>>> batch = {"xs": jnp.ones((5, 7, 3)), "seq_lengths": jnp.array([7, 3, 5, 1, 2])}
>>> batch, weights = parallel.pad_batch_to_multiple(batch, mesh.shape["data"])
>>> batch = parallel.shard_batch({**batch, "weights": weights}, mesh)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lstm_jax.params import GRUWeights, LayerNormWeights, LSTMWeights, RNNWeights

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "data_sharding",
    "initialize_distributed",
    "make_mesh",
    "pad_batch_to_multiple",
    "param_sharding",
    "replicated",
    "shard_batch",
    "shard_params",
    "shard_train_step",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"

_WEIGHT_TYPES = (LSTMWeights, GRUWeights, RNNWeights)
# Fields whose LAST axis is the gate axis (G*H), split over ``model``.
_GATE_FIELDS = frozenset({"w_ih", "w_hh", "b", "b_ih", "b_hh"})
_LN_GATE_FIELDS = frozenset({"ih_scale", "hh_scale"})


def make_mesh(
    devices: Optional[Sequence[jax.Device]] = None, *, model_parallel: int = 1
) -> Mesh:
    """A ``(data, model)`` device mesh.

    Args:
      devices: the devices to use; ``jax.devices()`` (every device of every
        process) if None.
      model_parallel: size of the ``model`` axis, which must divide the number
        of devices; the ``data`` axis gets the rest. Neighbouring devices in
        ``devices`` share a ``model`` group, so keep it within a host.

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(n // model_parallel,
      model_parallel)`` with axis names ``("data", "model")`` (``Auto`` axis
      types: ``jit`` propagates shardings).

    >>> mesh = make_mesh(jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1, 'model': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass at least one device (or None for all).")
    if isinstance(model_parallel, bool) or not isinstance(model_parallel, int) or model_parallel < 1:
        raise ValueError(f"model_parallel must be an integer >= 1, got {model_parallel!r}.")
    if len(devices) % model_parallel:
        raise ValueError(
            f"model_parallel={model_parallel} must divide the number of devices "
            f"({len(devices)}); choose a divisor of {len(devices)}."
        )
    grid = np.array(devices, dtype=object).reshape(len(devices) // model_parallel, model_parallel)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array with a full copy on every device of ``mesh``.

    >>> replicated(make_mesh(jax.devices()[:1])).spec == PartitionSpec()
    True
    """
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch array: axis 0 split over ``data``, the rest replicated.

    >>> data_sharding(make_mesh(jax.devices()[:1])).spec == PartitionSpec("data")
    True
    """
    _check_axis(mesh, DATA_AXIS)
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _check_axis(mesh: Any, name: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (from make_mesh), got {type(mesh).__name__}.")
    if name not in mesh.axis_names:
        raise ValueError(
            f"mesh has axes {mesh.axis_names} but no {name!r} axis; build it with make_mesh()."
        )


def _model_size(mesh: Mesh) -> int:
    return mesh.shape[MODEL_AXIS] if MODEL_AXIS in mesh.axis_names else 1


def _gate_split(mesh: Mesh, value: Any, where: str) -> NamedSharding:
    """Split the last axis of ``value`` over ``model`` (replicate when it has size 1)."""
    size = _model_size(mesh)
    if size == 1:
        return replicated(mesh)
    gates = value.shape[-1]
    if gates % size:
        raise ValueError(
            f"{where} has {gates} gate units on its last axis, which the model axis "
            f"(size {size}) does not divide; use a model_parallel that divides {gates}."
        )
    return NamedSharding(mesh, PartitionSpec(*([None] * (value.ndim - 1)), MODEL_AXIS))


def _weights_sharding(mesh: Mesh, weights: Any) -> Any:
    """The sharding of one layer-direction's weights, field by field (None stays None)."""
    name = type(weights).__name__

    def field(field_name, value):
        if value is None:
            return None
        if isinstance(value, LayerNormWeights):
            return LayerNormWeights(
                *(
                    _gate_split(mesh, v, f"{name}.ln.{n}") if n in _LN_GATE_FIELDS else replicated(mesh)
                    for n, v in zip(LayerNormWeights._fields, value)
                )
            )
        if field_name in _GATE_FIELDS:
            return _gate_split(mesh, value, f"{name}.{field_name}")
        return replicated(mesh)

    return type(weights)(*(field(n, v) for n, v in zip(weights._fields, weights)))


def param_sharding(tree: Any, mesh: Mesh) -> Any:
    """Shardings for params, optimizer state, or a whole train state.

    Every :class:`LSTMWeights`, :class:`GRUWeights` or :class:`RNNWeights` in
    ``tree`` -- including the copies inside an Optax state (momentum, Adam's
    ``mu``/``nu``) -- gets its gate axis split over ``model`` (``w_ih``,
    ``w_hh``: ``P(None, "model")``; biases and layer-norm gate gains:
    ``P("model")``); every other array (projections, peepholes, a dense head,
    step counters, PRNG keys) is replicated. With a ``model`` axis of size 1
    everything is replicated: plain data parallelism.

    Args:
      tree: any pytree of arrays; ``None`` entries stay ``None``.
      mesh: from :func:`make_mesh`.

    Returns:
      A pytree of :class:`jax.sharding.NamedSharding` with the structure of
      ``tree``, usable as ``jax.jit`` ``in_shardings``/``out_shardings`` or
      with ``jax.device_put``.

    >>> import lstm_jax as lj
    >>> params = lj.init_lstm(jax.random.key(0), 3, 8)
    >>> param_sharding(params, make_mesh(jax.devices()[:1])).layers[0][0].w_ih.spec == PartitionSpec()
    True
    """
    _check_axis(mesh, DATA_AXIS)
    return jax.tree_util.tree_map(
        lambda x: _weights_sharding(mesh, x) if isinstance(x, _WEIGHT_TYPES) else replicated(mesh),
        tree,
        is_leaf=lambda x: isinstance(x, _WEIGHT_TYPES),
    )


def _place(tree: Any, shardings: Any) -> Any:
    """Put host values (the same on every process) onto possibly multi-process shardings."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def place(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place, tree, shardings)


def shard_params(tree: Any, mesh: Mesh) -> Any:
    """Place params (or an optimizer / train state) on ``mesh`` with :func:`param_sharding`.

    In a multi-process run every process must pass the same values (e.g.
    initialised from the same key); each keeps only its devices' parts.

    >>> import lstm_jax as lj
    >>> params = shard_params(lj.init_lstm(jax.random.key(0), 3, 8), make_mesh())
    >>> params.layers[0][0].w_hh.shape
    (8, 32)
    """
    return _place(tree, param_sharding(tree, mesh))


def _batch_size(batch: Any, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(f"{name} has no arrays.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes:
        raise ValueError(f"every array of {name} needs a leading batch axis; found a scalar.")
    if len(sizes) != 1:
        raise ValueError(
            f"every array of {name} must have the same leading (batch) size, got {sorted(sizes)}."
        )
    return sizes.pop()


def pad_batch_to_multiple(batch: Any, multiple: int) -> tuple[Any, Any]:
    """Pad the batch axis to a multiple of ``multiple``; the padding has weight 0.

    Padding repeats the last example, so every field stays valid (lengths in
    ``1..T``, labels in range). Weight each example's loss by the returned
    weights and normalise by their (length-weighted) sum: value and gradients
    then equal those of the unpadded batch. Works on numpy arrays (stays on
    the host) and, with static shapes, on jax arrays under ``jit``.

    Args:
      batch: pytree of arrays with a common leading batch axis ``B``, e.g.
        ``{"xs": (B, T, I), "seq_lengths": (B,), "targets": (B, T)}``.
      multiple: e.g. ``mesh.shape["data"]``.

    Returns:
      ``(padded, weights)``: ``padded`` has leading size ``B' = ceil(B /
      multiple) * multiple``; ``weights`` is ``(B',)`` float32, 1 for the ``B``
      real examples, 0 after them.

    >>> batch, weights = pad_batch_to_multiple({"seq_lengths": np.array([3, 1, 2])}, 4)
    >>> batch["seq_lengths"].tolist(), weights.tolist()
    ([3, 1, 2, 2], [1.0, 1.0, 1.0, 0.0])
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be an integer >= 1, got {multiple!r}.")
    size = _batch_size(batch, "batch")
    if size == 0:
        raise ValueError("batch is empty (leading size 0); there is nothing to pad.")
    padded_size = -(-size // int(multiple)) * int(multiple)
    extra = padded_size - size
    host = all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(batch))
    xp = np if host else jnp

    def pad(x):
        if extra == 0:
            return x
        last = xp.repeat(x[-1:], extra, axis=0)
        return xp.concatenate([x, last], axis=0)

    weights = (xp.arange(padded_size) < size).astype(np.float32)  # [B']
    return jax.tree_util.tree_map(pad, batch), weights


def shard_batch(batch: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
    """Split the leading (batch) axis of every array of ``batch`` over ``data``.

    Args:
      batch: pytree of arrays with a common leading size ``B``, a multiple of
        the ``data`` size (see :func:`pad_batch_to_multiple`).
      mesh: from :func:`make_mesh`.
      process_local: False: every process passes the same global batch (any
        single-process run). True: each process passes only its own slice of
        the global batch -- ``B / process_count`` consecutive examples, in
        process order -- as a per-host data loader produces it.

    Returns:
      The same pytree of global ``jax.Array`` s sharded like
      :func:`data_sharding`.

    >>> mesh = make_mesh()
    >>> batch, weights = pad_batch_to_multiple({"xs": np.ones((5, 7, 3), np.float32)}, mesh.size)
    >>> x = shard_batch(batch, mesh)["xs"]
    >>> x.shape[1:], x.sharding.spec == PartitionSpec("data")
    ((7, 3), True)
    """
    sharding = data_sharding(mesh)
    size = _batch_size(batch, "batch")
    if process_local:
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
        )
    data = mesh.shape[DATA_AXIS]
    if size % data:
        raise ValueError(
            f"batch size {size} is not a multiple of the data axis size {data}; "
            f"pad it first: batch, weights = pad_batch_to_multiple(batch, {data})."
        )
    return _place(batch, jax.tree_util.tree_map(lambda _: sharding, batch))


def shard_train_step(
    step: Callable[[Any, Any], tuple[Any, Any]],
    mesh: Mesh,
    state: Any = None,
    *,
    donate_state: bool = False,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``jax.jit`` a train step ``step(state, batch) -> (state, aux)`` over ``mesh``.

    The state (params, optimizer state, counters; any pytree) is laid out by
    :func:`param_sharding` on the way in and out, so it keeps its layout from
    step to step; the batch is split over ``data``; ``aux`` (loss, metrics)
    comes back replicated. Inside, ``step`` is the unchanged single-device
    function: a mean over the batch becomes an all-reduce over ``data``.

    Args:
      step: pure function ``(state, batch) -> (new_state, aux)``.
      mesh: from :func:`make_mesh`.
      state: an example state (arrays or ``jax.ShapeDtypeStruct``), used for
        its structure and shapes only. If None, the step is jitted on its first
        call from the state it gets (once per state structure and shapes).
      donate_state: donate the input state's buffers to the output.

    Returns:
      The jitted step. Pass it a state placed with :func:`shard_params` and a
      batch placed with :func:`shard_batch` (required across processes).

    >>> import optax, lstm_jax as lj
    >>> mesh = make_mesh()
    >>> params = shard_params(lj.init_lstm(jax.random.key(0), 3, 8), mesh)
    >>> def step(params, batch):
    ...     loss, grads = jax.value_and_grad(
    ...         lambda p: jnp.mean(lj.lstm(p, batch["xs"])[0] ** 2))(params)
    ...     return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss
    >>> sharded_step = shard_train_step(step, mesh, params)
    >>> batch = shard_batch({"xs": jnp.ones((mesh.shape["data"], 5, 3))}, mesh)
    >>> params, loss = sharded_step(params, batch)
    """
    if not callable(step):
        raise TypeError(f"step must be a function (state, batch) -> (state, aux), got {step!r}.")
    batch_sharding, aux_sharding = data_sharding(mesh), replicated(mesh)

    def build(state):
        state_sharding = param_sharding(state, mesh)
        return jax.jit(
            step,
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, aux_sharding),
            donate_argnums=(0,) if donate_state else (),
        )

    if state is not None:
        return build(state)
    compiled: dict = {}

    def sharded_step(state, batch):
        leaves, treedef = jax.tree_util.tree_flatten(state)
        signature = (treedef, tuple(np.shape(x) for x in leaves))
        if signature not in compiled:
            compiled[signature] = build(state)
        return compiled[signature](state, batch)

    return sharded_step


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    **kwargs: Any,
) -> None:
    """Join a multi-process JAX run (``jax.distributed.initialize``).

    Call once per process, before any other JAX call. Arguments that are None
    are read from the environment -- ``JAX_COORDINATOR_ADDRESS`` (``host:port``
    of process 0; read by JAX itself), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` (read here) -- and, when those are unset too, detected
    by JAX on SLURM, Open MPI, Kubernetes or Cloud TPU. ``kwargs`` go to
    ``jax.distributed.initialize`` (e.g. ``initialization_timeout``).
    Afterwards ``jax.devices()`` lists the devices of every process. On CPU
    the cross-process collectives are Gloo (``jax_cpu_collectives_implementation``).

    Example, two hosts (run one command on each)::

        JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python train.py
        JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python train.py

    >>> initialize_distributed()  # doctest: +SKIP
    """
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )

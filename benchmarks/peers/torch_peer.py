"""PyTorch's ``torch.nn.LSTM`` and ``nn.GRU``, and how their CPU memory peak is measured.

PyTorch runs with TF32 off for float32 cases, so on GPU it computes true
float32 matmuls like the JAX peers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional

import numpy as np

import lstm_jax as lj
from benchmarks import isa_emulation
from benchmarks.machine import num_cores
from benchmarks.peers.base import (
    LEARNING_RATE,
    Peer,
    Prepared,
    _np_tree,
    _package_missing,
    platform,
)


class TorchPeer(Peer):
    """``torch.nn.LSTM(batch_first=True)`` (``nn.GRU`` in GRU cases): cuDNN on GPU, the
    native kernels on CPU.

    Weights from ``lstm_jax.to_torch``. Threads: ``torch.set_num_threads`` to
    the cores of this process, which is what XLA's CPU client uses. bf16 is
    ``torch.autocast(dtype=torch.bfloat16)`` with float32 master weights.
    Inference runs under ``torch.inference_mode()``. Memory: on GPU the peak of
    ``torch.cuda.max_memory_allocated`` above what was allocated before the
    step; on CPU the peak of the CPU allocator's total above its level before
    one step, from ``torch.profiler``'s allocation events (params and optimizer
    state that existed before the step excluded, like XLA's temp bytes).
    """

    name = "torch"
    description = "torch.nn.LSTM / nn.GRU"
    cells = ("lstm", "gru")

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads  # None: the cores of this process, as XLA uses

    def unavailable(self):
        missing = _package_missing("torch")
        if missing or platform() == "cpu":
            return missing
        import torch

        if platform() != "gpu" or not torch.cuda.is_available():  # not host CPU vs device
            return f"torch {torch.__version__} has no CUDA device here (platform {platform()})"
        return None

    def _device(self):
        import torch

        return "cuda" if platform() == "gpu" and torch.cuda.is_available() else "cpu"

    def _setup(self, params, config):
        import torch

        torch.set_num_threads(self.threads or num_cores())
        if config.dtype == "float32":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        module_type = torch.nn.GRU if config.cell == "gru" else torch.nn.LSTM
        module = module_type(
            config.input, config.hidden, config.layers,
            batch_first=True, bidirectional=config.bidirectional,
        )  # fmt: skip
        state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in lj.to_torch(params).items()}
        module.load_state_dict(state)
        return module.to(self._device())

    def _autocast(self, config):
        import contextlib

        import torch

        if config.dtype == "float32":
            return contextlib.nullcontext()
        autocast = torch.autocast(self._device(), dtype=getattr(torch, config.dtype))
        if self._device() == "cpu" and isa_emulation.active():
            # PyTorch sends bf16 RNNs to oneDNN only where the CPU has AVX-512 (RNN.cpp
            # use_mkldnn, mkldnn_bf16_device_check); that check reads the CPU, not the
            # --isa cap on oneDNN, which then refuses the primitive: take the other path,
            # as on an AVX2 CPU.
            stack = contextlib.ExitStack()
            stack.enter_context(_onednn_off(torch))
            stack.enter_context(autocast)
            return stack
        return autocast

    def _tensor(self, a):
        import torch

        return torch.from_numpy(np.array(a, np.float32)).to(self._device())

    def reference_outputs_and_grads(self, params, x, target, config):
        module = self._setup(params, config)
        xt, yt = self._tensor(x), self._tensor(target)
        with self._autocast(config):
            ys, _ = module(xt)
        loss = ((ys.float() - yt) ** 2).mean()
        loss.backward()
        grads = {}
        for name, p in module.named_parameters():
            g = p.grad.detach().float().cpu().numpy()
            # an LSTM's bias is b_ih + b_hh, and its gradient that of either one
            lstm_bias_hh = config.cell == "lstm" and name.startswith("bias_hh")
            grads[name] = np.zeros_like(g) if lstm_bias_hh else g
        return (
            ys.detach().float().cpu().numpy(),
            float(loss.item()),
            _np_tree(lj.from_torch(grads)),
        )

    def prepare(self, params, x, target, config, workload):
        import torch

        module = self._setup(params, config)
        xt, yt = self._tensor(x), self._tensor(target)
        cuda = self._device() == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        if workload == "infer":

            def step():
                with torch.inference_mode(), self._autocast(config):
                    ys, _ = module(xt)
                sync()
                return ys

        else:
            optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)

            def step():
                with self._autocast(config):
                    ys, _ = module(xt)
                loss = ((ys.float() - yt) ** 2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
                return loss.detach()

        def measure_memory() -> Optional[int]:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                step()
                return int(torch.cuda.max_memory_allocated() - before)
            return _torch_cpu_peak(step)

        kind = "torch_cuda_peak_bytes" if cuda else "torch_profiler_peak_bytes"
        return Prepared(step, None, None, kind, measure_memory, extra_warmup=True)


@contextlib.contextmanager
def _onednn_off(torch):
    # not torch.backends.mkldnn.flags(): it also sets allow_tf32, with a warning each time
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@contextlib.contextmanager
def _os_output_silenced():
    """Send file descriptors 1 and 2 to /dev/null: Kineto prints ``USDT ... profiler_start``
    lines from C++ that Python's ``sys.stdout``/``sys.stderr`` cannot catch."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _torch_cpu_peak(step) -> Optional[int]:
    """Peak bytes allocated by PyTorch's CPU allocator during ``step()``, above the
    level before it, from the allocation events of ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with _os_output_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:  # the event tree is semi-private API: report no number rather than a wrong one
        from torch._C._profiler import _EventType

        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                events.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
            stack.extend(node.children)
    except Exception:
        return None
    if not events:
        return None
    events.sort()
    before = events[0][1] - events[0][2]
    return int(max(total for _, total, _ in events) - before)

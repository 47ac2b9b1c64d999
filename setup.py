"""Builds the optional native CPU kernels (``backend="native"``): ``lstm_jax/_lstm_native*.so``.

Everything else about the package is in ``pyproject.toml``. The extension is
plain C++17 against XLA's header-only FFI API, vendored in ``csrc/xla`` (so the
build needs neither jaxlib nor network access in pip's isolated build
environment); it holds the runtime (threads, instruction set: ``csrc/runtime.cc``),
the kernels of every cell (``csrc/kernels.cc``), one handler skeleton
(``csrc/handler.cc``), the LSTM's, GRU's and RNN's FFI handlers
(``csrc/{lstm,gru,rnn}_native.cc``) and the table of its ``LSTM_JAX_NATIVE_*``
settings (``csrc/settings.cc``), is loaded with ``ctypes`` and its handlers
are registered with ``jax.ffi.register_ffi_target`` at first use
(``lstm_jax/kernels/native.py``).
It is ``optional``: where it does not compile (no C++ compiler, an unsupported
platform) the install still succeeds and ``backend="auto"`` uses ``"fused"``.
The instruction set is chosen at run time (AVX-512, AVX2 or portable C++);
nothing is compiled with ``-march=native``.
"""

import glob
import sys

from setuptools import Extension, setup

# -falign-loops=64: the kernels' inner loops start on a cache line, so an
# unrelated edit elsewhere in the file cannot move them across one; measured:
# the same AVX2 forward loop 4-10% slower after an edit to the weight packing,
# and equal with the flag (benchmarks/results/cpu-amd-epyc-zen4-2c/avx2_forward.md).
COMPILE_ARGS = (
    [] if sys.platform == "win32" else ["-O3", "-g0", "-std=c++17", "-fvisibility=hidden", "-falign-loops=64"]
)

setup(
    ext_modules=[
        Extension(
            "lstm_jax._lstm_native",
            sources=[
                "csrc/runtime.cc", "csrc/kernels.cc", "csrc/handler.cc", "csrc/lstm_native.cc",
                "csrc/gru_native.cc", "csrc/rnn_native.cc", "csrc/settings.cc", "csrc/fma_peak.cc",
            ],
            depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.inc") + glob.glob("csrc/xla/ffi/api/*.h")),
            include_dirs=["csrc"],
            language="c++",
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        )
    ],
)

"""Data sets and batching for the examples (no downloads at run time).

* :func:`load_digits_sequences`: scikit-learn's 8x8 handwritten digits, each
  image read row by row as a sequence of 8 steps of 8 features.
* :func:`load_sunspots`: yearly sunspot numbers 1700-2008 (statsmodels).
* :func:`load_text`: a text corpus; by default a deterministic subset of the
  Python standard library's own ``.py`` files on this machine.
* :func:`adding_problem` and :func:`memory_task`: synthetic long-time-lag
  tasks after Hochreiter & Schmidhuber (1997), with ragged lengths.
* :func:`make_batch_fn`: ``step -> batch``, a deterministic function of the
  step (shuffled epochs from a seed), so resumed runs see the same batches.

All loaders return numpy arrays; batches are converted by ``jax.jit``.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping, NamedTuple, Optional

import numpy as np

from lstm_jax._optional import require

__all__ = [
    "load_digits_sequences",
    "load_sunspots",
    "make_windows",
    "load_text",
    "CharVocab",
    "adding_problem",
    "memory_task",
    "make_batch_fn",
    "iterate_batches",
]


def load_digits_sequences(
    *, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Digits as sequences: ``x: (N, 8, 8)`` float32 in [0, 1], ``y: (N,)`` int32.

    The split is stratified by class and fixed by ``seed``.

    Returns:
      ``{"train": {"x", "y"}, "test": {"x", "y"}}``.
    """
    datasets = require("sklearn.datasets", "examples", "load_digits")
    model_selection = require("sklearn.model_selection", "examples", "load_digits")

    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # [N, 8 rows = time, 8 columns = features]
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return {"train": {"x": x_tr, "y": y_tr}, "test": {"x": x_te, "y": y_te}}


def load_sunspots() -> tuple[np.ndarray, np.ndarray]:
    """``(years, values)``: yearly mean sunspot numbers (statsmodels' copy, 1700-2008)."""
    sunspots = require("statsmodels.datasets.sunspots", "examples", "load_sunspots")

    frame = sunspots.load_pandas().data
    return frame["YEAR"].to_numpy(np.int32), frame["SUNACTIVITY"].to_numpy(np.float32)


def make_windows(series: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows for one-step-ahead forecasting.

    Returns:
      ``x: (N, window, 1)`` (``series[k : k + window]``) and ``y: (N, window, 1)``
      (the same window shifted one step, ``series[k + 1 : k + window + 1]``), so
      every step of a window is trained to predict the next value.
    """
    series = np.asarray(series, np.float32)
    n = len(series) - window
    if n < 1:
        raise ValueError(f"series of length {len(series)} is too short for window={window}.")
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return series[idx][..., None], series[idx + 1][..., None]


def _stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def load_text(
    path: Optional[str] = None, *, max_chars: Optional[int] = 2_000_000
) -> tuple[str, list[str]]:
    """A text corpus and the list of files it came from.

    Args:
      path: a text file, or a directory whose ``*.py`` files (top level,
        sorted by name) are concatenated. Default: the standard library
        directory (``os.path.dirname(os.__file__)``).
      max_chars: stop adding files once the corpus has this many characters
        (the last file is cut there). None: no limit.
    """
    path = path or _stdlib_dir()
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.endswith(".py") and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise FileNotFoundError(f"no .py files in {path}.")
    parts, total, used = [], 0, []
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as f:
            text = f.read()
        parts.append(text)
        used.append(name)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    corpus = "".join(parts)
    return (corpus if max_chars is None else corpus[:max_chars]), used


class CharVocab(NamedTuple):
    """Characters sorted by code point; id ``k`` is ``chars[k]``."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {ch: k for k, ch in enumerate(self.chars)}
        return np.fromiter((index[ch] for ch in text), np.int32, len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(k)] for k in np.asarray(ids).reshape(-1))


def _lengths(rng: np.random.Generator, batch: int, length: int, variable: bool) -> np.ndarray:
    if not variable:
        return np.full((batch,), length, np.int32)
    # H&S 1997: lengths drawn between T and T + T/10
    return rng.integers(length, length + length // 10 + 1, size=batch).astype(np.int32)


def adding_problem(
    rng: np.random.Generator, batch: int, length: int, *, variable: bool = True
) -> dict[str, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each step has two features: a value uniform in [0, 1] and a marker. Two
    steps are marked, one in the first half of the sequence and one in the
    second; the target is the sum of their values. Always predicting 1.0
    has MSE 1/6 ~= 0.167 (the variance of a sum of two uniforms).

    Returns:
      ``{"x": (B, T_max, 2) float32, "y": (B,) float32, "lengths": (B,) int32}``
      with ``T_max = length + length // 10`` when ``variable`` (padding is zero).
    """
    lengths = _lengths(rng, batch, length, variable)
    t_max = length + length // 10 if variable else length
    values = rng.uniform(0.0, 1.0, size=(batch, t_max)).astype(np.float32)
    half = lengths // 2
    first = (rng.uniform(size=batch) * half).astype(np.int64)
    second = half + (rng.uniform(size=batch) * (lengths - half)).astype(np.int64)
    markers = np.zeros((batch, t_max), np.float32)
    rows = np.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    valid = np.arange(t_max)[None, :] < lengths[:, None]
    x = np.stack([values * valid, markers], axis=-1)
    y = values[rows, first] + values[rows, second]
    return {"x": x.astype(np.float32), "y": y.astype(np.float32), "lengths": lengths}


def memory_task(
    rng: np.random.Generator,
    batch: int,
    length: int,
    *,
    num_symbols: int = 8,
    num_distractors: int = 8,
    variable: bool = True,
) -> dict[str, np.ndarray]:
    """Recall the first symbol after a long lag (after H&S 1997, experiment 2).

    Step 0 shows one of ``num_symbols`` symbols (one-hot); the steps up to the
    last show random distractor symbols from a separate set; the last valid
    step shows a query marker, where the class of the first symbol must be
    output. Chance accuracy is ``1 / num_symbols``.

    Returns:
      ``{"x": (B, T_max, num_symbols + num_distractors + 1), "y": (B,) int32,
      "lengths": (B,) int32}``.
    """
    lengths = _lengths(rng, batch, length, variable)
    t_max = length + length // 10 if variable else length
    width = num_symbols + num_distractors + 1
    rows = np.arange(batch)
    y = rng.integers(0, num_symbols, size=batch).astype(np.int32)
    ids = num_symbols + rng.integers(0, num_distractors, size=(batch, t_max))
    ids[:, 0] = y
    ids[rows, lengths - 1] = width - 1  # the query marker
    x = np.eye(width, dtype=np.float32)[ids]
    x *= (np.arange(t_max)[None, :] < lengths[:, None])[..., None]
    return {"x": x, "y": y, "lengths": lengths}


def make_batch_fn(
    arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0
) -> Callable[[int], dict[str, np.ndarray]]:
    """``step -> batch`` over shuffled epochs, a pure function of ``(seed, step)``.

    Every epoch is a fresh permutation (from ``seed`` and the epoch number);
    a partial last batch is dropped so every batch has one shape.

    >>> fn = make_batch_fn({"x": np.arange(10)}, 4, seed=0)
    >>> fn(0)["x"].shape, bool((fn(3)["x"] == fn(3)["x"]).all())
    ((4,), True)
    """
    n = len(next(iter(arrays.values())))
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the data set ({n}).")

    def get_batch(step: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(int(step), per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = order[k * batch_size : (k + 1) * batch_size]
        return {name: value[idx] for name, value in arrays.items()}

    return get_batch


def iterate_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches in order, the last one possibly smaller (for evaluation)."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        yield {name: value[start : start + batch_size] for name, value in arrays.items()}

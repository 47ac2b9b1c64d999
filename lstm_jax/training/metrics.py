"""Metric logs on disk: JSONL + CSV rows (:class:`MetricsWriter`) and JSON files."""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np

__all__ = [
    "MetricsWriter",
    "write_json",
]


def _to_builtin(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value


def write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    """Write ``obj`` (arrays become numbers or lists) as indented JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_to_builtin(obj), f, indent=2, sort_keys=True)
        f.write("\n")


class MetricsWriter:
    """Appends metric rows to ``<out>/<name>.jsonl`` and rewrites ``<out>/<name>.csv``.

    The CSV's columns are the union of the keys seen so far (rows missing a
    key leave it empty), so training and validation rows share one file.

    Rows already in the JSONL file are kept, so a resumed run continues its
    log. :meth:`rewind` drops the rows logged after a step; :func:`fit` calls
    it with the step it starts from, so a run from step 0 starts a new log and
    a run resumed from a checkpoint at step s first drops what the interrupted
    run logged after s. Outside :func:`fit`, pass ``start_step`` (0 for a new
    run, the restored step when resuming).
    """

    def __init__(
        self,
        out_dir: Union[str, os.PathLike],
        name: str = "metrics",
        *,
        start_step: Optional[int] = None,
    ):
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl_path = os.path.join(out_dir, f"{name}.jsonl")
        self.csv_path = os.path.join(out_dir, f"{name}.csv")
        self.rows: list[dict] = self._read_jsonl()
        if start_step is not None:
            self.rewind(start_step)

    def _read_jsonl(self) -> list[dict]:
        if not os.path.exists(self.jsonl_path):
            return []
        with open(self.jsonl_path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):  # a write cut short by a killed process
                    break
                raise ValueError(f"{self.jsonl_path}, line {number}: not JSON ({error}).") from None
        return rows

    def rewind(self, step: int) -> None:
        """Drop the rows whose ``step`` is past ``step`` (and rows without one), in both files."""
        kept = [r for r in self.rows if isinstance(r.get("step"), int) and r["step"] <= step]
        if kept == self.rows and os.path.exists(self.jsonl_path):
            return
        self.rows = kept
        tmp = self.jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.rows)
        os.replace(tmp, self.jsonl_path)  # a kill mid-write leaves the old log whole
        self._write_csv()

    def write(self, row: Mapping[str, Any]) -> None:
        row = _to_builtin(dict(row))
        self.rows.append(row)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        with open(self.csv_path, "w", newline="") as f:
            if self.rows:
                out = csv.DictWriter(f, fieldnames=columns)
                out.writeheader()
                out.writerows(self.rows)


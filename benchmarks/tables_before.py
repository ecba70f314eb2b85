"""genbench/tables.py before issue 13 (per-cell Python parsing), kept verbatim as the baseline of
benchmarks/bench_tables.py. Not used by genbench.

One row per model. Problems are :class:`TableError` with one line naming the
column or row, never a traceback.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class TableError(ValueError):
    """A problem with the input table, in one line."""


@dataclass
class Population:
    """The columns ``score_population`` needs, as arrays."""

    measures: dict[str, np.ndarray]
    gaps: dict[str, np.ndarray]
    hparams: dict[str, np.ndarray]
    n_models: int


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file, or of a JSON Lines file (``.jsonl``/``.ndjson``, or content starting with ``{``)."""
    if not path.exists():
        raise TableError(f"TABLE: no file {path}")
    text = path.read_text()
    if path.suffix in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(f"line {i}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise TableError(f"line {i}: expected a JSON object per line")
            rows.append(row)
        return rows
    return list(csv.DictReader(text.splitlines()))


def _number(value: Any) -> float | None:
    """A float, None for an empty cell, or raise ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _is_numeric_column(rows: list[dict[str, Any]], col: str) -> bool:
    try:
        return any(_number(r.get(col)) is not None for r in rows) and all(
            (_number(r.get(col)) is not None) or r.get(col) in (None, "") for r in rows)
    except (TypeError, ValueError):
        return False


def _column(rows: list[dict[str, Any]], col: str, option: str, allow_empty: bool) -> np.ndarray:
    values = []
    for i, row in enumerate(rows, start=1):
        try:
            v = _number(row.get(col))
        except (TypeError, ValueError):
            raise TableError(f"row {i}, column '{col}': {row.get(col)!r} is not a number") from None
        if v is None and not allow_empty:
            raise TableError(f"row {i}, column '{col}' ({option}): empty; every model needs a value")
        if v is not None and not math.isfinite(v) and not allow_empty:
            raise TableError(f"row {i}, column '{col}' ({option}): {row.get(col)!r} is not finite")
        values.append(math.nan if v is None else v)
    return np.array(values, dtype=float)


def load_population(path: Path, gap: str = "gap", acc_gap: str | None = None,
                    condition_on: list[str] | None = None, against: list[str] | None = None,
                    measures: list[str] | None = None) -> Population:
    """Validate the table and split it into measures, gaps and hyperparameters."""
    rows = read_rows(path)
    if len(rows) < 3:
        raise TableError(f"TABLE: {len(rows)} model row(s); scoring needs at least 3")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    condition_on, against = list(condition_on or []), list(against or [])
    wanted = [("--gap", [gap]), ("--condition-on", condition_on), ("--against", against),
              ("--measures", measures or [])]
    if acc_gap:
        wanted.append(("--acc-gap", [acc_gap]))
    for option, cols in wanted:
        for col in cols:
            if col not in columns:
                raise TableError(f"{option}: no column '{col}' in the table; columns: {', '.join(columns)}")
    for i, row in enumerate(rows, start=1):
        for col in condition_on + against:
            if row.get(col) in (None, ""):
                raise TableError(f"row {i}, column '{col}': empty hyperparameter value")
    gaps = {"loss": _column(rows, gap, "--gap", allow_empty=False)}
    if np.ptp(gaps["loss"]) == 0:
        raise TableError(f"column '{gap}' (--gap) is constant; there is nothing to predict")
    if acc_gap is None and "acc_gap" in columns and gap != "acc_gap":
        acc_gap = "acc_gap"
    if acc_gap:
        gaps["acc"] = _column(rows, acc_gap, "--acc-gap", allow_empty=False)
    taken = {gap, acc_gap, *condition_on, *against}
    if measures is None:
        measures = [c for c in columns if c not in taken and _is_numeric_column(rows, c)]
        if not measures:
            raise TableError("--measures: the table has no other numeric column to score")
    values = {m: _column(rows, m, "--measures", allow_empty=True) for m in measures}
    hp = {h: np.array([_hparam(r[h]) for r in rows], dtype=object) for h in condition_on + against}
    return Population(values, gaps, hp, len(rows))


def _hparam(value: Any) -> Any:
    """Hyperparameter values compare as numbers when they are numbers ("0.30" == 0.3);
    lists and objects (JSON Lines) compare by their canonical JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    try:
        return _number(value)
    except (TypeError, ValueError):
        return value

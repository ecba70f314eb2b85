"""Read a population table trained anywhere (CSV or JSON Lines) for `genbench score`.

One row per model. Problems are :class:`TableError` with one line naming the
column or row, never a traceback.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import math
from dataclasses import dataclass, field
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


@dataclass
class Table:
    """A parsed table: its columns in order, each a list of raw cells (CSV: strings;
    JSON Lines: JSON values, None where a row lacks the key)."""

    columns: dict[str, list[Any]]
    n_rows: int
    text: bool  # every cell is a string (CSV)
    _floats: dict[str, np.ndarray | ValueError] = field(default_factory=dict)

    def floats(self, col: str) -> np.ndarray:
        """The column as floats, NaN for empty cells; ``ValueError`` if a cell is not a
        number. Converted once, in C (``map(float)``) for CSV columns."""
        if col not in self._floats:
            try:
                self._floats[col] = _floats(self.columns[col], self.text)
            except (TypeError, ValueError) as exc:
                self._floats[col] = ValueError(str(exc))
        value = self._floats[col]
        if isinstance(value, ValueError):
            raise value
        return value


class Rows(list):
    """The rows of a file (:func:`read_rows`), remembering the columns they came from, so that
    scoring them all (:func:`table_from_rows`) does not rebuild the columns dict by dict."""

    table: Table | None = None


def table_from_rows(rows: list[dict[str, Any]]) -> Table:
    """Rows already read (dicts of one model each) as a table; a missing key is empty."""
    if isinstance(rows, Rows) and rows.table is not None and len(rows) == rows.table.n_rows:
        return rows.table
    names = list(dict.fromkeys(k for r in rows for k in r))
    text = all(isinstance(r.get(c, ""), str) for r in rows for c in names)
    return Table({c: [r.get(c, "" if text else None) for r in rows] for c in names}, len(rows),
                 text=text)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The table at ``path`` (checked as :func:`read_table` checks it) as one dict per row."""
    t = read_table(path)
    rows = Rows(map(dict, map(zip, itertools.repeat(list(t.columns)), zip(*t.columns.values()))))
    rows.table = t
    return rows


def read_table(path: Path) -> Table:
    """A CSV file, or a JSON Lines file (``.jsonl``/``.ndjson``, or content starting with
    ``{``), as columns. A UTF-8 BOM is dropped; non-UTF-8 bytes, duplicate column names
    and ragged CSV rows are errors naming the offset or line."""
    from genbench.suite import read_text

    if not path.exists():
        raise TableError(f"TABLE: no file {path}")
    if path.is_dir():
        raise TableError(f"TABLE: {path} is a directory; give a CSV or JSON Lines file")
    try:
        text = read_text(path)
    except UnicodeError as exc:
        raise TableError(str(exc)) from None
    if path.suffix in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        return _read_jsonl(text)
    return _read_csv(text)


def _read_csv(text: str) -> Table:
    """Rows with csv's C reader, then columns; the garbage collector waits meanwhile (it
    would otherwise rescan the growing list of rows hundreds of times)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _read_csv_rows(text)
    finally:
        if paused:
            gc.enable()


def _read_csv_rows(text: str) -> Table:
    if '"' not in text:                 # no quoting: a cell is what lies between commas
        return _split_csv(text)
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    _check_header(header)
    rows = []
    for cells in reader:
        if not cells:
            continue  # a blank line
        if len(cells) != len(header):
            raise TableError(f"line {reader.line_num}: {len(cells)} cells, but the header has "
                             f"{len(header)} columns; fix that row")
        rows.append(cells)
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in header]
    return Table(dict(zip(header, columns)), len(rows), text=True)


def _split_csv(text: str) -> Table:
    """The csv module's reading of a CSV without quotes, by str.split (a few C calls instead
    of a Python object per row): blank lines skipped, ragged rows named by line."""
    lines = text.splitlines()
    header = lines[0].split(",") if lines else []
    _check_header(header)
    body = [(i, line) for i, line in enumerate(lines[1:], start=2) if line]
    commas = len(header) - 1
    for i, line in body:
        if line.count(",") != commas:
            raise TableError(f"line {i}: {line.count(',') + 1} cells, but the header has "
                             f"{len(header)} columns; fix that row")
    cells = ",".join(line for _, line in body).split(",") if body else []
    k = len(header)
    return Table({name: cells[j::k] for j, name in enumerate(header)}, len(body), text=True)


def _check_header(header: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise TableError(f"line 1: column '{name}' appears twice (columns {seen[name]} and "
                             f"{i}); give every column its own name")
        seen[name] = i


def _read_jsonl(text: str) -> Table:
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
    names = list(dict.fromkeys(k for r in rows for k in r))
    return Table({c: [r.get(c) for r in rows] for c in names}, len(rows), text=False)


def _number(value: Any) -> float | None:
    """A float, None for an empty cell, or raise ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _floats(cells: list[Any], text: bool) -> np.ndarray:
    if text:
        try:
            return np.fromiter(map(float, cells), dtype=float, count=len(cells))
        except ValueError:  # empty cells (NaN) or a bad one (raises again below)
            arr = np.char.strip(np.array(cells, dtype=str))
            arr[arr == ""] = "nan"
            return arr.astype(float)
    out = [_number(c) for c in cells]
    return np.array([math.nan if v is None else v for v in out], dtype=float)


def _is_numeric_column(table: Table, col: str) -> bool:
    try:
        table.floats(col)
    except ValueError:
        return False
    return any(not _empty(c) for c in table.columns[col])


def _empty(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _column(table: Table, col: str, option: str, allow_empty: bool) -> np.ndarray:
    cells = table.columns[col]
    try:
        values = table.floats(col)
    except ValueError:
        for i, cell in enumerate(cells, start=1):  # find the first bad cell for the message
            try:
                _number(cell)
            except (TypeError, ValueError):
                raise TableError(f"row {i}, column '{col}': {cell!r} is not a number") from None
        raise
    if not allow_empty:
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            i = int(bad[0])
            if _empty(cells[i]):
                raise TableError(f"row {i + 1}, column '{col}' ({option}): empty; every model needs a value")
            raise TableError(f"row {i + 1}, column '{col}' ({option}): {cells[i]!r} is not finite")
    return values


def load_population(path: Path, gap: str = "gap", acc_gap: str | None = None,
                    condition_on: list[str] | None = None, against: list[str] | None = None,
                    measures: list[str] | None = None, rows: list[dict] | None = None) -> Population:
    """Validate the table (``rows`` if given, e.g. an export already read, else the file
    at ``path``) and split it into measures, gaps and hyperparameters."""
    table = read_table(path) if rows is None else table_from_rows(rows)
    if table.n_rows < 3:
        raise TableError(f"TABLE: {table.n_rows} model row(s); scoring needs at least 3")
    columns = list(table.columns)
    condition_on, against = list(condition_on or []), list(against or [])
    wanted = [("--gap", [gap]), ("--condition-on", condition_on), ("--against", against),
              ("--measures", measures or [])]
    if acc_gap:
        wanted.append(("--acc-gap", [acc_gap]))
    for option, cols in wanted:
        for col in cols:
            if col not in columns:
                raise TableError(f"{option}: no column '{col}' in the table; columns: {', '.join(columns)}")
    for col in condition_on + against:
        cells = table.columns[col]
        for blank in (None, ""):
            if blank in cells:
                raise TableError(f"row {cells.index(blank) + 1}, column '{col}': empty "
                                 "hyperparameter value")
    gaps = {"loss": _column(table, gap, "--gap", allow_empty=False)}
    if np.ptp(gaps["loss"]) == 0:
        raise TableError(f"column '{gap}' (--gap) is constant; there is nothing to predict")
    if acc_gap is None and "acc_gap" in columns and gap != "acc_gap":
        acc_gap = "acc_gap"
    if acc_gap:
        gaps["acc"] = _column(table, acc_gap, "--acc-gap", allow_empty=False)
    taken = {gap, acc_gap, *condition_on, *against}
    if measures is None:
        measures = [c for c in columns if c not in taken and _is_numeric_column(table, c)]
        if not measures:
            raise TableError("--measures: the table has no other numeric column to score")
    values = {m: _column(table, m, "--measures", allow_empty=True) for m in measures}
    hp = {h: _hparams(table, h) for h in condition_on + against}
    return Population(values, gaps, hp, table.n_rows)


def _hparams(table: Table, col: str) -> np.ndarray:
    """A hyperparameter column as comparable values (see :func:`_hparam`); an all-number
    column converts in one call and stays float64 (scoring encodes it without a Python
    object per model)."""
    try:
        return table.floats(col)
    except ValueError:
        pass
    cells = table.columns[col]
    if table.text:  # a few levels repeated over many models: convert each level once
        levels, index = np.unique(np.array(cells, dtype=str), return_inverse=True)
        return np.array([_hparam(str(v)) for v in levels], dtype=object)[index]
    return np.array([_hparam(c) for c in cells], dtype=object)


def _hparam(value: Any) -> Any:
    """Hyperparameter values compare as numbers when they are numbers ("0.30" == 0.3);
    lists and objects (JSON Lines) compare by their canonical JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    try:
        return _number(value)
    except (TypeError, ValueError):
        return value

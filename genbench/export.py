"""A run as a flat table (one row per model), and the reading of it back for scoring.

The export's header says what each column is, so `genbench score` needs no flags to
score it as the run did:

- ``key``, ``seed``, ``engine`` (``batched`` or ``sequential``: what trained the model),
  the metrics (``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``, ``gap``,
  ``acc_gap``, ``epochs``) and ``converged`` (when the run has it) are never measures;
- ``hp:NAME``: a hyperparameter the conditional MI ranges over (the run's condition_on);
- ``against:NAME``: a hyperparameter the run reports MI with (e.g. the dropout rate);
- ``param:NAME``: a hyperparameter the run's scoring used neither way;
- ``MEASURE.PART``: a part of a measure's value (``pac_s_laplace.volume_term``);
- every other column is a measure.

A run's own JSON (``genbench run --json``) is read the same way, its hyperparameter
roles and scoring options taken from its ``"scoring"`` dict. Torch is never imported.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "METRICS", "flat_rows", "store_rows", "write_csv", "write_jsonl", "score_table", "header_roles",
           "Table", "read_table", "is_run_json"]

#: Column prefixes that mark a hyperparameter, by the role scoring gives it.
ROLES = {"hp:": "condition_on", "against:": "against", "param:": "param"}
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "gap", "acc_gap", "epochs")
NOT_MEASURES = ("key", "seed", "engine", "converged", *METRICS)


def _prefix(name: str, condition_on: list[str], against: list[str]) -> str:
    if name in against:
        return "against:"
    return "hp:" if name in condition_on else "param:"


def flat_rows(models: list[dict[str, Any]], condition_on: list[str],
              against: list[str]) -> list[dict[str, Any]]:
    """Run-JSON model rows as flat export rows (hyperparameters named by their role)."""
    out = []
    for m in models:
        row: dict[str, Any] = {"key": m["key"], "seed": m.get("seed")}
        for name, v in m["hparams"].items():
            row[_prefix(name, condition_on, against) + name] = v
        row.update({k: m.get(k) for k in METRICS})
        for k in ("converged", "engine"):
            if k in m:
                row[k] = m[k]
        row.update(m["measures"])
        for measure, parts in (m.get("parts") or {}).items():
            row.update({f"{measure}.{part}": v for part, v in parts.items()})
        out.append(row)
    return out


def _pick_run(st: Any, run_id: int | None) -> dict[str, Any]:
    """The run record with this id (default: the last run)."""
    if run_id is None:
        run = st.last_run()
        if run is None:
            raise LookupError(f"--store {st.root}: no run recorded; run `genbench run` first")
        return run
    # the store looks runs up by suite only; read its runs table directly
    row = st.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        ids = [r[0] for r in st.db.execute("SELECT id FROM runs ORDER BY id")]
        raise LookupError(f"--run {run_id}: no such run in {st.root}; runs: "
                          f"{', '.join(map(str, ids)) or 'none'}")
    return {"id": row["id"], "suite": row["suite"], "suite_json": json.loads(row["suite_json"]),
            "model_keys": json.loads(row["model_keys"])}


def store_rows(store: str | Path, run_id: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(run record, flat rows) of a run in a store (default: its last run): every trained
    model of the run with the run's measures, looked up by content key."""
    from genbench.plugins import get_registry
    from genbench.runner import collect
    from genbench.store import Store
    from genbench.suite import Suite

    if not (Path(store) / "genbench.sqlite").exists():
        raise FileNotFoundError(f"--store {store}: no genbench store there; run `genbench run` first")
    with Store(store) as st:
        run = _pick_run(st, run_id)
        suite = Suite(**run["suite_json"])
        models = collect(st, suite, run["model_keys"], get_registry())
        metrics = {m["key"]: m["metrics"] or {} for m in st.models(run["model_keys"])}
    for m in models:
        if "engine" in metrics[m["key"]]:
            m.setdefault("engine", metrics[m["key"]]["engine"])
    return run, flat_rows(models, suite.condition_on(), suite.against())


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """One row per model; an undefined value is an empty cell, floats keep every digit."""
    with _open_out(path) as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows), lineterminator="\n")
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> None:
    with _open_out(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


class _open_out:
    """A file to write, or stdout for ``-``."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def __enter__(self):
        import sys

        self.f = sys.stdout if self.path == "-" else open(self.path, "w", newline="")
        return self.f

    def __exit__(self, *exc: Any) -> None:
        if self.f is not __import__("sys").stdout:
            self.f.close()


@dataclass
class Table:
    """Rows to score, and what the file says about them."""

    rows: list[dict[str, Any]]
    condition_on: list[str] = field(default_factory=list)   # column names
    against: list[str] = field(default_factory=list)
    measures: list[str] | None = None                       # None: every other numeric column
    options: dict[str, Any] = field(default_factory=dict)   # a run JSON's scoring options

    def name(self, column: str) -> str:
        """A column's hyperparameter name (its role prefix removed)."""
        for p in ROLES:
            if column.startswith(p):
                return column[len(p):]
        return column

    def column(self, name: str) -> str:
        """The column of a hyperparameter named with or without its role prefix."""
        columns = self.__dict__.get("_names") or self.__dict__.setdefault("_names", _columns(self.rows))
        if name in columns:
            return name
        return next((p + name for p in ROLES if p + name in columns), name)


def is_run_json(path: Path) -> bool:
    """A run's own JSON: one object with "models" and "leaderboard"."""
    if path.suffix != ".json":
        return False
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "models" in obj and "leaderboard" in obj


def read_table(path: Path) -> Table:
    """A run JSON, or the header roles of an export (any other table: no roles)."""
    if is_run_json(path):
        run = json.loads(path.read_text())
        opts = run.get("scoring", {}).get("options", {})
        cond, against = list(opts.get("condition_on") or []), list(opts.get("against") or [])
        rows = flat_rows(run["models"], cond, against)
        return Table(rows, ["hp:" + h for h in cond], ["against:" + h for h in against],
                     measures=list(run["leaderboard"]) or None, options=opts)
    from genbench.tables import read_rows

    rows = read_rows(path)
    return Table(rows, *header_roles(_columns(rows)))


def header_roles(columns: list[str]) -> tuple[list[str], list[str], list[str] | None]:
    """(condition_on, against, measures) from an export's header; a table without
    role prefixes has none (measures None: every other numeric column)."""
    cond = [c for c in columns if c.startswith("hp:")]
    against = [c for c in columns if c.startswith("against:")]
    if not any(c.startswith(tuple(ROLES)) for c in columns):
        return [], [], None
    plain = [c for c in columns if not c.startswith(tuple(ROLES)) and c not in NOT_MEASURES]
    measures = [c for c in plain if c.split(".", 1)[0] not in plain or "." not in c]
    return cond, against, measures


def _unconverged(row: dict[str, Any]) -> bool:
    return str(row.get("converged", "")).strip().lower() in ("false", "0")


def score_table(t: Table, gap: str = "gap", acc_gap: str | None = None,
                condition_on: list[str] | None = None, against: list[str] | None = None,
                measures: list[str] | None = None, preset: str | None = None,
                max_omega: int | None = None, bootstrap: int | None = None,
                seed: int | None = None, include_unconverged: bool = False,
                against_within: list[str] | None = None) -> dict[str, Any]:
    """Score a table: explicit options first, then what the file says (roles from an
    export's header, a run JSON's scoring options), then the defaults. Models whose
    ``converged`` is false are left out unless ``include_unconverged`` (as a run does)."""
    from genbench.scoring import PRESETS, score_population
    from genbench.tables import TableError, load_population

    o = t.options
    preset = preset or o.get("preset") or "paper"
    if preset not in PRESETS:
        raise TableError(f"--preset: unknown preset '{preset}'; choose one of {', '.join(sorted(PRESETS))}")
    cond = t.condition_on if condition_on is None else [t.column(c) for c in condition_on]
    ag = t.against if against is None else [t.column(c) for c in against]
    include_unconverged = include_unconverged or bool(o.get("include_unconverged"))
    rows = t.rows if include_unconverged else [r for r in t.rows if not _unconverged(r)]
    rows = t.rows if len(rows) == len(t.rows) else rows     # the file's own rows keep its columns
    within = None if against_within is None else [t.column(c) for c in against_within]
    loaded = cond + [c for c in within or [] if c not in cond]
    pop = load_population(Path(), gap=gap, acc_gap=acc_gap, condition_on=loaded, against=ag,
                          measures=t.measures if measures is None else measures, rows=rows)
    if PRESETS[preset].gap not in pop.gaps:
        raise TableError(f"--acc-gap: preset '{preset}' scores the accuracy gap; name its column")
    board = score_population(
        pop.measures, pop.gaps, {t.name(k): v for k, v in pop.hparams.items()},
        condition_on=[t.name(c) for c in cond], against=[t.name(c) for c in ag], preset=preset,
        max_omega=o.get("max_omega", 2) if max_omega is None else max_omega,
        bootstrap=o.get("bootstrap", 0) if bootstrap is None else bootstrap,
        seed=o.get("seed", 0) if seed is None else seed,
        **({} if within is None else {"against_within": [t.name(c) for c in within]}))
    if len(rows) < len(t.rows):
        board["left_out"] = {"unconverged": len(t.rows) - len(rows)}
    return board

"""The embedded store: SQLite for records, safetensors for weights. No server.

Layout of a store directory::

    genbench.sqlite        models, results (measures, volumes, shared quantities), runs
    weights/<key>.safetensors   initial ("init.*") and final ("final.*") state of a model

Every write is committed at once (a killed run loses at most the item in flight).
Weights are written to a temporary file and renamed before the model row is
committed, so a committed model always has its weights.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY,
    hparams TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,            -- 'done' or 'failed'
    metrics TEXT,                    -- train/test loss and accuracy, epochs, history
    error TEXT,
    provenance TEXT NOT NULL,
    seconds REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,            -- hash of model key, component, version, params
    model_key TEXT NOT NULL,
    kind TEXT NOT NULL,              -- 'measure', 'volume', 'shared'
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    data TEXT,
    error TEXT,
    provenance TEXT NOT NULL,
    seconds REAL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_model ON results(model_key, kind, name);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    suite_json TEXT NOT NULL,
    model_keys TEXT NOT NULL,
    summary TEXT,
    created REAL NOT NULL
);
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class Store:
    """A store directory. Cheap to open; safe to reopen after a crash."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "weights").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.root / "genbench.sqlite", timeout=60)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- models -------------------------------------------------------------------
    def weights_path(self, key: str) -> Path:
        return self.root / "weights" / f"{key}.safetensors"

    def save_model(self, spec: Any, init_state: dict, final_state: dict, metrics: dict,
                   seconds: float) -> None:
        """Persist a trained model: weights first (atomic rename), then its row."""
        from safetensors.torch import save_file

        tensors = {f"init.{k}": v.detach().cpu().contiguous() for k, v in init_state.items()}
        tensors.update({f"final.{k}": v.detach().cpu().contiguous() for k, v in final_state.items()})
        path = self.weights_path(spec.key)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"key": spec.key})
        os.replace(tmp, path)
        self._put_model(spec, "done", metrics=metrics, seconds=seconds)

    def save_failure(self, spec: Any, error: str) -> None:
        self._put_model(spec, "failed", error=error)

    def _put_model(self, spec: Any, status: str, metrics: dict | None = None,
                   error: str | None = None, seconds: float | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
            (spec.key, _dumps(spec.hparams), spec.seed, _dumps(spec.config), status,
             _dumps(metrics) if metrics is not None else None, error,
             _dumps(spec.provenance), seconds, time.time()))
        self.db.commit()

    def model(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM models WHERE key=?", (key,)).fetchone()
        return _model_row(row) if row else None

    def models(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM models ORDER BY created").fetchall()
        out = [_model_row(r) for r in rows]
        if keys is not None:
            by_key = {m["key"]: m for m in out}
            out = [by_key[k] for k in keys if k in by_key]
        return out

    def load_weights(self, key: str) -> tuple[dict, dict]:
        """(initial state_dict, final state_dict) of a stored model."""
        from safetensors.torch import load_file

        tensors = load_file(str(self.weights_path(key)))
        init = {k[5:]: v for k, v in tensors.items() if k.startswith("init.")}
        final = {k[6:]: v for k, v in tensors.items() if k.startswith("final.")}
        return init, final

    # -- results: measures, volumes, shared quantities --------------------------------
    def result(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM results WHERE key=?", (key,)).fetchone()
        return _result_row(row) if row else None

    def put_result(self, key: str, model_key: str, kind: str, name: str, params: dict,
                   provenance: dict, value: float | None = None, data: Any = None,
                   error: str | None = None, seconds: float | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (key, model_key, kind, name, _dumps(params), value,
             _dumps(data) if data is not None else None, error, _dumps(provenance),
             seconds, time.time()))
        self.db.commit()

    def results(self, kind: str | None = None, model_keys: list[str] | None = None) -> list[dict]:
        rows = self.db.execute("SELECT * FROM results" + (" WHERE kind=?" if kind else "")
                               + " ORDER BY created", (kind,) if kind else ()).fetchall()
        out = [_result_row(r) for r in rows]
        if model_keys is not None:
            wanted = set(model_keys)
            out = [r for r in out if r["model_key"] in wanted]
        return out

    # -- runs -------------------------------------------------------------------------
    def start_run(self, suite_name: str, suite_json: dict, model_keys: list[str]) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (suite, suite_json, model_keys, created) VALUES (?,?,?,?)",
            (suite_name, json.dumps(suite_json, default=str),  # key order = the suite's order
             _dumps(model_keys), time.time()))
        self.db.commit()
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, summary: dict) -> None:
        self.db.execute("UPDATE runs SET summary=? WHERE id=?", (_dumps(summary), run_id))
        self.db.commit()

    def last_run(self, suite: str | None = None) -> dict[str, Any] | None:
        q = "SELECT * FROM runs" + (" WHERE suite=?" if suite else "") + " ORDER BY id DESC LIMIT 1"
        row = self.db.execute(q, (suite,) if suite else ()).fetchone()
        if row is None:
            return None
        return {"id": row["id"], "suite": row["suite"], "suite_json": json.loads(row["suite_json"]),
                "model_keys": json.loads(row["model_keys"]),
                "summary": json.loads(row["summary"]) if row["summary"] else None}


def _model_row(row: sqlite3.Row) -> dict[str, Any]:
    return {"key": row["key"], "hparams": json.loads(row["hparams"]), "seed": row["seed"],
            "config": json.loads(row["config"]), "status": row["status"],
            "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
            "error": row["error"], "provenance": json.loads(row["provenance"]),
            "seconds": row["seconds"]}


def _result_row(row: sqlite3.Row) -> dict[str, Any]:
    return {"key": row["key"], "model_key": row["model_key"], "kind": row["kind"],
            "name": row["name"], "params": json.loads(row["params"]), "value": row["value"],
            "data": json.loads(row["data"]) if row["data"] else None, "error": row["error"],
            "provenance": json.loads(row["provenance"]), "seconds": row["seconds"]}

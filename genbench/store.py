"""The embedded store: SQLite for records, safetensors for weights. No server.

Layout of a store directory::

    genbench.sqlite        models, results (measures, volumes, shared quantities), runs
    weights/<key>.safetensors   initial ("init.*") and final ("final.*") state of a model

Every write is committed at once (a killed run loses at most the item in flight).
Weights are written to a temporary file and renamed before the model row is
committed, so a committed model always has its weights. The row records the
SHA-256 of the weights file, checked on every read: a truncated, flipped, missing or
swapped file is a :class:`StoreDamage` naming the model, the file and the fix
(``genbench check --store S --repair``). Rows written before checksums existed
(``checksum`` NULL) are still read; only their header is checked.

Every SQLite or disk problem (locked, read-only, full, damaged) is a one-line
:class:`StoreError`; nothing already committed is lost. A store whose files are not
writable opens read-only, so ``leaderboard`` works on it. ``run.lock`` (an advisory
``flock``, released by the OS even on SIGKILL) keeps two runs off one store.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
    created REAL NOT NULL,
    checksum TEXT                    -- sha256 of weights/<key>.safetensors (NULL: older store)
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


MODEL_COLUMNS = ("key", "hparams", "seed", "config", "status", "metrics", "error",
                 "provenance", "seconds", "created", "checksum")


DEFAULT_STORE = ".genbench"  # where every command looks when --store is not given


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class StoreError(ValueError):
    """A store problem in one line, naming the store and what to do."""


class StoreDamage(StoreError):
    """A model's weights file is missing, damaged or another model's."""

    def __init__(self, store: Store, key: str, what: str):
        self.key = key
        super().__init__(f"model {key[:12]}: {store.weights_path(key)} {what}; run "
                         f"`genbench check --store {store.root} --repair`, then rerun to retrain it")


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """Turn SQLite and disk errors inside a Store method into one-line StoreErrors."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        except OSError as exc:
            raise self._explain(exc) from None

    return wrapper  # type: ignore[return-value]


class Store:
    """A store directory. Cheap to open; safe to reopen after a crash.

    ``readonly=None`` opens read-only when the store's files are not writable.
    ``timeout`` is how long a write waits for another process's lock.
    """

    def __init__(self, root: str | Path, readonly: bool | None = None, timeout: float = 60):
        self.root = Path(root)
        self.timeout = timeout
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--store {self.root} is a file, not a store directory; "
                             "give a directory (it is created if missing)")
        db_path = self.root / "genbench.sqlite"
        if readonly is None:
            readonly = self.root.exists() and not (
                os.access(self.root, os.W_OK) and (not db_path.exists() or os.access(db_path, os.W_OK)))
        self.readonly = readonly
        self.db = self._open(db_path)

    @_guarded
    def _open(self, db_path: Path) -> sqlite3.Connection:
        if self.readonly:
            if not db_path.exists():
                raise StoreError(f"--store {self.root}: no genbench store there")
            db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeout)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:  # WAL without a writable -shm: read the file as it is
                db.close()
                db = sqlite3.connect(f"{db_path.resolve().as_uri()}?immutable=1", uri=True)
            db.row_factory = sqlite3.Row
            return db
        (self.root / "weights").mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(db_path, timeout=self.timeout)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        columns = {r["name"] for r in db.execute("PRAGMA table_info(models)")}
        if "checksum" not in columns:  # a store from before checksums: its rows stay valid
            db.execute("ALTER TABLE models ADD COLUMN checksum TEXT")
        db.commit()
        return db

    def _explain(self, exc: BaseException) -> StoreError:
        """The one line for a SQLite or OS error met while using this store."""
        if isinstance(exc, StoreError):
            return exc
        msg = str(exc).strip() or type(exc).__name__
        low = msg.lower()
        if "locked" in low or "busy" in low:
            return StoreError(f"store {self.root} is locked by another process (waited "
                              f"{self.timeout:g} s); wait for it to finish, then rerun")
        if "readonly" in low or "read-only" in low or getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES):
            return StoreError(f"store {self.root} is read-only ({msg}); read-only commands "
                              "(leaderboard, failures, check) work, a run needs write access")
        if "full" in low or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(f"disk full writing store {self.root}; free some space and rerun "
                              "(everything stored so far is kept)")
        if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in low or "not a database" in low):
            return StoreError(f"store {self.root}: genbench.sqlite is damaged ({msg}); restore it "
                              "from a backup, or move the store away and rerun to start afresh")
        return StoreError(f"store {self.root}: {msg}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- models -------------------------------------------------------------------
    def weights_path(self, key: str) -> Path:
        return self.root / "weights" / f"{key}.safetensors"

    @_guarded
    def save_model(self, spec: Any, init_state: dict, final_state: dict, metrics: dict,
                   seconds: float) -> None:
        """Persist a trained model: weights first (atomic rename), then its row with the
        weights' checksum."""
        from safetensors.torch import save

        tensors = {f"init.{k}": v.detach().cpu().contiguous() for k, v in init_state.items()}
        tensors.update({f"final.{k}": v.detach().cpu().contiguous() for k, v in final_state.items()})
        blob = save(tensors, metadata={"key": spec.key})
        path = self.weights_path(spec.key)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
            raise
        self._put_model(spec, "done", metrics=metrics, seconds=seconds,
                        checksum=hashlib.sha256(blob).hexdigest())

    def save_failure(self, spec: Any, error: str) -> None:
        self._put_model(spec, "failed", error=error)

    @_guarded
    def _put_model(self, spec: Any, status: str, metrics: dict | None = None,
                   error: str | None = None, seconds: float | None = None,
                   checksum: str | None = None) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO models ({', '.join(MODEL_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(MODEL_COLUMNS))})",
            (spec.key, _dumps(spec.hparams), spec.seed, _dumps(spec.config), status,
             _dumps(metrics) if metrics is not None else None, error,
             _dumps(spec.provenance), seconds, time.time(), checksum))
        self.db.commit()

    @_guarded
    def model(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM models WHERE key=?", (key,)).fetchone()
        return _model_row(row) if row else None

    @_guarded
    def models(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM models ORDER BY created").fetchall()
        out = [_model_row(r) for r in rows]
        if keys is not None:
            by_key = {m["key"]: m for m in out}
            out = [by_key[k] for k in keys if k in by_key]
        return out

    def load_weights(self, key: str) -> tuple[dict, dict]:
        """(initial state_dict, final state_dict) of a stored model; :class:`StoreDamage`
        when its file is missing, fails its checksum, or holds another model."""
        from safetensors.torch import load

        blob = self.verified_weights(key)
        try:
            tensors = load(blob)
        except Exception as exc:  # noqa: BLE001 - a header that parses but tensors that do not
            raise StoreDamage(self, key, f"is not a readable safetensors file ({exc})") from None
        init = {k[5:]: v for k, v in tensors.items() if k.startswith("init.")}
        final = {k[6:]: v for k, v in tensors.items() if k.startswith("final.")}
        return init, final

    def verified_weights(self, key: str) -> bytes:
        """The bytes of a model's weights file after every check that needs no tensors."""
        row = self.model(key)
        path = self.weights_path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise StoreDamage(self, key, "is missing") from None
        except OSError as exc:
            raise StoreDamage(self, key, f"cannot be read ({exc.strerror or exc})") from None
        owner, checksum = _header_key(blob), row.get("checksum") if row else None
        if owner is not None and owner != key:
            raise StoreDamage(self, key, f"holds the weights of model {owner[:12]} (swapped files)")
        if checksum and hashlib.sha256(blob).hexdigest() != checksum:
            raise StoreDamage(self, key, "is damaged (checksum mismatch: truncated or changed "
                                         "since it was written)")
        if owner is None:
            raise StoreDamage(self, key, "is not a readable safetensors file (bad header)")
        return blob

    @_guarded
    def integrity(self) -> list[str]:
        """SQLite's quick check: ``["ok"]``, or what is wrong."""
        return [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]

    @_guarded
    def drop_models(self, keys: list[str]) -> None:
        """Forget models entirely (row, results, weights file): a rerun retrains them."""
        for key in keys:
            self.db.execute("DELETE FROM results WHERE model_key=?", (key,))
            self.db.execute("DELETE FROM models WHERE key=?", (key,))
            self.db.commit()
            self.weights_path(key).unlink(missing_ok=True)

    @_guarded
    def forget_failures(self, model_keys: list[str]) -> dict[str, int]:
        """Delete the failed models and failed results of these models, so that the next
        run computes them again (``--retry-failed``)."""
        counts = {"models": 0, "values": 0}
        for key in model_keys:
            counts["models"] += self.db.execute(
                "DELETE FROM models WHERE key=? AND status='failed'", (key,)).rowcount
            counts["values"] += self.db.execute(
                "DELETE FROM results WHERE model_key=? AND error IS NOT NULL", (key,)).rowcount
        self.db.commit()
        return counts

    # -- run lock -----------------------------------------------------------------------
    @contextmanager
    def run_lock(self, suite: str) -> Iterator[None]:
        """Hold ``run.lock`` for a run; a second run on this store stops with a one-line
        error naming the first (its pid, suite and start time)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, documented
            yield
            return
        try:
            handle = open(self.root / "run.lock", "a+")  # noqa: SIM115 - held for the run
        except OSError as exc:
            raise self._explain(exc) from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"store {self.root} is in use by another run ({self.busy()}); "
                                 "wait for it to finish (a rerun then reuses its work) or use "
                                 "another --store") from None
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "suite": suite,
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the flock

    def busy(self) -> str | None:
        """Who holds ``run.lock`` ("pid 12, suite tiny, started ..."), or None when no run does."""
        try:
            import fcntl

            with open(self.root / "run.lock") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    try:
                        who = json.loads(handle.read() or "{}")
                    except json.JSONDecodeError:
                        who = {}
                    return (f"pid {who.get('pid', '?')}, suite {who.get('suite', '?')}, "
                            f"started {who.get('started', '?')}")
                return None
        except (ImportError, OSError):
            return None

    # -- results: measures, volumes, shared quantities --------------------------------
    @_guarded
    def result(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM results WHERE key=?", (key,)).fetchone()
        return _result_row(row) if row else None

    @_guarded
    def put_result(self, key: str, model_key: str, kind: str, name: str, params: dict,
                   provenance: dict, value: float | None = None, data: Any = None,
                   error: str | None = None, seconds: float | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (key, model_key, kind, name, _dumps(params), value,
             _dumps(data) if data is not None else None, error, _dumps(provenance),
             seconds, time.time()))
        self.db.commit()

    @_guarded
    def results(self, kind: str | None = None, model_keys: list[str] | None = None) -> list[dict]:
        rows = self.db.execute("SELECT * FROM results" + (" WHERE kind=?" if kind else "")
                               + " ORDER BY created", (kind,) if kind else ()).fetchall()
        out = [_result_row(r) for r in rows]
        if model_keys is not None:
            wanted = set(model_keys)
            out = [r for r in out if r["model_key"] in wanted]
        return out

    # -- runs -------------------------------------------------------------------------
    @_guarded
    def start_run(self, suite_name: str, suite_json: dict, model_keys: list[str]) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (suite, suite_json, model_keys, created) VALUES (?,?,?,?)",
            (suite_name, json.dumps(suite_json, default=str),  # key order = the suite's order
             _dumps(model_keys), time.time()))
        self.db.commit()
        return int(cur.lastrowid)

    @_guarded
    def finish_run(self, run_id: int, summary: dict) -> None:
        self.db.execute("UPDATE runs SET summary=? WHERE id=?", (_dumps(summary), run_id))
        self.db.commit()

    @_guarded
    def last_run(self, suite: str | None = None) -> dict[str, Any] | None:
        q = "SELECT * FROM runs" + (" WHERE suite=?" if suite else "") + " ORDER BY id DESC LIMIT 1"
        row = self.db.execute(q, (suite,) if suite else ()).fetchone()
        if row is None:
            return None
        return {"id": row["id"], "suite": row["suite"], "suite_json": json.loads(row["suite_json"]),
                "model_keys": json.loads(row["model_keys"]),
                "summary": json.loads(row["summary"]) if row["summary"] else None}


def _header_key(blob: bytes) -> str | None:
    """The model key a safetensors file was written for (its ``__metadata__``), or None."""
    try:
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + size])
        return str(header["__metadata__"]["key"])
    except (struct.error, ValueError, KeyError, TypeError):
        return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``, so
    a killed process leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _model_row(row: sqlite3.Row) -> dict[str, Any]:
    return {"key": row["key"], "hparams": json.loads(row["hparams"]), "seed": row["seed"],
            "config": json.loads(row["config"]), "status": row["status"],
            "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
            "error": row["error"], "provenance": json.loads(row["provenance"]),
            "seconds": row["seconds"], "checksum": row["checksum"] if "checksum" in row.keys() else None}


def _result_row(row: sqlite3.Row) -> dict[str, Any]:
    return {"key": row["key"], "model_key": row["model_key"], "kind": row["kind"],
            "name": row["name"], "params": json.loads(row["params"]), "value": row["value"],
            "data": json.loads(row["data"]) if row["data"] else None, "error": row["error"],
            "provenance": json.loads(row["provenance"]), "seconds": row["seconds"]}

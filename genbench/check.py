"""What is wrong in a store, said in one line each: damaged weights, failed models and
values, an unfinished run; and the checks on output paths made before any work.

``genbench check`` (:func:`check_store`), ``genbench failures`` (:func:`list_failures`),
the failure lines of the run summary and of the leaderboard (:func:`failure_summary`,
:func:`notes`) all read the store through here, so they agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from genbench.store import Store, StoreDamage, StoreError


# -- failures ---------------------------------------------------------------------------
def _kind(error: str) -> str:
    """The kind of an error line: its exception name ("RuntimeError: x" -> "RuntimeError")."""
    head = error.split(":", 1)[0]
    return head if head.isidentifier() else error[:40]


def _first_of_each_kind(errors: list[tuple[str, str]]) -> list[str]:
    """``[(what, error)]`` -> one line per (what, kind of error): count and first message."""
    groups: dict[tuple[str, str], list[str]] = {}
    for what, error in errors:
        groups.setdefault((what, _kind(error)), []).append(error)
    return [f"{len(errs)} x {what}: {errs[0]}" for (what, _), errs in groups.items()]


def suite_value_keys(suite: Any, model_keys: list[str], registry: Any) -> dict[str, str]:
    """{result key: measure name} of every value the suite asks for."""
    from genbench.keys import measure_key, suite_measures

    measures = suite_measures(suite, registry)
    return {measure_key(k, name, version, params): name for k in model_keys
            for name, _, version, params in measures}


def failures(store: Store, suite: Any, model_keys: list[str], registry: Any) -> dict[str, list]:
    """The suite's failed models and failed values, as stored."""
    wanted = suite_value_keys(suite, model_keys, registry)
    models = [m for m in store.models(model_keys) if m["status"] == "failed"]
    values = [r for r in store.results(kind="measure", model_keys=model_keys)
              if r["key"] in wanted and r["error"]]
    return {"models": models, "values": values}


def failure_summary(store: Store, suite: Any, model_keys: list[str], registry: Any) -> dict[str, Any]:
    """The summary fields on failures: ``measures_failed`` (stored failed values of this
    suite, earlier runs' included: they are still failed) and ``failures``, one line per
    kind of error with its count and first message."""
    found = failures(store, suite, model_keys, registry)
    errors = [("model", m["error"] or "unknown error") for m in found["models"]]
    errors += [(r["name"], r["error"]) for r in found["values"]]
    return {"measures_failed": len(found["values"]), "failures": _first_of_each_kind(errors)}


def partial_summary(store: Store, last: dict[str, Any], suite: Any, registry: Any) -> dict[str, Any]:
    """The summary of a run that has not finished (in progress, or stopped)."""
    keys = last["model_keys"]
    done = sum(1 for m in store.models(keys) if m["status"] == "done")
    holder = store.busy()
    why = f"a run is in progress: {holder}" if holder else "the run stopped before the end; rerun to finish"
    return {"models": len(keys), "partial": f"partial: {done} of {len(keys)} models ({why})",
            "failed": sum(1 for m in store.models(keys) if m["status"] == "failed"),
            **failure_summary(store, suite, keys, registry)}


def notes(summary: dict[str, Any]) -> list[str]:
    """The lines printed under a run summary and a leaderboard: partial run, failures."""
    out = [summary["partial"]] if summary.get("partial") else []
    failed, values = summary.get("failed", 0), summary.get("measures_failed", 0)
    if failed or values:
        out.append(f"{failed} model(s) and {values} measure value(s) failed "
                   "(`genbench failures` lists them; `genbench run --retry-failed` retries them):")
        out += [f"  {line}" for line in summary.get("failures", [])]
    return out


def list_failures(store_path: str | Path, registry: Any = None) -> list[dict[str, Any]]:
    """Every failed model and value in a store (any suite): kind, model, name, error."""
    with open_store(store_path) as st:
        rows = [{"kind": "model", "model": m["key"], "name": "", "hparams": m["hparams"],
                 "error": m["error"]} for m in st.models() if m["status"] == "failed"]
        hparams = {m["key"]: m["hparams"] for m in st.models()}
        rows += [{"kind": r["kind"], "model": r["model_key"], "name": r["name"],
                  "hparams": hparams.get(r["model_key"], {}), "error": r["error"]}
                 for r in st.results() if r["error"]]
    return rows


def retry_failed(store_path: str | Path, model_keys: list[str]) -> dict[str, int]:
    """Forget the failures of these models so the next run computes them again."""
    if not (Path(store_path) / "genbench.sqlite").exists():
        return {"models": 0, "values": 0}
    with Store(store_path) as st:
        return st.forget_failures(model_keys)


# -- store damage ---------------------------------------------------------------------
def open_store(store_path: str | Path, readonly: bool | None = None) -> Store:
    if not (Path(store_path) / "genbench.sqlite").exists():
        if Path(store_path).exists() and not Path(store_path).is_dir():
            raise StoreError(f"--store {store_path} is a file, not a store directory")
        raise StoreError(f"--store {store_path}: no genbench store there; run `genbench run` first")
    return Store(store_path, readonly=readonly)


def check_store(store_path: str | Path, repair: bool = False) -> dict[str, Any]:
    """Check every stored model's weights (present, checksum, header, readable) and the
    SQLite file; with ``repair``, drop the damaged models so a rerun retrains them.

    Returns ``{"problems": [line], "notes": [line], "damaged": [key], "repaired": n}``.
    """
    st = None
    try:
        st = open_store(store_path, readonly=None if repair else True)
        integrity = st.integrity()
        models = st.models()
    except StoreError as exc:
        if st is None and not (Path(store_path) / "genbench.sqlite").is_file():
            raise  # no store there: a bad --store, not a problem found in a store
        if st is not None:
            st.close()
        return {"problems": [str(exc)], "notes": [], "damaged": [], "repaired": 0}
    with st:
        problems: list[str] = []
        if integrity != ["ok"]:
            problems.append(f"store {st.root}: genbench.sqlite is damaged (integrity check: "
                            f"{integrity[0]}); restore it from a backup")
        damaged = []
        for m in models:
            if m["status"] != "done":
                continue
            try:
                st.load_weights(m["key"])
            except StoreDamage as exc:
                problems.append(str(exc))
                damaged.append(m["key"])
        out_notes = []
        unchecked = sum(1 for m in models if m["status"] == "done" and not m["checksum"])
        if unchecked:
            out_notes.append(f"{unchecked} model(s) stored before checksums: only their header "
                             "and tensors were checked")
        known = {m["key"] for m in models}
        strays = [p for p in (st.root / "weights").glob("*") if p.stem not in known]
        if strays:
            out_notes.append(f"{len(strays)} file(s) in weights/ belong to no model (left by a "
                             "killed run; harmless)")
        if repair and damaged:
            st.drop_models(damaged)
    return {"problems": problems, "notes": out_notes, "damaged": damaged,
            "repaired": len(damaged) if repair else 0}


# -- output paths ---------------------------------------------------------------------
def check_output(path: Path | None, option: str) -> None:
    """Refuse an output path that cannot be written, before any work (``ValueError``)."""
    if path is None:
        return
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable; choose another path")

"""The flow: suite -> population -> train -> store -> measure -> score -> leaderboard.

Each stage reads what the stage before stored, so a rerun does only the missing
work and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genbench.keys import measure_key, still_valid, suite_measures
from genbench.plugins import Registry, get_registry
from genbench.population import ModelSpec, expand
from genbench.store import DEFAULT_STORE, Store, StoreDamage, atomic_write_text
from genbench.suite import Suite, TrainRecipe, load_suite, short_names
from genbench.tasks import DataCache, MeasureTask, Trainer, TrainTask, Worker, groups, setup_for, write

# progress(stage, total) -> advance(description); the CLI draws bars, the library logs.
Progress = Callable[[str, int], Callable[[str], None]]


def _quiet(stage: str, total: int) -> Callable[[str], None]:
    return lambda description: None


def log_progress(stage: str, total: int) -> Callable[[str], None]:
    """run()'s default progress: an INFO line on logger "genbench.progress" per tenth of a stage."""
    log, done = logging.getLogger("genbench.progress"), [0]

    def advance(description: str) -> None:
        done[0] += 1
        if done[0] == total or done[0] * 10 // total > (done[0] - 1) * 10 // total:
            log.info("%s: %d/%d (%s)", stage, done[0], total, description)

    return advance


def resolve_device(device: str = "auto") -> str:
    """``auto``: cuda when available, else cpu. Called only when a stage has work, so a
    rerun with nothing to do never imports torch; ``cpu`` needs no torch to resolve."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return device


class Stage:
    """The driver's side of a stage: runs its tasks on an executor and writes every
    record to the store the moment its task's records arrive (nothing else writes it)."""

    def __init__(self, name: str, store: Store, advance: Callable[[str], None]):
        self.name, self.store, self.advance = name, store, advance
        self.workers: set[str] = set()
        self.counts = {"trained": 0, "failed": 0, "computed": 0}

    def on_done(self, task: Any, records: list[dict[str, Any]]) -> None:
        for record in records:
            write(self.store, record)
            self.workers.update([record["worker"]] if "worker" in record else [])
            if record["type"] == "model":
                self.counts["trained"] += 1
                self.advance(_describe(record["spec"]))
            elif record["type"] == "model_failed":
                self.counts["failed"] += 1
                self.advance(_describe(record["spec"]))
            elif record["kind"] == "measure":
                self.counts["computed"] += 1
                self.advance(record["name"])


def make_executor(suite: Suite, registry: Registry, executor: str | None,
                  executor_params: dict[str, Any] | None) -> Any:
    """The executor to run with: ``executor`` (its params from ``executor_params`` only)
    or the suite's (its params, updated by ``executor_params``, e.g. ``{"address": ...}``)."""
    ref = suite.executor if executor is None else type(suite.executor)(name=executor)
    params = {**(ref.params if executor is None else {}), **(executor_params or {})}
    return registry.create("executor", ref.name, params)


def train_population(specs: list[ModelSpec], suite: Suite, store: Store, registry: Registry,
                     device: str, progress: Progress, executor: str | None = None,
                     data: DataCache | None = None, batching: bool = True,
                     executor_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every spec the store lacks; store each model the moment it is trained.

    ``executor_params`` override the executor's params (e.g. ``{"address": "auto"}``
    for ``ray``); with ``executor`` given, the suite's own executor params are ignored.
    Returns the counts, and ``workers``: the processes that trained.
    """
    engine = make_executor(suite, registry, executor, executor_params)  # fails early if misspelled
    todo = untrained(specs, store)
    if not todo:
        return {"trained": 0, "failed": 0, "workers": 0}
    device = resolve_device(device)
    data = data or DataCache(registry)
    for spec in todo:  # a missing dataset is the user's error to fix, not a failed model
        data.get(spec.config)
    stage = Stage("train", store, progress("train", len(todo)))
    tasks = [TrainTask(g) for g in groups(todo, registry, batching)]
    engine.run(tasks, setup_for(Worker(registry, data, device, batching)), stage.on_done)
    return {"trained": stage.counts["trained"], "failed": stage.counts["failed"],
            "workers": len(stage.workers)}


def untrained(specs: list[ModelSpec], store: Store | str | Path) -> list[ModelSpec]:
    """The specs ``store`` holds no model for (neither trained nor failed); all of them
    when the store does not exist yet (it is not created to find that out)."""
    if not isinstance(store, Store):
        if not (Path(store) / "genbench.sqlite").exists():
            return list(specs)
        with Store(store) as st:
            return untrained(specs, st)
    stored = {m["key"] for m in store.models([s.key for s in specs])}
    return [s for s in specs if s.key not in stored]


def _describe(spec: ModelSpec) -> str:
    names = short_names(list(spec.hparams))
    return " ".join(f"{names[k]}={v}" for k, v in spec.hparams.items())[:60] or spec.key


def measure_settings(suite: Suite) -> dict[str, Any]:
    """What the context resolves shared quantities with (the suite's estimator params)."""
    return {"volume": suite.volume, "measure_seconds": suite.limits.measure_seconds}


def measure_population(specs: list[ModelSpec], suite: Suite, store: Store, registry: Registry,
                       device: str, progress: Progress, data: DataCache | None = None,
                       executor: str | None = None, batching: bool = True,
                       executor_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute every (model, measure) value the store lacks, or holds computed from
    lookups that now resolve otherwise (a changed estimator param, say); one task per
    model, each value stored as soon as its task returns."""
    engine = make_executor(suite, registry, executor, executor_params)
    data = data or DataCache(registry)
    measures = suite_measures(suite, registry)
    settings = measure_settings(suite)
    done = [s for s in specs if (store.model(s.key) or {}).get("status") == "done"]
    rows: dict[str, dict[str, dict]] = {}
    for r in store.results(model_keys=[s.key for s in done]):
        rows.setdefault(r["model_key"], {})[r["key"]] = r
    tasks = []
    for spec in done:
        mine = rows.get(spec.key, {})
        todo = []
        for name, raw, version, params in measures:
            key = measure_key(spec.key, name, version, params)
            row = mine.get(key)
            if row is None or not still_valid(spec.key, row["provenance"].get("deps", []),
                                              registry, settings):
                todo.append((name, raw, key))
        if not todo:
            continue
        try:
            store.verified_weights(spec.key)  # a damaged file fails this model's values only
        except StoreDamage as exc:
            for record in MeasureTask(spec, todo, settings, "", {}).failed(str(exc)):
                write(store, record)
            continue
        known = {k: r for k, r in mine.items() if r["kind"] != "measure"}
        tasks.append(MeasureTask(spec, todo, settings, str(store.weights_path(spec.key)), known))
    total = len(done) * len(measures)
    # Largest models first: a pool's workers then finish together, on small models.
    tasks.sort(key=lambda t: -Path(t.weights).stat().st_size)
    if not tasks:
        return {"computed": 0, "reused": total, "workers": 0}
    for spec in done:
        data.get(spec.config)
    device = resolve_device(device)
    stage = Stage("measure", store, progress("measure", sum(len(t) for t in tasks)))
    engine.run(tasks, setup_for(Worker(registry, data, device, batching)), stage.on_done)
    return {"computed": stage.counts["computed"], "reused": total - stage.counts["computed"],
            "workers": len(stage.workers)}


def collect(store: Store, suite: Suite, specs_keys: list[str], registry: Registry,
            ) -> list[dict[str, Any]]:
    """One row per trained model of the suite: hparams, metrics and the values of exactly
    the suite's measures (looked up by content key, so a value another suite stored
    under other params is never shown), and ``parts`` of the measures that have them."""
    measures = [(name, version, params) for name, _, version, params in suite_measures(suite, registry)]
    stored = {r["key"]: r for r in store.results(kind="measure", model_keys=specs_keys)}
    from genbench.training import converged

    rows = []
    for m in store.models(specs_keys):
        if m["status"] != "done":
            continue
        met = m["metrics"]
        values = {n: stored.get(measure_key(m["key"], n, v, p)) for n, v, p in measures}
        row = {"key": m["key"], "hparams": m["hparams"], "seed": m["seed"],
               "train_loss": met["train_loss"], "test_loss": met["test_loss"],
               "train_acc": met["train_acc"], "test_acc": met["test_acc"],
               "gap": met["gap"], "acc_gap": met["acc_gap"], "epochs": met["epochs"],
               "converged": converged(met, TrainRecipe(**m["config"]["train"])),
               "measures": {n: r["value"] if r else None for n, r in values.items()}}
        parts = {n: r["data"]["parts"] for n, r in values.items()
                 if r and isinstance(r["data"], dict) and "parts" in r["data"]}
        if parts:
            row["parts"] = parts
        rows.append(row)
    return rows


def score_rows(rows: list[dict[str, Any]], suite: Suite, preset: str | None = None,
               bootstrap: int | None = None, include_unconverged: bool | None = None,
               ) -> dict[str, Any] | None:
    """Score every measure of the suite on the collected rows (see :mod:`genbench.scoring`),
    leaving out unconverged models unless asked; None below 3 scored models."""
    import numpy as np

    from genbench.scoring import score_population

    if include_unconverged is None:
        include_unconverged = suite.scoring.include_unconverged
    left_out = 0 if include_unconverged else sum(not r.get("converged", True) for r in rows)
    if not include_unconverged:
        rows = [r for r in rows if r.get("converged", True)]
    if len(rows) < 3:
        return None

    measures = {n: np.array([r["measures"][n] if r["measures"][n] is not None else np.nan
                             for r in rows], dtype=float) for n in suite.measures}
    hparams = {h: np.array([r["hparams"].get(h) for r in rows], dtype=object)
               for h in suite.hyperparameters()}
    gaps = {"loss": np.array([r["gap"] for r in rows], dtype=float),
            "acc": np.array([r["acc_gap"] for r in rows], dtype=float)}
    board = score_population(measures, gaps, hparams, condition_on=suite.condition_on(),
                             against=suite.against(), preset=preset or suite.scoring.preset,
                             max_omega=suite.scoring.max_omega,
                             bootstrap=suite.scoring.bootstrap if bootstrap is None else bootstrap,
                             seed=suite.scoring.seed)
    board["left_out"] = {"unconverged": left_out}
    return board


def run(suite: str | Path | Suite = "default", store: str | Path = DEFAULT_STORE,
        device: str = "auto", executor: str | None = None, json_path: str | Path | None = None,
        progress: Progress | None = None, registry: Registry | None = None,
        batching: bool = True, executor_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a suite end to end and return the run JSON (see docs/concepts.md for its shape)."""
    from genbench.check import failure_summary
    t0 = time.perf_counter()
    registry = registry or get_registry()
    suite = suite if isinstance(suite, Suite) else load_suite(suite, registry)
    progress = progress or log_progress
    if device != "auto":
        device = resolve_device(device)  # a bad --device fails before any work; auto resolves
                                         # in the stage that needs it (none on a no-op rerun)
    specs = expand(suite, registry)
    keys = [s.key for s in specs]
    with Store(store) as st, st.run_lock(suite.name):
        run_id = st.start_run(suite.name, suite.model_dump(mode="json"), keys)
        data = DataCache(registry)
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        trained = train_population(specs, suite, st, registry, device, progress, executor, data,
                                   batching, executor_params)
        seconds["train"], t = time.perf_counter() - t, time.perf_counter()
        measured = measure_population(specs, suite, st, registry, device, progress, data,
                                      executor, batching, executor_params)
        seconds["measure"], t = time.perf_counter() - t, time.perf_counter()
        rows = collect(st, suite, keys, registry)
        board = score_rows(rows, suite)
        seconds["score"] = time.perf_counter() - t
        failed = sum(1 for m in st.models(keys) if m["status"] == "failed")
        summary = {"models": len(specs), "trained": trained["trained"],
                   "reused": len(rows) - trained["trained"],
                   "failed": failed, "unconverged": sum(not r["converged"] for r in rows), "measures_computed": measured["computed"],
                   "measures_reused": measured["reused"],
                   "measures_failed": sum(v is None for r in rows for v in r["measures"].values()),
                   "workers": {"train": trained["workers"], "measure": measured["workers"]},
                   "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
                   "seconds": round(time.perf_counter() - t0, 3)}
        summary.update(failure_summary(st, suite, keys, registry))  # measures_failed, failures
        result = build_result(suite, str(st.root), summary, rows, board)
        st.finish_run(run_id, summary)
    if json_path is not None:
        write_json(result, json_path)
    return result


def build_result(suite: Suite, store: str, summary: dict[str, Any], rows: list[dict[str, Any]],
                 board: dict[str, Any] | None) -> dict[str, Any]:
    return {"suite": suite.name, "store": store, "summary": summary,
            "hyperparameters": short_names(suite.hyperparameters()),
            "models": rows,
            "scoring": {k: v for k, v in (board or {}).items() if k != "leaderboard"},
            "leaderboard": (board or {}).get("leaderboard", {})}


def write_json(obj: Any, path: str | Path) -> None:
    import json

    # numpy scalars become Python numbers; anything else unexpected becomes its text
    atomic_write_text(path, json.dumps(obj, indent=2, default=lambda o: o.item()
                                     if hasattr(o, "item") else str(o)) + "\n")


def leaderboard(store: str | Path = DEFAULT_STORE, suite: str | None = None,
                preset: str | None = None, registry: Registry | None = None,
                include_unconverged: bool | None = None) -> dict[str, Any]:
    """Re-score the last run in a store (of ``suite``, if given) from stored records alone."""
    from genbench.check import partial_summary
    registry = registry or get_registry()
    if not (Path(store) / "genbench.sqlite").exists():
        raise FileNotFoundError(f"--store {store}: no genbench store there; run `genbench run` first")
    with Store(store) as st:
        last = st.last_run(suite)
        if last is None:
            raise LookupError(f"--store {store}: no run{' of ' + suite if suite else ''} recorded")
        s = Suite(**last["suite_json"])
        rows = collect(st, s, last["model_keys"], registry)
        board = score_rows(rows, s, preset=preset, include_unconverged=include_unconverged)
        return build_result(s, str(st.root), last["summary"] or partial_summary(st, last, s, registry),
                            rows, board)


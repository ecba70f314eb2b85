"""The flow: suite -> population -> train -> store -> measure -> score -> leaderboard.

Each stage reads what the stage before stored, so a rerun does only the missing
work and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genbench.plugins import Registry, get_registry
from genbench.population import ModelSpec, content_key, dataset_key, expand
from genbench.store import Store
from genbench.suite import Suite, TrainRecipe, load_suite, short_names
from genbench.threads import sensible_threads, torch_threads

# progress(stage, total) -> advance(description); the CLI draws bars, the library stays quiet.
Progress = Callable[[str, int], Callable[[str], None]]
DEFAULT_STORE = ".genbench"


def _quiet(stage: str, total: int) -> Callable[[str], None]:
    return lambda description: None


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return device


class DataCache:
    """Loads each distinct dataset config once per process."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._cache: dict[str, Any] = {}

    def get(self, config: dict[str, Any]) -> Any:
        key = dataset_key(config, self.registry)
        if key not in self._cache:
            entry = self.registry.get("dataset", config["dataset"]["name"])
            self._cache[key] = entry.cls(entry.cls.Params(**config["dataset"]["params"])).load()
        return self._cache[key]


class Trainer:
    """What an executor calls: splits jobs into groups and trains a group.

    A group is a list of specs trained together (one stacked computation when
    batching is on, see :mod:`genbench.batched`); ``train_group`` returns one result
    or exception per spec. Specs that cannot be stacked form groups of one and are
    trained by :func:`genbench.training.train_one`; so is a group the batched engine
    turns down (a debug log says why) or fails on (a warning says so: the models are
    still trained, one at a time, with the reference path's results).
    """

    max_group = 512  # models per stack (bounds memory on big populations)

    def __init__(self, registry: Registry, data: DataCache, device: str, batching: bool = True):
        self.registry, self.data, self.device, self.batching = registry, data, device, batching

    def groups(self, jobs: list[ModelSpec]) -> list[list[ModelSpec]]:
        """Batchable specs sharing dataset, architecture, batch size and optimizer type
        together (in order of first appearance); every other spec alone."""
        if not self.batching:
            return [[job] for job in jobs]
        from genbench.batched import group_key, why_not_batchable

        log = logging.getLogger("genbench.batched")
        out: list[list[ModelSpec]] = []
        open_groups: dict[str, list[ModelSpec]] = {}
        for job in jobs:
            try:
                key = group_key(job, self.registry)
            except Exception as exc:  # noqa: BLE001 - train_one will report the real error
                key, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = why_not_batchable(job, self.registry) if key is None else ""
            if key is None:
                log.debug("model %s trains alone: %s", job.key, why)
                out.append([job])
                continue
            group = open_groups.get(key)
            if group is None or len(group) >= self.max_group:
                group = open_groups[key] = []
                out.append(group)
            group.append(job)
        return out

    def train_group(self, group: list[ModelSpec]) -> list[Any]:
        if self.batching and len(group) > 1:
            from genbench.batched import NotBatchable, train_batched

            log = logging.getLogger("genbench.batched")
            try:
                keys = {dataset_key(s.config, self.registry) for s in group}
                if len(keys) == 1:
                    return train_batched(group, self.data.get(group[0].config), self.registry,
                                         self.device)
                log.debug("group of %d models trained one at a time: it mixes datasets", len(group))
            except NotBatchable as exc:
                log.debug("group of %d models trained one at a time: %s", len(group), exc)
            except Exception as exc:  # noqa: BLE001 - the reference path still trains them
                log.warning("batched training failed (%s: %s); training %d models one at a time",
                            type(exc).__name__, exc, len(group))
        from genbench.training import train_one

        results: list[Any] = []
        for spec in group:
            try:
                results.append(train_one(spec, self.data.get(spec.config), self.registry, self.device))
            except Exception as exc:  # noqa: BLE001 - a failed model is recorded, the run goes on
                results.append(exc)
        return results


def measure_entries(suite: Suite, registry: Registry) -> list[tuple[Any, Any, dict]]:
    """(entry, instance, key material) for each measure of the suite."""
    out = []
    for name, raw in suite.measures.items():
        entry = registry.get("measure", name)
        params = entry.cls.Params(**raw)
        material = {"kind": "measure", "name": name, "version": str(entry.cls.version),
                    "params": params.identity(), "needs": needs_identity(entry.cls.needs, suite,
                                                                       registry)}
        out.append((entry, entry.cls(params), material))
    return out


def needs_identity(needs: tuple[str, ...], suite: Suite, registry: Registry) -> dict[str, Any]:
    """What a measure's value depends on beyond its own params: the version and resolved
    params of each volume estimator it reads, the versions of the searches it uses."""
    from genbench import sharpness

    out: dict[str, Any] = {}
    for need in needs:
        if need.startswith("volume:"):
            est = registry.get("volume_estimator", need.split(":", 1)[1]).cls
            out[need] = {"version": str(est.version),
                         "params": est.Params(**suite.volume.get(est.name, {})).identity()}
        elif need in ("sigma", "alpha"):
            out[need] = {"sigma": sharpness.SIGMA_VERSION, "alpha": sharpness.ALPHA_VERSION}[need]
    return out


def measure_key(model_key: str, material: dict[str, Any]) -> str:
    """The store key of one measure value of one model."""
    return content_key({"model": model_key, **material})


def train_population(specs: list[ModelSpec], suite: Suite, store: Store, registry: Registry,
                     device: str, progress: Progress, executor: str | None = None,
                     data: DataCache | None = None, batching: bool = True,
                     executor_params: dict[str, Any] | None = None) -> dict[str, int]:
    """Train every spec the store lacks; store each model the moment it is trained.

    ``executor_params`` override the executor's params (e.g. ``{"address": "auto"}``
    for ``ray``); with ``executor`` given, the suite's own executor params are ignored.
    """
    ref = suite.executor if executor is None else type(suite.executor)(name=executor)
    entry = registry.get("executor", ref.name)  # a misspelled executor fails even with nothing to do
    params = {**(ref.params if executor is None else {}), **(executor_params or {})}
    runner = entry.cls(entry.cls.Params(**params))
    stored = {m["key"] for m in store.models()}
    todo = [s for s in specs if s.key not in stored]
    counts = {"trained": 0, "failed": 0}
    if not todo:
        return counts
    data = data or DataCache(registry)
    for spec in todo:  # a missing dataset is the user's error to fix, not a failed model
        data.get(spec.config)
    advance = progress("train", len(todo))

    def on_done(spec: ModelSpec, result: Any) -> None:
        if isinstance(result, BaseException):
            store.save_failure(spec, f"{type(result).__name__}: {result}")
            counts["failed"] += 1
        else:
            store.save_model(spec, result.init_state, result.final_state, result.metrics,
                             result.seconds)
            counts["trained"] += 1
        advance(_describe(spec))

    runner.run(todo, Trainer(registry, data, device, batching), on_done)
    return counts


def _describe(spec: ModelSpec) -> str:
    names = short_names(list(spec.hparams))
    return " ".join(f"{names[k]}={v}" for k, v in spec.hparams.items())[:60] or spec.key


def measure_population(specs: list[ModelSpec], suite: Suite, store: Store, registry: Registry,
                       device: str, progress: Progress, data: DataCache | None = None) -> dict[str, int]:
    """Compute every (model, measure) value the store lacks; store each as soon as it exists."""
    data = data or DataCache(registry)
    measures = measure_entries(suite, registry)
    done = {m["key"]: m for m in store.models() if m["status"] == "done"}
    work = []
    for spec in specs:
        if spec.key not in done:
            continue
        missing = [(e, inst, measure_key(spec.key, mat), mat) for e, inst, mat in measures]
        missing = [m for m in missing if store.result(m[2]) is None]
        if missing:
            work.append((spec, missing))
    counts = {"computed": 0, "reused": len(done.keys() & {s.key for s in specs}) * len(measures)}
    total = sum(len(m) for _, m in work)
    if not total:
        return counts
    advance = progress("measure", total)
    settings = {"volume": suite.volume}
    with torch_threads(sensible_threads()):
        _measure_work(work, store, registry, device, data, settings, advance, counts)
    return counts


def _measure_work(work: list, store: Store, registry: Registry, device: str, data: DataCache,
                  settings: dict[str, Any], advance: Callable[[str], None],
                  counts: dict[str, int]) -> None:
    from genbench.context import MeasureContext

    for spec, missing in work:
        init, final = store.load_weights(spec.key)
        ctx = MeasureContext(key=spec.key, hparams=spec.hparams, config=spec.config,
                             data=data.get(spec.config), registry=registry, store=store,
                             init_state=init, final_state=final, device=device, settings=settings)
        for entry, inst, rkey, mat in missing:
            t0 = time.perf_counter()
            value, error = None, None
            try:
                value = float(inst.compute(ctx))
                if not math.isfinite(value):
                    error, value = f"non-finite value {value}", None
            except Exception as exc:  # noqa: BLE001 - stored per model; the run goes on
                error = f"{type(exc).__name__}: {exc}"
            store.put_result(rkey, spec.key, "measure", entry.cls.name, mat["params"],
                             entry.provenance, value=value, error=error,
                             seconds=time.perf_counter() - t0)
            counts["computed"] += 1
            counts["reused"] -= 1
            advance(entry.cls.name)


def collect(store: Store, suite: Suite, specs_keys: list[str], registry: Registry,
            ) -> list[dict[str, Any]]:
    """One row per trained model of the suite: hparams, metrics and the values of exactly
    the suite's measures (looked up by content key, so a value another suite stored
    under other params is never shown)."""
    from genbench.training import converged

    measures = [(e.cls.name, mat) for e, _, mat in measure_entries(suite, registry)]
    stored = {r["key"]: r["value"] for r in store.results(kind="measure", model_keys=specs_keys)}
    rows = []
    for m in store.models(specs_keys):
        if m["status"] != "done":
            continue
        met = m["metrics"]
        rows.append({"key": m["key"], "hparams": m["hparams"], "seed": m["seed"],
                     "train_loss": met["train_loss"], "test_loss": met["test_loss"],
                     "train_acc": met["train_acc"], "test_acc": met["test_acc"],
                     "gap": met["gap"], "acc_gap": met["acc_gap"], "epochs": met["epochs"],
                     "converged": converged(met, TrainRecipe(**m["config"]["train"])),
                     "measures": {n: stored.get(measure_key(m["key"], mat)) for n, mat in measures}})
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
    t0 = time.perf_counter()
    registry = registry or get_registry()
    suite = suite if isinstance(suite, Suite) else load_suite(suite, registry)
    progress = progress or _quiet
    device = resolve_device(device)
    specs = expand(suite, registry)
    keys = [s.key for s in specs]
    with Store(store) as st:
        run_id = st.start_run(suite.name, suite.model_dump(mode="json"), keys)
        data = DataCache(registry)
        trained = train_population(specs, suite, st, registry, device, progress, executor, data,
                                   batching, executor_params)
        measured = measure_population(specs, suite, st, registry, device, progress, data)
        rows = collect(st, suite, keys, registry)
        board = score_rows(rows, suite)
        failed = sum(1 for m in st.models(keys) if m["status"] == "failed")
        summary = {"models": len(specs), "trained": trained["trained"],
                   "reused": len(rows) - trained["trained"],
                   "failed": failed, "unconverged": sum(not r["converged"] for r in rows), "measures_computed": measured["computed"],
                   "measures_reused": measured["reused"],
                   "seconds": round(time.perf_counter() - t0, 3)}
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
    Path(path).write_text(json.dumps(obj, indent=2, default=lambda o: o.item()
                                     if hasattr(o, "item") else str(o)) + "\n")


def leaderboard(store: str | Path = DEFAULT_STORE, suite: str | None = None,
                preset: str | None = None, registry: Registry | None = None,
                include_unconverged: bool | None = None) -> dict[str, Any]:
    """Re-score the last run in a store (of ``suite``, if given) from stored records alone."""
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
        return build_result(s, str(st.root), last["summary"] or {}, rows, board)


"""A stage of a run is a list of tasks, and any executor runs them.

A task is a pure unit of work: :class:`TrainTask` trains one group of models,
:class:`MeasureTask` computes every missing measure of one model (so the shared
quantities it needs are computed once for all of them). Its inputs are specs, a
data config, weights and params; its output is a list of *records* (plain dicts,
see :func:`write`). A task never touches the store: the driver writes each
record the moment the task's records arrive, so an interrupted run keeps all
finished tasks. :func:`execute` runs one task and turns its exception into
failure records: a task that raises fails only itself.

Records: ``{"type": "model", "spec", "init_state", "final_state", "metrics",
"seconds"}``, ``{"type": "model_failed", "spec", "error"}`` and ``{"type":
"result", "key", "model_key", "kind", "name", "params", "provenance", "value",
"data", "error", "seconds"}`` (a measure value or a shared quantity); each also
carries ``"worker"``, the process that produced it (``host:pid``).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from genbench.keys import dataset_key
from genbench.limits import time_limit
from genbench.plugins import PLUGIN_ENV, Registry, contain
from genbench.plugins import measure_value as checked_number
from genbench.population import ModelSpec

Record = dict[str, Any]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DataCache:
    """Loads each distinct dataset config once per process (``bundles``: ones already
    loaded elsewhere, e.g. sent by the driver to a worker)."""

    def __init__(self, registry: Registry, bundles: dict[str, Any] | None = None):
        self.registry = registry
        self._cache: dict[str, Any] = dict(bundles or {})

    def key(self, config: dict[str, Any]) -> str:
        entry = self.registry.get("dataset", config["dataset"]["name"])
        return dataset_key(config, str(entry.cls.version))

    def get(self, config: dict[str, Any]) -> Any:
        key = self.key(config)
        if key not in self._cache:
            self._cache[key] = self.registry.create("dataset", config["dataset"]["name"],
                                                    config["dataset"]["params"]).load()
        return self._cache[key]

    def picklable(self) -> dict[str, Any]:
        """The loaded bundles that can travel to another process (one with an
        ``augment`` closure cannot: the worker loads it again)."""
        out = {}
        for key, bundle in self._cache.items():
            try:
                pickle.dumps(bundle)
            except Exception:  # noqa: BLE001
                continue
            out[key] = bundle
        return out


class Trainer:
    """Trains a group: one stacked computation when batching is on (see
    :mod:`genbench.batched`), else, or when the batched engine turns the group down
    (a debug log says why) or fails on it (a warning says so), one model at a time
    by :func:`genbench.training.train_one`. Returns one result or exception per spec."""

    max_group = 512  # models per stack (bounds memory on big populations)

    def __init__(self, registry: Registry, data: DataCache, device: str, batching: bool = True):
        self.registry, self.data, self.device, self.batching = registry, data, device, batching

    def groups(self, jobs: list[ModelSpec]) -> list[list[ModelSpec]]:
        """:func:`groups` with this trainer's registry and batching."""
        return groups(jobs, self.registry, self.batching, self.max_group)

    def train_group(self, group: list[ModelSpec]) -> list[Any]:
        if self.batching and len(group) > 1:
            from genbench.batched import NotBatchable, train_batched

            log = logging.getLogger("genbench.batched")
            try:
                if len({self.data.key(s.config) for s in group}) == 1:
                    return train_batched(group, self.data.get(group[0].config), self.registry,
                                         self.device)
                log.debug("group of %d models trained one at a time: it mixes datasets", len(group))
            except NotBatchable as exc:
                log.debug("group of %d models trained one at a time: %s", len(group), exc)
            except BaseException as exc:  # noqa: BLE001 - the reference path still trains them
                contain(exc)  # re-raises Ctrl-C/SIGTERM only
                log.warning("batched training failed (%s: %s); training %d models one at a time",
                            type(exc).__name__, exc, len(group))
        from genbench.training import train_one

        results: list[Any] = []
        for spec in group:
            try:
                results.append(train_one(spec, self.data.get(spec.config), self.registry, self.device))
            except BaseException as exc:  # noqa: BLE001 - a failed model is recorded, the run goes on
                contain(exc)  # re-raises Ctrl-C/SIGTERM only
                results.append(exc)
        return results


def groups(jobs: list[ModelSpec], registry: Registry, batching: bool,
           max_group: int = 512) -> list[list[ModelSpec]]:
    """Batchable specs sharing dataset, architecture, batch size and optimizer type
    together (in order of first appearance, at most ``max_group`` per stack, which
    bounds memory); every other spec alone."""
    if not batching:
        return [[job] for job in jobs]
    from genbench.batched import group_key, why_not_batchable

    log = logging.getLogger("genbench.batched")
    out: list[list[ModelSpec]] = []
    open_groups: dict[str, list[ModelSpec]] = {}
    for job in jobs:
        try:
            key = group_key(job, registry)
        except Exception as exc:  # noqa: BLE001 - train_one will report the real error
            key, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = why_not_batchable(job, registry) if key is None else ""
        if key is None:
            log.debug("model %s trains alone: %s", job.key, why)
            out.append([job])
            continue
        group = open_groups.get(key)
        if group is None or len(group) >= max_group:
            group = open_groups[key] = []
            out.append(group)
        group.append(job)
    return out


# -- the worker: what a task runs with, built once per process ------------------------
@dataclass
class Worker:
    """A process's registry, datasets and device."""

    registry: Registry
    data: DataCache
    device: str
    batching: bool = True

    def trainer(self) -> Trainer:
        return Trainer(self.registry, self.data, self.device, self.batching)


@dataclass
class WorkerSetup:
    """How an executor gets a :class:`Worker`: picklable, so it travels to worker
    processes and Ray tasks. A worker elsewhere loads the registry itself (entry
    points, under the driver's GENBENCH_PLUGINS, which a forkserver or a Ray node would
    not otherwise see) and imports any plugin the driver
    added by hand by module name; it starts with the datasets the driver loaded.
    In the driver's own process, :meth:`worker` is the driver's worker itself
    (what a worker elsewhere needs is worked out only when the setup is pickled)."""

    device: str
    batching: bool
    local: Worker | None = field(default=None, compare=False)
    extra_plugins: tuple[tuple[str, str, str], ...] | None = None  # (plugin, module, version)
    bundles: dict[str, Any] | None = None
    environ: dict[str, str | None] | None = None  # the plugin selection (PLUGIN_ENV)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells setups apart in a worker

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.local is not None:
            if state["extra_plugins"] is None:
                state["extra_plugins"] = extra_plugins(self.local.registry)
            if state["bundles"] is None:
                state["bundles"] = self.local.data.picklable()
            if state["environ"] is None:
                state["environ"] = {k: os.environ.get(k) for k in PLUGIN_ENV}
        return {**state, "local": None}

    def worker(self, device: str | None = None) -> Worker:
        if self.local is not None and device in (None, self.device):
            return self.local
        if self.local is not None:  # the driver's process, another device
            return Worker(self.local.registry, self.local.data, device or self.device, self.batching)
        import importlib

        from genbench.plugins import get_registry

        for name, value in (self.environ or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        registry = get_registry()
        for name, module, version in self.extra_plugins or ():
            if name not in registry.plugins:
                registry.add_plugin(importlib.import_module(module), name, version)
        return Worker(registry, DataCache(registry, self.bundles), device or self.device,
                      self.batching)


def setup_for(worker: Worker) -> WorkerSetup:
    """The setup of the driver's ``worker``."""
    return WorkerSetup(worker.device, worker.batching, local=worker)


def extra_plugins(registry: Registry) -> tuple[tuple[str, str, str], ...]:
    """Plugins of ``registry`` that a fresh ``get_registry()`` would not load."""
    from genbench.plugins import load_registry

    fresh = load_registry()
    modules: dict[str, str] = {}
    for table in registry.components.values():
        for entry in table.values():
            modules.setdefault(entry.plugin, entry.cls.__module__)
    return tuple((name, modules[name], info.version) for name, info in registry.plugins.items()
                 if name not in fresh.plugins and name in modules)


# -- the two kinds of task ------------------------------------------------------------
@dataclass
class TrainTask:
    """Train one group of models (stacked when batching is on)."""

    specs: list[ModelSpec]
    stage = "train"

    def run(self, worker: Worker) -> list[Record]:
        out = []
        for spec, result in zip(self.specs, worker.trainer().train_group(self.specs)):
            if isinstance(result, BaseException):
                out.append({"type": "model_failed", "spec": spec, "error": contain(result)})
            else:
                out.append({"type": "model", "spec": spec, "init_state": result.init_state,
                            "final_state": result.final_state, "metrics": result.metrics,
                            "seconds": result.seconds})
        return out

    def failed(self, error: str) -> list[Record]:
        return [{"type": "model_failed", "spec": spec, "error": error} for spec in self.specs]

    def split(self) -> list[TrainTask]:
        """Two halves (a stack trains fastest whole, but an idle worker trains nothing)."""
        half = len(self.specs) // 2
        return [TrainTask(self.specs[:half]), TrainTask(self.specs[half:])] if half else [self]

    def __len__(self) -> int:
        return len(self.specs)


@dataclass
class MeasureTask:
    """Compute ``measures`` (name, raw params, value key) of one trained model.

    ``weights`` is the model's weights file (same filesystem) or its ``(init, final)``
    states (see :meth:`portable`); ``known`` holds the stored shared quantities of
    this model (key -> row), so a task recomputes none that is still valid."""

    spec: ModelSpec
    measures: list[tuple[str, dict[str, Any], str]]
    settings: dict[str, Any]
    weights: str | tuple[dict, dict]
    known: dict[str, dict[str, Any]]
    stage = "measure"

    def portable(self) -> MeasureTask:
        """This task with its weights inline (for workers on other machines)."""
        return self if not isinstance(self.weights, str) else replace(self, weights=load_weights(self.weights))

    def run(self, worker: Worker) -> list[Record]:
        from genbench.context import MeasureContext

        init, final = load_weights(self.weights) if isinstance(self.weights, str) else self.weights
        results = TaskResults(self.known)
        ctx = MeasureContext(key=self.spec.key, hparams=self.spec.hparams, config=self.spec.config,
                             data=worker.data.get(self.spec.config), registry=worker.registry,
                             store=results, init_state=init, final_state=final,
                             device=worker.device, settings=self.settings)
        for name, raw, key in self.measures:
            entry = worker.registry.get("measure", name)
            t0 = time.perf_counter()
            value, parts, error = None, None, None
            with ctx.recording() as deps:
                try:
                    with time_limit(self.settings.get("measure_seconds")):
                        value, parts = measure_value(worker.registry.create("measure", name, raw)
                                                     .compute(ctx))
                except BaseException as exc:  # noqa: BLE001 - stored per value; the run goes on
                    error = contain(exc)  # sys.exit and time-outs included; Ctrl-C still stops
            results.put_result(key, self.spec.key, "measure", name,
                               entry.cls.Params(**raw).identity(),
                               {**entry.provenance, "deps": deps}, value=value,
                               data={"parts": parts} if parts else None, error=error,
                               seconds=time.perf_counter() - t0)
        return results.records

    def failed(self, error: str) -> list[Record]:
        return [{"type": "result", "key": key, "model_key": self.spec.key, "kind": "measure",
                 "name": name, "params": raw, "provenance": {"name": name}, "value": None,
                 "data": None, "error": error, "seconds": None} for name, raw, key in self.measures]

    def __len__(self) -> int:
        return len(self.measures)


def measure_value(out: Any) -> tuple[float, dict[str, float] | None]:
    """A measure's return value as (value, parts): a number, or ``{"value": number,
    "parts": {name: number}}``; anything else, or a non-finite value, is an error."""
    if isinstance(out, dict):
        if set(out) != {"value", "parts"} or not isinstance(out["parts"], dict):
            raise TypeError("a measure returns a number or {'value': number, 'parts': "
                            f"{{name: number}}}}, not a dict with keys {sorted(out)}")
        parts = {str(k): float(v) for k, v in out["parts"].items()}
        value = checked_number(out["value"])
    else:
        value, parts = checked_number(out), None
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {value}")
    return value, parts


def load_weights(path: str) -> tuple[dict, dict]:
    """(initial, final) state of a model from its weights file (layout: genbench.store)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    return ({k[5:]: v for k, v in tensors.items() if k.startswith("init.")},
            {k[6:]: v for k, v in tensors.items() if k.startswith("final.")})


class TaskResults:
    """A measure task's stand-in for the store: finds the shared quantities the driver
    sent, and keeps each new value as a record for the driver to store."""

    def __init__(self, known: dict[str, dict[str, Any]]):
        self.known, self.records = dict(known), []

    def result(self, key: str) -> dict[str, Any] | None:
        return self.known.get(key)

    def put_result(self, key: str, model_key: str, kind: str, name: str, params: dict,
                   provenance: dict, value: float | None = None, data: Any = None,
                   error: str | None = None, seconds: float | None = None) -> None:
        row = {"key": key, "model_key": model_key, "kind": kind, "name": name, "params": params,
               "provenance": provenance, "value": value, "data": data, "error": error,
               "seconds": seconds}
        self.known[key] = row
        self.records.append({"type": "result", **row})


def execute(task: TrainTask | MeasureTask, worker: Worker) -> list[Record]:
    """Run ``task`` in this process; its exception becomes its failure records. Every
    record is stamped with this worker's name."""
    try:
        records = task.run(worker)
    except BaseException as exc:  # noqa: BLE001 - a task that raises fails only itself
        records = task.failed(contain(exc))
    name = worker_name()
    return [{**r, "worker": name} for r in records]


def pack(records: list[Record]) -> bytes:
    """Records as plain pickle bytes: tensors travel inline (no shared-memory file
    descriptors to leak)."""
    return pickle.dumps(records)


def balance(tasks: list[Any], workers: int) -> list[Any]:
    """Split the largest splittable tasks until every worker has one, largest first."""
    tasks = list(tasks)
    while len(tasks) < workers:
        big = max(range(len(tasks)), key=lambda i: len(tasks[i]), default=None)
        if big is None or not hasattr(tasks[big], "split") or len(tasks[big]) < 2:
            break
        tasks += tasks.pop(big).split()
    return sorted(tasks, key=len, reverse=True)


def write(store: Any, record: Record) -> None:
    """Store one record (the driver alone calls this)."""
    if record["type"] == "model":
        store.save_model(record["spec"], record["init_state"], record["final_state"],
                         record["metrics"], record["seconds"])
    elif record["type"] == "model_failed":
        store.save_failure(record["spec"], record["error"])
    else:
        store.put_result(record["key"], record["model_key"], record["kind"], record["name"],
                         record["params"], record["provenance"], value=record["value"],
                         data=record["data"], error=record["error"], seconds=record["seconds"])


def portable(task: Any) -> Any:
    """``task`` with everything it reads inline (a measure task's weights), for a worker
    that may not see the driver's files."""
    return task.portable() if hasattr(task, "portable") else task

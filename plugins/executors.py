"""Built-in executors: how a population's training jobs are run.

- ``local``: in this process, group after group (each group one stacked
  computation when batching is on), with a thread count fitted to the idle cores.
- ``process``: a pool of worker processes across the cores (or one per GPU); each
  worker rebuilds the plugin registry itself and gets the datasets this process
  loaded (pickled once), and every group's results come back to this process,
  which stores them as they arrive.
- ``ray``: one Ray task per group on a Ray cluster (``address='auto'``) or a local
  instance, GPUs requested per task when training on CUDA; results are stored as
  each task finishes, so an interrupted cluster run resumes like any other.

Every executor hands each result to ``on_done`` in the calling process as soon as
its group finishes: the store is only ever written from there.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from dataclasses import dataclass
from typing import Any

from pydantic import Field

import genbench
from genbench.components import Executor, Params
from genbench.threads import sensible_threads, torch_threads, usable_cores


class LocalExecutor(Executor):
    """In-process, group after group; each result is stored before the next group starts."""

    name = "local"
    version = "1"

    class Params(Params):
        threads: int | None = Field(None, ge=1, description="torch threads (default: the idle usable cores)")

    def run(self, jobs, train, on_done):
        with torch_threads(self.params.threads or sensible_threads()):
            for group in train.groups(jobs):
                for job, result in zip(group, train.train_group(group)):
                    on_done(job, result)


# -- what a worker (process or Ray task) needs to rebuild the trainer ---------------
@dataclass(frozen=True)
class WorkerSetup:
    """Picklable recipe for a worker's Trainer: the worker loads the registry itself
    (entry points, under the inherited GENBENCH_PLUGINS settings) and imports any
    plugin the caller added by hand (``load_registry(extra=...)``) by module name."""

    extra_plugins: tuple[tuple[str, str, str], ...]  # (plugin name, module, version)
    batching: bool
    threads: int


def extra_plugins(registry: Any) -> tuple[tuple[str, str, str], ...]:
    """Plugins of ``registry`` that a fresh ``get_registry()`` would not load."""
    from genbench.plugins import load_registry

    fresh = load_registry()
    modules: dict[str, str] = {}
    for table in registry.components.values():
        for entry in table.values():
            modules.setdefault(entry.plugin, entry.cls.__module__)
    return tuple((name, modules[name], info.version) for name, info in registry.plugins.items()
                 if name not in fresh.plugins and name in modules)


def worker_registry(setup: WorkerSetup) -> Any:
    from genbench.plugins import get_registry

    registry = get_registry()
    for name, module, version in setup.extra_plugins:
        if name not in registry.plugins:
            registry.add_plugin(importlib.import_module(module), name, version)
    return registry


class PreloadedData:
    """A worker's data: the bundles the caller already loaded (sent once, pickled),
    else loaded here through the registry like ``DataCache``."""

    def __init__(self, registry: Any, bundles: dict[str, Any]):
        from genbench.runner import DataCache

        self.cache, self.bundles = DataCache(registry), bundles

    def get(self, config: dict[str, Any]) -> Any:
        from genbench.population import dataset_key

        key = dataset_key(config, self.cache.registry)
        return self.bundles[key] if key in self.bundles else self.cache.get(config)


def preload(train: Any, jobs: list[Any]) -> dict[str, Any]:
    """The jobs' datasets, loaded once here (the measure stage needs them anyway) so
    that workers need not generate them again; bundles that cannot be pickled (an
    ``augment`` closure) are left for the workers to load."""
    from genbench.population import dataset_key

    out: dict[str, Any] = {}
    for job in jobs:
        key = dataset_key(job.config, train.registry)
        if key not in out:
            bundle = train.data.get(job.config)
            try:
                pickle.dumps(bundle)
            except Exception:  # noqa: BLE001
                continue
            out[key] = bundle
    return out


def make_trainer(setup: WorkerSetup, device: str, bundles: dict[str, Any] | None = None) -> Any:
    from genbench.runner import Trainer

    registry = worker_registry(setup)
    return Trainer(registry, PreloadedData(registry, bundles or {}), device, setup.batching)


def pack_results(results: list[Any]) -> bytes:
    """Results as plain pickle bytes: tensors travel inline (no shared-memory file
    descriptors to leak), and an exception that cannot be pickled becomes a
    RuntimeError with its type and message."""
    safe = []
    for r in results:
        if isinstance(r, BaseException):
            try:
                pickle.loads(pickle.dumps(r))
            except Exception:  # noqa: BLE001
                r = RuntimeError(f"{type(r).__name__}: {r}")
        safe.append(r)
    return pickle.dumps(safe)


def train_packed(trainer: Any, group: list[Any]) -> bytes:
    try:
        results = trainer.train_group(group)
    except Exception as exc:  # noqa: BLE001 - recorded per model, the run goes on
        results = [exc] * len(group)
    return pack_results(results)


def balance(groups: list[list[Any]], workers: int) -> list[list[Any]]:
    """Split the largest groups in halves until every worker has one, largest first
    (a stack trains fastest whole, but an idle worker trains nothing)."""
    groups = [list(g) for g in groups]
    while len(groups) < workers:
        big = max(range(len(groups)), key=lambda i: len(groups[i]), default=None)
        if big is None or len(groups[big]) < 2:
            break
        g = groups.pop(big)
        groups += [g[:len(g) // 2], g[len(g) // 2:]]
    return sorted(groups, key=len, reverse=True)


# -- process pool -------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(devices: Any, default_device: str, setup: WorkerSetup,
                 bundles: dict[str, Any]) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    torch.set_num_threads(setup.threads)
    # Each worker takes one device; a worker the pool restarts reuses the first.
    try:
        _WORKER["trainer"] = make_trainer(setup, default_device if devices.empty()
                                          else devices.get(), bundles)
    except Exception as exc:  # noqa: BLE001 - raising here would make the pool restart it forever
        _WORKER["error"] = f"{type(exc).__name__}: {exc}"


def _train_in_worker(item: tuple[int, list[Any]]) -> tuple[int, bytes]:
    if "error" in _WORKER:  # the environment, not a model, is broken: stop the run with it
        raise RuntimeError(f"process executor: a worker could not start: {_WORKER['error']}")
    index, group = item
    return index, train_packed(_WORKER["trainer"], group)


def gpu_count(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device.startswith("cuda") else 0


class ProcessExecutor(Executor):
    """A pool of worker processes across the usable cores, or one per GPU on CUDA."""

    name = "process"
    version = "1"

    class Params(Params):
        workers: int | None = Field(None, ge=1, description="worker processes (default: one per GPU "
                                    "when training on cuda, else one per usable core)")
        threads: int | None = Field(None, ge=1, description="torch threads per worker (default: "
                                    "usable cores / workers)")
        start_method: str = Field("spawn", pattern="^(spawn|forkserver|fork)$",
                                  description="multiprocessing start method (spawn is safe with "
                                  "threads and CUDA)")

    def run(self, jobs, train, on_done):
        import multiprocessing

        # "cuda" spreads the workers over every GPU; an explicit "cuda:N" keeps them on N.
        gpus = gpu_count(train.device) if train.device == "cuda" else 0
        workers = self.params.workers or gpus or (1 if train.device.startswith("cuda")
                                                  else usable_cores())
        groups = balance(train.groups(jobs), workers)
        workers = max(1, min(workers, len(groups)))
        if gpus:
            devices = [f"cuda:{i % gpus}" for i in range(workers)]
        else:
            devices = [train.device] * workers
        threads = self.params.threads or max(1, usable_cores() // workers)
        setup = WorkerSetup(extra_plugins(train.registry), train.batching, threads)
        ctx = multiprocessing.get_context(self.params.start_method)
        device_queue = ctx.SimpleQueue()
        for d in devices:
            device_queue.put(d)
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(device_queue, devices[0], setup, preload(train, jobs))) as pool:
            for index, packed in pool.imap_unordered(_train_in_worker, list(enumerate(groups))):
                for job, result in zip(groups[index], pickle.loads(packed)):
                    on_done(job, result)


# -- Ray ----------------------------------------------------------------------------
def _ray_train(group: list[Any], device: str, setup: WorkerSetup,
               bundles: dict[str, Any]) -> bytes:
    """One Ray task: train a group (the worker keeps its trainer and data between tasks;
    ``bundles`` arrive once per worker through Ray's object store)."""
    import torch

    torch.set_num_threads(setup.threads)
    key = (setup, device, tuple(sorted(bundles)))
    if _WORKER.get("ray_key") != key:
        _WORKER["ray_key"], _WORKER["ray_trainer"] = key, make_trainer(setup, device, bundles)
    return train_packed(_WORKER["ray_trainer"], group)


class RayExecutor(Executor):
    """A Ray cluster or local instance: one task per group, stored as each task finishes."""

    name = "ray"
    version = "1"

    class Params(Params):
        address: str | None = Field(None, description="cluster to join ('auto': the running "
                                    "cluster, or 'ray://host:port'); default: the Ray instance "
                                    "this process already started, else a new local one")
        num_cpus: float = Field(1, gt=0, description="CPUs per task (also its torch threads)")
        num_gpus: float | None = Field(None, ge=0, description="GPUs per task (default: 1 when "
                                       "training on cuda, else 0)")
        temp_dir: str | None = Field(None, description="where a new local instance keeps its files")

    def run(self, jobs, train, on_done):
        try:
            import ray
        except ImportError:
            raise RuntimeError("executor 'ray' needs Ray: pip install 'genbench[ray]'") from None
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.params.address is not None:
                kwargs["address"] = self.params.address
            if self.params.temp_dir is not None:
                kwargs["_temp_dir"] = self.params.temp_dir
            ray.init(**kwargs)
            started = True
        on_gpu = train.device.startswith("cuda")
        gpus = self.params.num_gpus if self.params.num_gpus is not None else (1 if on_gpu else 0)
        # Ray shows a task only its GPUs (CUDA_VISIBLE_DEVICES): it trains on "cuda".
        device = "cuda" if on_gpu and gpus else train.device
        setup = WorkerSetup(extra_plugins(train.registry), train.batching,
                            max(1, int(self.params.num_cpus)))
        task = ray.remote(_ray_train).options(num_cpus=self.params.num_cpus, num_gpus=gpus)
        pending: dict[Any, list[Any]] = {}
        try:
            bundles = ray.put(preload(train, jobs))
            for group in train.groups(jobs):
                pending[task.remote(group, device, setup, bundles)] = group
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    try:
                        results = pickle.loads(ray.get(ref))
                    except Exception as exc:  # noqa: BLE001 - a crashed task fails its group only
                        results = [exc] * len(group)
                    for job, result in zip(group, results):
                        on_done(job, result)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


@genbench.hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(ProcessExecutor)
    register(RayExecutor)

"""Built-in executors: how a stage's tasks (train a group, measure a model) are run.

- ``local``: in this process, task after task, with a thread count fitted to the
  idle cores.
- ``process``: a pool of worker processes across the idle cores (or one per GPU; one
  worker runs in this process, as ``local``); each
  worker builds its :class:`genbench.tasks.Worker` once from the setup (its own
  registry, the datasets this process loaded, pickled once).
- ``ray``: one Ray task per genbench task on a Ray cluster (``address='auto'``) or a
  local instance, GPUs requested per task when running on CUDA (training and
  measuring alike); a task's weights travel with it, so a node need not see the store.

An executor uses only what :class:`genbench.components.Executor` lists; every one
hands each task's records to ``on_done`` in the calling process as soon as the task
finishes: the store is only ever written from there.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

from pydantic import Field

import genbench
from genbench.components import Executor, Params
from genbench.tasks import WorkerSetup, balance, execute, pack, portable
from genbench.threads import idle_cores, sensible_threads, torch_threads


class LocalExecutor(Executor):
    """In-process, task after task; each task's records are stored before the next starts."""

    name = "local"
    version = "1"

    class Params(Params):
        threads: int | None = Field(None, ge=1, description="torch threads (default: the idle usable cores)")

    def run(self, tasks, setup, on_done):
        worker = setup.worker()
        with torch_threads(self.params.threads or sensible_threads()):
            for task in tasks:
                on_done(task, execute(task, worker))


# -- process pool -------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(devices: Any, default_device: str, setup: WorkerSetup, threads: int,
                 started: Any) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    torch.set_num_threads(threads)
    # Each worker takes one device; a worker the pool restarts reuses the first.
    try:
        _WORKER["worker"] = setup.worker(default_device if devices.empty() else devices.get())
    except Exception as exc:  # noqa: BLE001 - raising here would make the pool restart it forever
        _WORKER["error"] = f"{type(exc).__name__}: {exc}"
    # No task before every worker is up: else the first to start takes a short stage alone.
    with contextlib.suppress(Exception):  # a worker the pool restarts later waits out alone
        started.wait(timeout=60)


def _run_in_worker(item: tuple[int, Any]) -> tuple[int, bytes]:
    if "error" in _WORKER:  # the environment, not a task, is broken: stop the run with it
        raise RuntimeError(f"process executor: a worker could not start: {_WORKER['error']}")
    index, task = item
    return index, pack(execute(task, _WORKER["worker"]))


# Imported once by the forkserver, so that a pool after the first starts in 0.3 s, not 3.
PRELOAD = ["torch", "genbench.tasks", "genbench.context", "genbench.training", "genbench.batched",
           *(f"genbench_plugins.{m}" for m in ("datasets", "models", "regularizers", "measures",
                                               "volume", "executors"))]


def pool_context(start_method: str | None) -> Any:
    """The multiprocessing context: a forkserver that has imported torch and genbench (each
    pool forks its workers from it: a stage's pool starts in 0.3 s instead of 3 s after the
    first), or ``start_method``."""
    import multiprocessing

    method = start_method or ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                              else "spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def gpu_count(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device.startswith("cuda") else 0


class ProcessExecutor(Executor):
    """A pool of worker processes across the usable cores, or one per GPU on CUDA."""

    name = "process"
    version = "1"

    class Params(Params):
        workers: int | None = Field(None, ge=1, description="worker processes (default: one per GPU "
                                    "when training on cuda, else one per idle core; one worker "
                                    "runs in this process)")
        threads: int | None = Field(None, ge=1, description="torch threads per worker (default: "
                                    "idle cores / workers)")
        start_method: str | None = Field(None, pattern="^(spawn|forkserver|fork)$",
                                         description="multiprocessing start method (default: "
                                         "forkserver where there is one, else spawn; both are "
                                         "safe with threads and CUDA)")

    def run(self, tasks, setup, on_done):
        # "cuda" spreads the workers over every GPU; an explicit "cuda:N" keeps them on N.
        gpus = gpu_count(setup.device) if setup.device == "cuda" else 0
        idle = idle_cores()
        workers = self.params.workers or gpus or (1 if setup.device.startswith("cuda") else idle)
        if workers > 1:
            tasks = balance(tasks, workers)
        workers = min(workers, len(tasks))
        if workers <= 1:  # nothing to spread: no pool to start (2-3 s per stage)
            threads = self.params.threads or sensible_threads(idle=idle)  # not sampled twice
            LocalExecutor(LocalExecutor.Params(threads=threads)).run(tasks, setup, on_done)
            return
        devices = [f"cuda:{i % gpus}" for i in range(workers)] if gpus else [setup.device] * workers
        threads = self.params.threads or max(1, idle // workers)
        ctx = pool_context(self.params.start_method)
        device_queue = ctx.SimpleQueue()
        for d in devices:
            device_queue.put(d)
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(device_queue, devices[0], setup, threads,
                                ctx.Barrier(workers))) as pool:
            for index, packed in pool.imap_unordered(_run_in_worker, list(enumerate(tasks))):
                on_done(tasks[index], pickle.loads(packed))


# -- Ray ----------------------------------------------------------------------------
def _ray_run(task: Any, device: str, setup: WorkerSetup, threads: int) -> bytes:
    """One Ray task (the Ray worker keeps its genbench worker, registry and datasets,
    between tasks; ``setup`` arrives once per worker through Ray's object store)."""
    import torch

    torch.set_num_threads(threads)
    if _WORKER.get("ray_key") != (setup.token, device):
        _WORKER["ray_key"], _WORKER["ray_worker"] = (setup.token, device), setup.worker(device)
    return pack(execute(task, _WORKER["ray_worker"]))


class RayExecutor(Executor):
    """A Ray cluster or local instance: one Ray task per task, stored as each finishes."""

    name = "ray"
    version = "1"

    class Params(Params):
        address: str | None = Field(None, description="cluster to join ('auto': the running "
                                    "cluster, or 'ray://host:port'); default: the Ray instance "
                                    "this process already started, else a new local one")
        num_cpus: float = Field(1, gt=0, description="CPUs per task (also its torch threads)")
        num_gpus: float | None = Field(None, ge=0, description="GPUs per task, training or "
                                       "measuring (default: 1 on cuda, else 0)")
        temp_dir: str | None = Field(None, description="where a new local instance keeps its files")

    def run(self, tasks, setup, on_done):
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
        on_gpu = setup.device.startswith("cuda")
        gpus = self.params.num_gpus if self.params.num_gpus is not None else (1 if on_gpu else 0)
        # Ray shows a task only its GPUs (CUDA_VISIBLE_DEVICES): it runs on "cuda".
        device = "cuda" if on_gpu and gpus else setup.device
        remote = ray.remote(_ray_run).options(num_cpus=self.params.num_cpus, num_gpus=gpus)
        threads = max(1, int(self.params.num_cpus))
        pending: dict[Any, Any] = {}
        try:
            setup_ref = ray.put(setup)
            for task in tasks:  # weights travel with a task: a node need not see the store
                pending[remote.remote(portable(task), device, setup_ref, threads)] = task
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        records = pickle.loads(ray.get(ref))
                    except Exception as exc:  # noqa: BLE001 - a crashed task fails only itself
                        records = task.failed(f"{type(exc).__name__}: {exc}")
                    on_done(task, records)
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

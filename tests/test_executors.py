"""Executors: each trains a tiny suite, stores every result in the calling process,
and a run interrupted after its first stored model resumes without retraining it."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch

from genbench.plugins import load_registry
from genbench.population import expand
from genbench.runner import DataCache, measure_population, train_population
from genbench.store import Store
from genbench.suite import Suite
from tests import blobs


@pytest.fixture
def registry():
    return load_registry(extra=[("test_blobs_data", blobs)])


def tiny_suite(dataset: str = "blobs") -> Suite:
    """4 models in 2 stackable groups (two widths x two learning rates)."""
    params = {"n_train": 64, "n_test": 32, "features": 6, "spread": 2.0, "seed": 5} \
        if dataset == "blobs" else {}
    return Suite(name="tiny", dataset={"name": dataset, "params": params},
                 model={"name": "mlp", "params": {"depth": 1}},
                 train={"batch_size": 32, "max_epochs": 2, "lr": 0.05},
                 regularizers={"dropout": {"rate": 0.2}},
                 grid={"model.width": [4, 8], "train.lr": [0.05, 0.1]})


class Interrupt:
    """A progress callback that presses Ctrl-C right after the first model is stored."""

    def __init__(self, after: int | None = 1):
        self.after, self.seen = after, 0

    def __call__(self, stage, total):
        def advance(description):
            self.seen += 1
            if self.after is not None and self.seen >= self.after:
                raise KeyboardInterrupt

        return advance


def interrupted_then_resumed(executor: str, store_dir: Path, registry, params=None,
                             suite: Suite | None = None) -> Store:
    suite = suite or tiny_suite()
    specs = expand(suite, registry)
    with Store(store_dir) as st:
        with pytest.raises(KeyboardInterrupt):
            train_population(specs, suite, st, registry, "cpu", Interrupt(1), executor,
                             executor_params=params)
        assert [m["status"] for m in st.models()] == ["done"]  # the first result was kept
        counts = train_population(specs, suite, st, registry, "cpu", Interrupt(None), executor,
                                  executor_params=params)
        assert (counts["trained"], counts["failed"]) == (len(specs) - 1, 0)  # nothing retrained
        assert sorted(m["key"] for m in st.models()) == sorted(s.key for s in specs)
        assert all(m["status"] == "done" for m in st.models())
        again = train_population(specs, suite, st, registry, "cpu", Interrupt(None), executor,
                                 executor_params=params)
        assert again == {"trained": 0, "failed": 0, "workers": 0}
    return Store(store_dir)


def weights(store_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    with Store(store_dir) as st:
        return {m["key"]: st.load_weights(m["key"])[1] for m in st.models()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], atol=1e-5, rtol=1e-4)


def test_local_executor_resumes_after_interrupt(tmp_path, registry):
    interrupted_then_resumed("local", tmp_path / "s", registry, {"threads": 1})
    # the same models as an uninterrupted run
    suite = tiny_suite()
    with Store(tmp_path / "whole") as st:
        train_population(expand(suite, registry), suite, st, registry, "cpu", Interrupt(None))
    assert_same_weights(weights(tmp_path / "s"), weights(tmp_path / "whole"))


def test_local_executor_sets_and_restores_threads():
    from genbench_plugins.executors import LocalExecutor

    seen = []

    class Task:
        stage = "train"

        def __init__(self, name):
            self.name = name

        def run(self, worker):
            seen.append(torch.get_num_threads())
            return [{"type": "probe", "name": self.name}]

    class Setup:
        def worker(self, device=None):
            return None

    before = torch.get_num_threads()
    done = []
    LocalExecutor(LocalExecutor.Params(threads=3)).run([Task("a"), Task("b")], Setup(),
                                                       lambda t, r: done.append(r[0]["name"]))
    assert seen == [3, 3] and done == ["a", "b"]
    assert torch.get_num_threads() == before


def test_process_executor_with_one_idle_core_runs_in_this_process(monkeypatch):
    """No pool for one worker (a pool costs 2-3 s per stage): the tasks run here, as on
    ``local``, and a training stack is not split for workers that do not exist."""
    from genbench_plugins import executors
    from genbench.tasks import TrainTask

    class Probe(TrainTask):
        def run(self, worker):
            return [{"type": "probe", "pid": os.getpid(), "size": len(self)}]

    class Setup:
        device = "cpu"

        def worker(self, device=None):
            return None

    monkeypatch.setattr(executors, "idle_cores", lambda: 1)
    done = []
    executors.ProcessExecutor(executors.ProcessExecutor.Params()).run(
        [Probe([1, 2, 3, 4])], Setup(), lambda t, r: done.append(r[0]))
    assert done == [{"type": "probe", "pid": os.getpid(), "size": 4, "worker": done[0]["worker"]}]


def test_sensible_threads_leaves_busy_cores_alone(monkeypatch):
    from genbench import threads as executors

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for busy, threads in [(0.0, 8), (5.2, 3), (40.0, 1)]:
        monkeypatch.setattr(executors, "busy_elsewhere", lambda busy=busy: busy)
        assert executors.sensible_threads(8) == threads
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert executors.sensible_threads(8) == 2


def test_busy_cores_are_all_cpu_time_but_this_process_over_the_window(monkeypatch):
    """Hand-computed: 0.5 s of busy CPU in 0.1 s, 0.02 s of it this process's: 4.8 cores.
    Without /proc, the 1-minute load average less this process."""
    from genbench import threads

    samples = iter([(100.0, 1.0, 8), (100.5, 1.02, 8)])
    monkeypatch.setattr(threads, "cpu_sample", lambda: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.busy_elsewhere(0.1) == pytest.approx(4.8)
    monkeypatch.setattr(threads, "cpu_sample", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    assert threads.busy_elsewhere(0.1) == pytest.approx(2.5)


def test_a_process_spinning_on_a_core_counts_as_busy():
    """Real processes, real /proc: a busy loop in another process adds one busy core to
    whatever the machine was doing just before; this process's own CPU time is not counted."""
    import subprocess
    import sys
    import time

    from genbench import threads

    if threads.cpu_sample() is None or threads.usable_cores() < 2:
        pytest.skip("needs /proc and two usable cores")
    before = threads.busy_elsewhere(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert 0.6 < threads.busy_elsewhere(0.3) - before < 1.4
    finally:
        spinner.kill()
        spinner.wait()


def test_balance_gives_every_worker_a_task():
    from genbench.tasks import TrainTask, balance

    sizes = lambda tasks: [len(t) for t in tasks]  # noqa: E731
    assert sizes(balance([TrainTask([1, 2, 3, 4, 5, 6])], 2)) == [3, 3]
    assert sizes(balance([TrainTask([1, 2, 3, 4]), TrainTask([5])], 4)) == [2, 1, 1, 1]
    assert sizes(balance([TrainTask([1]), TrainTask([2])], 4)) == [1, 1]  # nothing left to split
    parts = balance([TrainTask(list(range(10))), TrainTask(list(range(10, 13)))], 3)
    assert sorted(x for t in parts for x in t.specs) == list(range(13))


def test_workers_rebuild_a_registry_with_hand_added_plugins(registry):
    import pickle

    from genbench.tasks import DataCache, Worker, extra_plugins, setup_for

    extra = extra_plugins(registry)
    assert extra == (("test_blobs_data", "tests.blobs", "unknown"),)
    setup = setup_for(Worker(registry, DataCache(registry), "cpu"))
    assert setup.worker().registry is registry  # in the driver: the driver's own worker
    rebuilt = pickle.loads(pickle.dumps(setup)).worker().registry  # what a worker process gets
    assert rebuilt is not registry and rebuilt.get("dataset", "blobs").cls is blobs.Blobs
    assert set(rebuilt.names("executor")) >= {"local", "process", "ray"}


def test_workers_load_plugins_under_the_drivers_plugin_selection(monkeypatch):
    """A forkserver (and a Ray node) keeps the environment it started with: the setup
    carries GENBENCH_PLUGINS / GENBENCH_DISABLE_PLUGINS as the driver has them now."""
    import pickle

    from genbench.plugins import reset_registry
    from genbench.tasks import DataCache, Worker, setup_for

    monkeypatch.setenv("GENBENCH_DISABLE_PLUGINS", "executors")
    monkeypatch.delenv("GENBENCH_PLUGINS", raising=False)
    driver = load_registry()
    assert "local" not in driver.names("executor")
    packed = pickle.dumps(setup_for(Worker(driver, DataCache(driver), "cpu")))
    monkeypatch.delenv("GENBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("GENBENCH_PLUGINS", "stale")
    reset_registry()
    try:
        rebuilt = pickle.loads(packed).worker().registry
        assert os.environ.get("GENBENCH_DISABLE_PLUGINS") == "executors"
        assert "GENBENCH_PLUGINS" not in os.environ
        assert "local" not in rebuilt.names("executor") and "mlp" in rebuilt.names("model")
    finally:
        reset_registry()


def test_process_executor_trains_stores_and_resumes(tmp_path, registry):
    """Two spawned workers (each rebuilding the registry, test plugin included); the
    stored models equal the local executor's."""
    interrupted_then_resumed("process", tmp_path / "p", registry, {"workers": 2, "threads": 1})
    suite = tiny_suite()
    with Store(tmp_path / "l") as st:
        train_population(expand(suite, registry), suite, st, registry, "cpu", Interrupt(None),
                         "local")
    assert_same_weights(weights(tmp_path / "p"), weights(tmp_path / "l"))


def test_a_task_that_raises_fails_only_itself(registry):
    """execute() turns a task's exception into its failure records, stamped with the
    worker; the records travel as plain pickles."""
    import pickle

    from genbench.tasks import DataCache, TrainTask, Worker, execute, pack

    specs = expand(tiny_suite(), registry)
    worker = Worker(registry, DataCache(registry), "cpu")

    class Broken(TrainTask):
        def run(self, worker):
            raise OSError("disk gone")

    failed = execute(Broken(specs[:2]), worker)
    assert [(r["type"], r["error"]) for r in failed] == [("model_failed", "OSError: disk gone")] * 2
    trained = pickle.loads(pack(execute(TrainTask(specs[2:]), worker)))
    assert [r["type"] for r in trained] == ["model", "model"]
    assert {r["worker"] for r in failed + trained} == {f"{socket.gethostname()}:{os.getpid()}"}


def measured(store_dir: Path, registry, executor: str, params=None) -> dict[str, float]:
    suite = tiny_suite().model_copy(update={"measures": {"frobenius_distance": {},
                                                         "pac_sharpness": {"depth": 3, "draws": 2, "eps": 0.5}}})
    specs = expand(suite, registry)
    with Store(store_dir) as st:
        train_population(specs, suite, st, registry, "cpu", Interrupt(None))
        counts = measure_population(specs, suite, st, registry, "cpu", Interrupt(None),
                                    executor=executor, executor_params=params)
        assert counts["computed"] == 2 * len(specs)
        values = {(r["model_key"], r["name"]): r["value"] for r in st.results(kind="measure")}
    return counts, values


def test_process_executor_measures_in_its_workers_bit_identical_to_local(tmp_path, registry):
    local_counts, local = measured(tmp_path / "l", registry, "local")
    counts, values = measured(tmp_path / "p", registry, "process", {"workers": 2, "threads": 1})
    assert (local_counts["workers"], counts["workers"]) == (1, 2)
    assert values == local and None not in values.values()


def test_ray(tmp_path, monkeypatch):
    """A local one-CPU Ray instance with every file under tmp_path (auth token
    included, no dashboard): trains, stores as tasks finish, resumes after Ctrl-C."""
    token = tmp_path / "token"
    token.write_text(os.urandom(32).hex())  # Ray's own format: 64 hex digits
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray_mod = pytest.importorskip("ray")  # after the settings: Ray reads them on import
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    registry = load_registry()  # built-ins only: Ray workers import plugins by entry point
    ray_mod.init(num_cpus=1, include_dashboard=False, _temp_dir=str(tmp_path / "r"),
                 log_to_driver=False)
    try:
        interrupted_then_resumed("ray", tmp_path / "s", registry, suite=tiny_suite("digits"))
    finally:
        ray_mod.shutdown()
    assert home_token.exists() == had_home_token
    assert any((tmp_path / "r").iterdir())


CLUSTER_SUITE = """
name = "cluster"
seeds = [0]
[dataset]
name = "digits"
[model]
name = "mlp"
params = { width = 8, depth = 1 }
[train]
lr = 0.1
batch_size = 128
max_epochs = 2
[grid]
"model.width" = [8, 16]
"train.lr" = [0.05, 0.1]
[measures]
frobenius_distance = {}
path_norm = {}
"""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's workers leave their parent's process group)."""
    import subprocess

    table = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid="], text=True,
                                                     capture_output=True).stdout.splitlines()]
    children: dict[int, list[int]] = {}
    for child, parent in table:
        children.setdefault(int(parent), []).append(int(child))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop(node) -> None:
    """SIGTERM the node and every process it started, then SIGKILL what is left."""
    import signal
    import time

    pids = [node.pid, *descendants(node.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while node.poll() is None and time.time() < deadline:
            time.sleep(0.2)


WAIT_FOR_TWO_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while ray.cluster_resources().get("CPU", 0) < 2 and time.time() < deadline:
    time.sleep(0.5)
print(int(ray.cluster_resources().get("CPU", 0)))
"""


def test_two_node_ray_cluster(tmp_path):
    """A real cluster: a head and a second node (`ray start --address`), one CPU each.
    `genbench run --executor ray --address` trains and measures on the cluster's
    workers (two processes measured: one per node); a local rerun reuses everything.
    Every process the nodes started is stopped by its id at the end."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    ray = pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    ray_start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus", "1",
                 "--disable-usage-stats"]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    # Ray's socket paths must stay under 107 bytes: its files go to a short directory,
    # linked from tmp_path and removed at the end.
    ray_dir = Path(tempfile.mkdtemp(prefix="gbray", dir="/tmp"))
    (tmp_path / "ray").symlink_to(ray_dir)
    nodes = []
    log = open(tmp_path / "ray.log", "w")
    genbench = [sys.executable, "-m", "genbench.cli", "run", str(tmp_path / "cluster.toml"),
                "--store", str(tmp_path / "s"), "--device", "cpu"]
    (tmp_path / "cluster.toml").write_text(CLUSTER_SUITE)
    try:
        nodes.append(subprocess.Popen(ray_start + ["--head", "--port", str(port), "--temp-dir",
                                                   str(ray_dir), "--include-dashboard", "false"],
                                      env=env, stdout=log, stderr=log))
        nodes.append(subprocess.Popen(ray_start + ["--address", address], env=env, stdout=log,
                                      stderr=log))
        up = subprocess.run([sys.executable, "-c", WAIT_FOR_TWO_NODES, address, "120"], env=env,
                            capture_output=True, text=True, timeout=240)
        assert up.stdout.strip().endswith("2"), f"two nodes did not come up: {up.stderr[-800:]}"
        run = subprocess.run(genbench + ["--executor", "ray", "--address", address, "--json",
                                         str(tmp_path / "ray.json")], env=env, capture_output=True,
                             text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        for node in reversed(nodes):
            stop(node)
        log.close()
        shutil.rmtree(ray_dir, ignore_errors=True)
    s = json.loads((tmp_path / "ray.json").read_text())["summary"]
    assert (s["trained"], s["failed"], s["measures_computed"], s["measures_failed"]) == (4, 0, 8, 0)
    assert s["workers"]["train"] >= 1 and s["workers"]["measure"] >= 2
    rerun = subprocess.run(genbench + ["--executor", "local", "--json", str(tmp_path / "l.json")],
                           env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    s = json.loads((tmp_path / "l.json").read_text())["summary"]
    assert (s["trained"], s["reused"], s["measures_computed"], s["measures_reused"]) == (0, 4, 0, 8)

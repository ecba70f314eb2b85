"""Nothing fails silently (issue 13): faulty plugins, store damage, failures counted and
retried, limits, locks, signals, kills. docs/reliability.md is the table of what these
tests show; each test names the fault it injects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genbench.cli import app
from genbench.limits import TimeLimitExceeded, time_limit
from genbench.store import Store, StoreError
from tests.helpers import write_suite

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
FAULTY_SITE = Path(__file__).resolve().parent / "fixtures" / "faulty_site"
FAULTY = ["faulty_import", "faulty_exit_at_import", "faulty_exit_in_hook", "faulty_raising_hook",
          "faulty_duplicate", "faulty_misspelled", "faulty_measures"]
BAD_MEASURES = {  # measure -> what its stored error must say
    "nan_measure": "non-finite value (nan)", "inf_measure": "non-finite value (inf)",
    "string_measure": "returned str, not a number", "none_measure": "returned NoneType, not a number",
    "tensor_measure": "returned torch.Tensor, not a number", "raising_measure": "ZeroDivisionError",
    "exiting_measure": "called sys.exit(5)", "hanging_measure": "timed out after 0.3 s"}

SUITE = """
name = "{name}"
[dataset]
name = "digits"
[model]
name = "mlp"
params = {{ width = 8, depth = 1 }}
[train]
lr = 0.1
batch_size = 128
max_epochs = {epochs}
[grid]
"model.width" = {widths}
[measures]
{measures}
[limits]
measure_seconds = {seconds}
"""


def suite_text(name="rel", measures=("parameter_norm",), widths=(4, 6, 8), epochs=1, seconds=3600):
    return SUITE.format(name=name, measures="\n".join(f"{m} = {{}}" for m in measures),
                        widths=list(widths), epochs=epochs, seconds=seconds)


@pytest.fixture
def faulty(monkeypatch):
    """The package of faulty plugins, installed (on sys.path, entry points allowed)."""
    monkeypatch.setattr(sys, "path", [str(FAULTY_SITE), *sys.path])
    monkeypatch.setenv("GENBENCH_PLUGINS", ",".join(FAULTY))
    yield
    for mod in ("faulty_import", "faulty_exit_at_import", "faulty_hooks", "faulty_measures"):
        sys.modules.pop(mod, None)


def one_line(res) -> str:
    """The one error line of a command (progress bars may stand above it), no traceback."""
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


# -- plugins contained -----------------------------------------------------------------
def test_genbench_plugins_names_every_faulty_plugin_and_exits_0(faulty):
    res = runner.invoke(app, ["plugins", "--json", "-"])
    assert res.exit_code == 0, res.output
    errors = {r["name"]: r["error"] for r in json.loads(res.stdout)}
    assert "ModuleNotFoundError: No module named 'genbench_no_such_dependency'" in errors["faulty_import"]
    assert errors["faulty_exit_at_import"] == "SystemExit: plugin code called sys.exit(7)"
    assert errors["faulty_exit_in_hook"] == "SystemExit: plugin code called sys.exit(4)"
    assert errors["faulty_raising_hook"] == "RuntimeError: hook exploded"
    assert "registered by both 'measures' and 'faulty_duplicate'" in errors["faulty_duplicate"]
    assert "register_measure" in errors["faulty_misspelled"]
    assert errors["faulty_measures"] is None and errors["measures"] is None
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0 and res.stdout.count("FAILED") == 6


def test_unknown_component_names_the_failed_plugin_that_would_provide_it(faulty, tmp_path):
    res = runner.invoke(app, ["validate", str(write_suite(tmp_path, suite_text(measures=["flaky"])))])
    assert res.exit_code == 2
    assert ("unknown measure 'flaky'" in res.stderr and "plugin 'faulty_raising_hook' would provide "
            "it but failed: RuntimeError: hook exploded" in res.stderr.replace("\n", ""))


def test_bad_measures_fail_alone_and_the_run_exits_3(faulty, tmp_path):
    """NaN, inf, a string, None, a tensor, a raise, sys.exit and a hang: each value is
    stored failed with its reason, the good measure is stored, and the run goes on."""
    suite = write_suite(tmp_path, suite_text(measures=["parameter_norm", *BAD_MEASURES], seconds=0.3))
    store, out = tmp_path / "store", tmp_path / "run.json"
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--json", str(out),
                              "--device", "cpu"])
    assert res.exit_code == 3, res.output
    run = json.loads(out.read_text())
    assert run["summary"]["measures_failed"] == 3 * len(BAD_MEASURES)
    assert all(m["measures"]["parameter_norm"] > 0 for m in run["models"])
    assert "24 measure value(s) failed" in res.stdout and "timed out after 0.3 s" in res.stdout
    rows = json.loads(runner.invoke(app, ["failures", "--store", str(store), "--json", "-"]).stdout)
    assert len(rows) == 24
    for name, why in BAD_MEASURES.items():
        errs = {r["error"] for r in rows if r["name"] == name}
        assert len(errs) == 1 and why in errs.pop(), name
    assert "24 measure value(s) failed" in runner.invoke(app, ["leaderboard", "--store", str(store)]).stdout
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--json", str(out),
                              "--device", "cpu", "--retry-failed"])
    assert res.exit_code == 3 and "24 computed" in res.stderr


def test_a_run_whose_every_model_failed_exits_3(tmp_path, monkeypatch):
    from genbench import training

    def exits(*args, **kwargs):
        sys.exit(9)  # contained in training too: the model is failed, the process lives

    monkeypatch.setattr(training, "train_one", exits)
    suite = write_suite(tmp_path, suite_text())
    res = runner.invoke(app, ["run", str(suite), "--store", str(tmp_path / "s"), "--device", "cpu",
                              "--batching", "off"])
    assert res.exit_code == 3, res.output
    assert "3 failed" in res.stderr and "3 x model: SystemExit: plugin code called sys.exit(9)" in res.stdout


def test_time_limit_stops_a_hanging_body_and_nests():
    with pytest.raises(TimeLimitExceeded, match="timed out after 0.2 s"), time_limit(0.2):
        while True:
            time.sleep(0.01)
    with pytest.raises(TimeLimitExceeded, match="after 0.2 s"), time_limit(30), time_limit(0.2):
        while True:
            time.sleep(0.01)
    with pytest.raises(TimeLimitExceeded, match="after 0.2 s"), time_limit(0.2), time_limit(30):
        while True:  # the shorter outer limit still fires inside a longer inner one
            time.sleep(0.01)
    with time_limit(None), time_limit(0):
        pass
    done = []
    thread = threading.Thread(target=lambda: done.append(time_limit(0.01).__enter__()))
    thread.start()
    thread.join()
    assert done == [None]  # a no-op away from the main thread


# -- limits and suite hygiene ------------------------------------------------------------
def test_a_huge_grid_is_refused_before_any_work(tmp_path):
    lrs = ", ".join(f"0.{i + 1:04d}" for i in range(1000))
    text = suite_text(widths=range(1, 1001)).replace("[measures]", f'"train.lr" = [{lrs}]\n[measures]')
    suite = write_suite(tmp_path, text)
    t0 = time.perf_counter()
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 2 and time.perf_counter() - t0 < 60
    assert "grid: 1,000,000 models is more than limits.max_models = 10,000" in one_line(res)


@pytest.mark.parametrize("old, new, message", [
    ("lr = 0.1", "lr = inf", "train.lr: inf is not a finite number"),
    ("parameter_norm = {}", "parameter_norm = { p = nan }", "measures.parameter_norm.p: nan is not"),
    ("[4, 6, 8]", "[4, -inf]", "grid.model.width[1]: -inf is not a finite number"),
    ("measure_seconds = 3600", "measure_seconds = 0", "limits.measure_seconds: Input should be greater than 0"),
    ("measure_seconds = 3600", "max_models = 0", "limits.max_models: Input should be greater than"),
])
def test_non_finite_numbers_and_bad_limits_are_errors(tmp_path, old, new, message):
    res = runner.invoke(app, ["validate", str(write_suite(tmp_path, suite_text().replace(old, new)))])
    assert res.exit_code == 2 and message in one_line(res)


# -- store integrity -----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """Four tiny models with one measure, trained once for the store tests (copy it)."""
    tmp = tmp_path_factory.mktemp("trained")
    suite = write_suite(tmp, suite_text(widths=(4, 6, 8, 10)))
    res = runner.invoke(app, ["run", str(suite), "--store", str(tmp / "store"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return tmp / "store"


def copy_store(src: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    dst = tmp_path / "store"
    shutil.copytree(src, dst)
    with Store(dst) as st:
        keys = [m["key"] for m in st.models()]
    return dst, keys


def test_truncated_flipped_and_swapped_weights_are_named_and_the_rest_measured(trained_store, tmp_path):
    store, keys = copy_store(trained_store, tmp_path)
    w = lambda k: store / "weights" / f"{k}.safetensors"  # noqa: E731
    data = w(keys[0]).read_bytes()
    w(keys[0]).write_bytes(data[: len(data) // 2])  # truncated
    data = bytearray(w(keys[1]).read_bytes())
    data[-8:] = b"\x7f" * 8  # flipped tensor bytes, header intact: a norm of ~1e79 before
    w(keys[1]).write_bytes(bytes(data))
    suite = write_suite(tmp_path, suite_text(measures=["parameter_norm", "frobenius_distance"],
                                             widths=(4, 6, 8, 10)))
    out = tmp_path / "run.json"
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 3, res.output
    run = json.loads(out.read_text())
    values = {m["key"]: m["measures"]["frobenius_distance"] for m in run["models"]}
    assert values[keys[0]] is None and values[keys[1]] is None
    assert values[keys[2]] > 0 and values[keys[3]] > 0
    assert run["summary"]["measures_failed"] == 2
    assert "genbench check --store" in res.stdout and "checksum mismatch" in res.stdout

    res = runner.invoke(app, ["check", "--store", str(store)])
    assert res.exit_code == 3
    problems = [line for line in res.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2 and all("checksum mismatch" in p for p in problems)
    assert {keys[0][:12], keys[1][:12]} == {p.split("model ")[1][:12] for p in problems}

    w(keys[2]).rename(tmp_path / "a")
    w(keys[3]).rename(w(keys[2]))  # a swapped file
    res = runner.invoke(app, ["check", "--store", str(store)])
    assert "swapped files" in res.stderr and "is missing" in res.stderr.replace("\n", "")

    res = runner.invoke(app, ["check", "--store", str(store), "--repair"])
    assert res.exit_code == 0 and "dropped 4 damaged model(s)" in res.stderr
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert res.exit_code == 0 and "4 trained" in res.stderr, res.output
    assert runner.invoke(app, ["check", "--store", str(store)]).exit_code == 0


def test_old_store_without_checksums_still_works(trained_store, tmp_path):
    store, keys = copy_store(trained_store, tmp_path)
    db = sqlite3.connect(store / "genbench.sqlite")
    db.execute("ALTER TABLE models DROP COLUMN checksum")  # the schema before issue 13
    db.commit()
    db.close()
    res = runner.invoke(app, ["leaderboard", "--store", str(store)])
    assert res.exit_code == 0, res.output
    with Store(store) as st:  # migrated: the column exists, old rows have no checksum
        assert st.model(keys[0])["checksum"] is None
        assert st.load_weights(keys[0])[1]
    res = runner.invoke(app, ["check", "--store", str(store)])
    assert res.exit_code == 0 and "4 model(s) stored before checksums" in res.stderr


@pytest.mark.parametrize("damage", ["garbage", "overwritten pages"])
def test_a_corrupt_sqlite_file_is_one_line(trained_store, tmp_path, damage):
    store, _ = copy_store(trained_store, tmp_path)
    db = store / "genbench.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        raw = bytearray(db.read_bytes())
        raw[4096:] = os.urandom(len(raw) - 4096)
        db.write_bytes(bytes(raw))
    for args in (["leaderboard"], ["failures"], ["run", str(write_suite(tmp_path, suite_text()))]):
        res = runner.invoke(app, [*args, "--store", str(store)])
        assert res.exit_code == 2, (args, res.output)
        assert "genbench.sqlite is damaged" in one_line(res)
    res = runner.invoke(app, ["check", "--store", str(store)])
    assert res.exit_code == 3 and "genbench.sqlite is damaged" in res.stderr.replace("\n", "")


def test_a_read_only_store_renders_its_leaderboard(trained_store, tmp_path, monkeypatch):
    store, _ = copy_store(trained_store, tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK and str(store) in str(p)
                        else real_access(p, mode))
    res = runner.invoke(app, ["leaderboard", "--store", str(store)])
    assert res.exit_code == 0 and "parameter_norm" in res.stdout, res.output
    assert runner.invoke(app, ["failures", "--store", str(store)]).exit_code == 0
    assert runner.invoke(app, ["check", "--store", str(store)]).exit_code == 0
    with Store(store) as st, pytest.raises(StoreError, match="is read-only"):
        st.finish_run(1, {})
    suite = write_suite(tmp_path, suite_text(widths=(4, 6, 8, 10, 12)))
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert res.exit_code == 2 and "is read-only" in one_line(res)


def test_a_full_disk_is_one_line_and_loses_nothing(trained_store, tmp_path, monkeypatch):
    store, keys = copy_store(trained_store, tmp_path)
    real_write = Path.write_bytes

    def full(self, data):
        real_write(self, data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    suite = write_suite(tmp_path, suite_text(widths=(4, 6, 8, 10, 12)))
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert res.exit_code == 2 and "disk full writing store" in one_line(res)
    monkeypatch.undo()
    assert not list((store / "weights").glob("*.tmp"))
    with Store(store) as st:  # a full SQLite file (SQLITE_FULL) is the same one line
        assert len(st.models()) == 4 and all(st.load_weights(k) for k in keys)
        pages = st.db.execute("PRAGMA page_count").fetchone()[0]
        st.db.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(StoreError, match="disk full writing store"):
            st.put_result("k", keys[0], "shared", "big", {}, {}, data="x" * 1_000_000)


def test_a_locked_database_is_one_line(trained_store, tmp_path):
    store, keys = copy_store(trained_store, tmp_path)
    holder = sqlite3.connect(store / "genbench.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="is locked by another process"):
            with Store(store, timeout=0.1) as st:
                st.put_result("k", keys[0], "shared", "x", {}, {}, value=1.0)
    finally:
        holder.rollback()
        holder.close()


# -- concurrent runs ---------------------------------------------------------------------
def test_a_second_run_on_a_busy_store_stops_and_leaderboard_says_partial(trained_store, tmp_path):
    store, keys = copy_store(trained_store, tmp_path)
    with Store(store) as st:
        st.drop_models(keys[:1])
        st.db.execute("UPDATE runs SET summary=NULL")  # as while the run is going
        st.db.commit()
        with st.run_lock("rel"):
            suite = write_suite(tmp_path, suite_text(widths=(4, 6, 8, 10)))
            res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
            assert res.exit_code == 2
            assert f"is in use by another run (pid {os.getpid()}, suite rel" in one_line(res)
            res = runner.invoke(app, ["leaderboard", "--store", str(store)])
            assert res.exit_code == 0
            assert "partial: 3 of 4 models (a run is in progress: pid" in res.stdout
    res = runner.invoke(app, ["leaderboard", "--store", str(store)])
    assert "partial: 3 of 4 models (the run stopped before the end" in res.stdout


# -- input hygiene ------------------------------------------------------------------------
def test_bad_paths_are_one_line_before_any_work(tmp_path):
    suite = write_suite(tmp_path, suite_text())
    (tmp_path / "file").write_text("x")
    cases = [
        (["run", str(tmp_path)], "is a directory; give a suite .toml file"),
        (["validate", str(tmp_path)], "is a directory"),
        (["run", str(suite), "--store", str(tmp_path / "file")], "is a file, not a store directory"),
        (["leaderboard", "--store", str(tmp_path / "file")], "--store"),
        (["check", "--store", str(tmp_path / "file")], "is a file, not a store directory"),
        (["run", str(suite), "--store", str(tmp_path / "s"), "--json", str(tmp_path / "no" / "r.json")],
         "--json"),
        (["run", str(suite), "--store", str(tmp_path / "s"), "--markdown", str(tmp_path / "no" / "r.md")],
         "directory"),
        (["run", str(suite), "--store", str(tmp_path / "s"), "--json", str(tmp_path)], "is a directory"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in one_line(res), (args, res.output)
    assert not (tmp_path / "s").exists()  # nothing was trained before the output check


def test_non_utf8_suite_and_table_name_the_file_and_offset(tmp_path):
    suite = tmp_path / "latin1.toml"
    suite.write_bytes(suite_text().replace('name = "rel"', 'name = "caf\xe9"').encode("latin-1"))
    res = runner.invoke(app, ["validate", str(suite)])
    offset = suite.read_bytes().index(b"\xe9")
    assert res.exit_code == 2
    assert f"{suite}: not UTF-8 text (byte 0xe9 at offset {offset})" in one_line(res)
    table = tmp_path / "t.csv"
    table.write_bytes(b"gap,m\n1,2\n\xff,3\n")
    res = runner.invoke(app, ["score", str(table)])
    assert res.exit_code == 2 and "not UTF-8 text (byte 0xff at offset 10)" in one_line(res)


def test_markup_in_a_suite_name_is_printed_as_text(tmp_path):
    name = "[/bold] x [red]y"
    suite = write_suite(tmp_path, suite_text().replace('name = "rel"', f'name = "{name}"'))
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 0 and name in res.stdout, res.output
    store = tmp_path / "store"
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert res.exit_code == 0 and name in res.stdout, res.output
    for _ in range(2):  # the store's leaderboard keeps working
        res = runner.invoke(app, ["leaderboard", "--store", str(store)])
        assert res.exit_code == 0 and name in res.stdout, res.output


@pytest.mark.parametrize("text, message", [
    ("gap,m,m\n1,2,3\n2,3,4\n3,4,5\n", "line 1: column 'm' appears twice (columns 2 and 3)"),
    ("gap,m\n1,2\n2,3,9\n3,4\n", "line 3: 3 cells, but the header has 2 columns"),
    ("gap,m\n1,2\n2\n3,4\n", "line 3: 1 cells, but the header has 2 columns"),
])
def test_score_rejects_duplicate_columns_and_ragged_rows(tmp_path, text, message):
    table = tmp_path / "t.csv"
    table.write_text(text)
    res = runner.invoke(app, ["score", str(table)])
    assert res.exit_code == 2 and message in one_line(res)


def test_score_strips_a_bom(tmp_path):
    table = tmp_path / "t.csv"
    table.write_bytes("\ufeffgap,m\n1,2\n2,3\n3,5\n4,4\n".encode())
    res = runner.invoke(app, ["score", str(table), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["n_models"] == 4


def test_json_output_is_replaced_atomically(tmp_path, monkeypatch):
    from genbench.store import atomic_write_text

    out = tmp_path / "r.json"
    out.write_text('{"old": true}')
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed between writing and renaming
        atomic_write_text(out, '{"new": true}')
    assert json.loads(out.read_text()) == {"old": True} and list(tmp_path.iterdir()) == [out]


# -- signals and kills (subprocesses: the real CLI) ----------------------------------------
def cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "GENBENCH_PLUGINS": "faulty_measures",
           "PYTHONPATH": os.pathsep.join([str(FAULTY_SITE), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-m", "genbench.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(store: Path, sql: str, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Poll the store (read-only) until ``sql`` counts ``at_least`` rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        n = stored_count(store, sql)
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_stop_with_one_line(faulty, tmp_path, monkeypatch, sig, code):
    """The signal comes from another thread once the run is stuck in a hanging measure
    (the measure says so through a marker file: a task's values are stored only when the
    task returns, so the store cannot tell); the handlers run in the main thread, as they
    do for a user's Ctrl-C or a scheduler's kill. The rerun then loses nothing."""
    suite = write_suite(tmp_path, suite_text(measures=["parameter_norm", "hanging_measure"]))
    store, marker = tmp_path / "store", tmp_path / "hanging"
    monkeypatch.setenv("FAULTY_HANGING_MARKER", str(marker))
    seen = []

    def send_when_hanging():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.02)
        seen.append(marker.exists())
        time.sleep(0.1)
        os.kill(os.getpid(), sig)  # sent even on a timeout, so the run always stops

    threading.Thread(target=send_when_hanging, daemon=True).start()
    res = runner.invoke(app, ["run", str(suite), "--store", str(store), "--device", "cpu"])
    assert seen == [True], "the run never reached the hanging measure"
    assert res.exit_code == code, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("stopped; rerun to resume")
    assert "Traceback" not in res.output
    assert stored_count(store, "SELECT count(*) FROM models WHERE status='done'") == 3

    fixed = write_suite(tmp_path, suite_text(), name="fixed.toml")  # without the hanging measure
    res = runner.invoke(app, ["run", str(fixed), "--store", str(store), "--device", "cpu",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert (summary["trained"], summary["reused"], summary["measures_computed"]) == (0, 3, 3)


def stored_count(store: Path, sql: str) -> int:
    try:
        db = sqlite3.connect(f"file:{store / 'genbench.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path):
    """SIGKILL after some models are stored (training one at a time, or stuck in a
    hanging measure): the rerun trains exactly the models not stored, and the store checks clean."""
    suite = write_suite(tmp_path, suite_text(measures=["parameter_norm", "hanging_measure"],
                                             widths=(4, 5, 6, 7, 8, 9), epochs=1))
    store = tmp_path / "store"
    proc = cli(["run", str(suite), "--store", str(store), "--device", "cpu", "--batching", "off"])
    wait_for(store, "SELECT count(*) FROM models", 2, proc)
    proc.kill()
    proc.communicate()
    with Store(store) as st:
        stored = {m["key"] for m in st.models()}
        values = {r["key"]: r["value"] for r in st.results(kind="measure")}
    res = runner.invoke(app, ["check", "--store", str(store)])
    assert res.exit_code == 0, res.output
    fixed = write_suite(tmp_path, suite_text(measures=["parameter_norm"], widths=(4, 5, 6, 7, 8, 9),
                                             epochs=1), name="fixed.toml")
    res = runner.invoke(app, ["run", str(fixed), "--store", str(store), "--device", "cpu",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["trained"] == 6 - len(stored)
    assert summary["measures_computed"] == 6 - sum(1 for v in values.values() if v is not None)
    with Store(store) as st:
        assert stored <= {m["key"] for m in st.models()}
        assert all(st.result(k)["value"] == v for k, v in values.items())

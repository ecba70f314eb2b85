"""The `genbench` command line. Heavy imports (torch) happen inside commands only,
so `genbench --help` stays fast.

Conventions every command keeps: ``-h``/``--help``; ``--json PATH`` writes the
command's data as JSON to PATH (``-`` for stdout, and then stdout holds the JSON
only); ``-v``/``-q`` before the command set the verbosity; errors are one line
each on stderr, with exit code 2 for bad input (0 ok, 3 completed with failures).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from genbench.store import DEFAULT_STORE as _DEFAULT_STORE

# Plain (click) help: short, greppable, and no "<bool>" beside flags.
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Benchmark generalization measures on populations of trained networks.")
console = Console()
err = Console(stderr=True)
STATE = {"verbosity": 0}  # -q: -1, default 0, -v: 1, -vv: 2

STORE = Annotated[Path, typer.Option("--store", metavar="DIR",
                                     help="store directory (SQLite + safetensors)")]
DEFAULT_STORE = Path(_DEFAULT_STORE)
SUITE_ARG = Annotated[str, typer.Argument(metavar="SUITE", help="suite file or registry name")]


def json_option(what: str) -> Any:
    return typer.Option("--json", metavar="PATH", help=f"write {what} as JSON to PATH ('-': stdout)")


def _sort_option() -> Any:
    from genbench.leaderboard import SORT_HELP

    return typer.Option("--sort", metavar="COLUMN", help=f"sort the leaderboard by: {SORT_HELP}")


SORT = Annotated[Optional[str], _sort_option()]
WIDE = Annotated[bool, typer.Option("--wide", help="show every score column, not the compact set")]
INTERVALS = Annotated[bool, typer.Option("--intervals", help="show bootstrap intervals beside values")]
MARKDOWN = Annotated[Optional[Path], typer.Option("--markdown", metavar="PATH",
                                                  help="also write the leaderboard as Markdown")]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OnOff(str, Enum):
    on = "on"
    off = "off"


# -- shared plumbing ---------------------------------------------------------------------
def fail(lines: str | list[str], code: int = 2) -> None:
    """Print one line per problem (no traceback) and exit."""
    for line in [lines] if isinstance(lines, str) else lines:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def friendly_errors():
    """Turn expected user errors into one-line messages."""
    from pydantic import ValidationError

    import click

    from genbench.limits import STOPPED, exit_code, stop_on_sigterm
    from genbench.plugins import PluginError
    from genbench.preflight import PreflightError
    from genbench.suite import SuiteError, pydantic_problems

    try:
        with stop_on_sigterm():
            yield
    except (SuiteError, PreflightError) as exc:
        fail(exc.problems)
    except ValidationError as exc:
        fail(pydantic_problems(exc, prefix=f"{exc.title}."))
    except (PluginError, OSError, LookupError, ValueError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as limits.Terminated
        err.print(STOPPED, highlight=False, markup=False)
        raise typer.Exit(exit_code(exc)) from None
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.ClickException,
            click.exceptions.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
        if STATE["verbosity"] >= 2 or os.environ.get("GENBENCH_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (genbench -vv ... shows the traceback)",
             code=1)


def emit_json(obj: Any, path: str | None) -> None:
    """Write ``obj`` as JSON to ``path`` (``-``: stdout)."""
    if path is None:
        return
    text = json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    if path == "-":
        typer.echo(text)
    else:
        Path(path).write_text(text + "\n")


def say(text: str) -> None:
    """A status line on stderr, unless -q."""
    if STATE["verbosity"] >= 0:
        err.print(text, highlight=False, soft_wrap=True)


def rich_progress():
    """A progress callback for genbench.runner.run drawing one bar per stage (None with -q:
    the library's default then logs, which -q silences)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.fields[stage]:<8}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.description}"), console=err,
                    transient=False, disable=STATE["verbosity"] < 0)

    def progress(stage: str, total: int):
        if not bars.live.is_started:
            bars.start()
        task = bars.add_task("", total=total, stage=stage)

        def advance(description: str) -> None:
            bars.update(task, advance=1, description=description)

        return advance

    return bars, progress


@contextmanager
def spinner(text: str):
    """An elapsed-time spinner on stderr for work that reports no steps (off with -q)."""
    if STATE["verbosity"] < 0:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(text), TimeElapsedColumn(), console=err,
                  transient=True):
        yield


def show_leaderboard(board: dict[str, Any], title: str, sort: str | None, wide: bool,
                     intervals: bool, markdown: Path | None) -> None:
    """The leaderboard on stdout (and as Markdown), or a line saying why there is none."""
    from genbench.leaderboard import print_table, rich_table, to_markdown

    if not board.get("leaderboard"):
        say("No leaderboard: fewer than 3 trained models.")
        return
    with friendly_errors():
        print_table(console, rich_table(board, sort_by=sort, title=title, wide=wide,
                                        intervals=intervals))
        if markdown is not None:
            markdown.write_text(to_markdown(board, sort_by=sort, wide=wide, intervals=intervals))


def run_board(result: dict[str, Any]) -> dict[str, Any]:
    """The score dict of a run result (its "scoring" dict with the "leaderboard")."""
    return {**result.get("scoring", {}), "leaderboard": result["leaderboard"]}


def run_title(result: dict[str, Any]) -> str:
    return escape(f"{result['suite']}: "
                  f"{result.get('scoring', {}).get('n_models', len(result['models']))} models")


def show_notes(result: dict[str, Any]) -> None:
    """What failed (first error of each kind) and whether the run is partial, as plain text."""
    from genbench.check import notes

    for line in notes(result.get("summary") or {}):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from genbench import __version__

        typer.echo(f"genbench {__version__}")
        raise typer.Exit()


def _set_logging(verbosity: int) -> None:
    """genbench's log lines on stderr: warnings by default, -v info, -vv debug, -q errors."""
    log = logging.getLogger("genbench")
    for h in [h for h in log.handlers if getattr(h, "genbench_cli", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.genbench_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel({-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print genbench's version and exit")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False,
                                         help="more log lines (-v info, -vv debug)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="errors and requested output only")] = False,
) -> None:
    """Benchmark generalization measures on populations of trained networks."""
    STATE["verbosity"] = -1 if quiet else verbose
    _set_logging(STATE["verbosity"])


# -- commands ----------------------------------------------------------------------------
@app.command()
def run(
    suite: SUITE_ARG = "default",
    store: STORE = DEFAULT_STORE,
    json_path: Annotated[Optional[str], json_option("the run (models, scores)")] = None,
    markdown: MARKDOWN = None,
    device: Annotated[Device, typer.Option(help="where to train and measure")] = Device.auto,
    executor: Annotated[Optional[str], typer.Option(metavar="NAME", help="executor plugin (default: the suite's)")] = None,
    address: Annotated[Optional[str], typer.Option(metavar="ADDR", help="cluster address for the ray executor")] = None,
    batching: Annotated[OnOff, typer.Option(help="train same-shape models as one stacked computation")] = OnOff.on,
    sort: SORT = None,
    wide: WIDE = False,
    intervals: INTERVALS = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="train and measure again what failed before")] = False,
    include_unconverged: Annotated[bool, typer.Option("--include-unconverged", help="score models that missed the training target too")] = False,
) -> None:
    """Train a suite's population, compute every measure, score them, show the leaderboard.

    Exit code 0: all done; 3: done, but some models or values failed; 2: bad input;
    1: internal error; 130/143: stopped by Ctrl-C/SIGTERM (rerun to resume)."""
    from genbench import runner

    with friendly_errors():
        from genbench.check import check_output, retry_failed as forget_failures
        from genbench.plugins import get_registry
        from genbench.population import expand
        from genbench.preflight import check_builds
        from genbench.suite import load_suite

        check_output(json_path, "--json")
        check_output(markdown, "--markdown")
        registry = get_registry()
        spec = load_suite(suite, registry)  # every problem is reported before any work starts
        specs = expand(spec, registry)
        if retry_failed:
            forget_failures(store, [m.key for m in specs])
        check_builds(runner.untrained(specs, store), registry)  # stored models were built
        if include_unconverged:
            spec.scoring.include_unconverged = True
        bars, progress = rich_progress()
        extra = {"executor_params": {"address": address}} if address else {}
        try:
            result = runner.run(spec, store=store, device=device.value, executor=executor,
                                json_path=None if json_path in (None, "-") else json_path,
                                progress=progress, registry=registry,
                                batching=batching is OnOff.on, **extra)
        finally:
            if bars.live.is_started:
                bars.stop()
    s = result["summary"]
    say(f"{s['models']} models: {s['trained']} trained, {s['reused']} reused, "
        f"{s['failed']} failed; measures: {s['measures_computed']} computed, "
        f"{s['measures_reused']} reused, {s.get('measures_failed', 0)} failed; {s['seconds']:.1f} s; store: {result['store']}")
    if json_path == "-":
        emit_json(result, "-")
    else:
        show_leaderboard(run_board(result), run_title(result), sort, wide, intervals, markdown)
        show_notes(result)
    if s["failed"] or s.get("measures_failed"):
        raise typer.Exit(3)  # completed, with failed models or values


@app.command()
def validate(suite: SUITE_ARG,
             json_path: Annotated[Optional[str], json_option("what was checked")] = None) -> None:
    """Check a suite completely without training: schema, components, params, grid, and
    that each architecture builds and takes a batch of its dataset."""
    with friendly_errors():
        from genbench.plugins import get_registry
        from genbench.population import expand
        from genbench.preflight import check_builds
        from genbench.suite import load_suite

        registry = get_registry()
        s = load_suite(suite, registry)
        specs = expand(s, registry)
        built = check_builds(specs, registry)
    emit_json({"suite": s.name, "models": len(specs), "architectures": built,
               "measures": list(s.measures)}, json_path)
    if json_path == "-":
        return
    console.print(f"[green]ok[/green] {escape(s.name)}: {len(specs)} models ({built} architectures "
                  f"built and fed a batch), measures: {', '.join(s.measures)}")


@app.command()
def leaderboard(
    store: STORE = DEFAULT_STORE,
    suite: Annotated[Optional[str], typer.Option(metavar="NAME", help="suite name (default: the last run)")] = None,
    preset: Annotated[Optional[str], typer.Option(metavar="NAME", help="scoring preset (default: the suite's)")] = None,
    json_path: Annotated[Optional[str], json_option("the leaderboard")] = None,
    markdown: MARKDOWN = None,
    sort: SORT = None,
    wide: WIDE = False,
    intervals: INTERVALS = False,
    include_unconverged: Annotated[bool, typer.Option("--include-unconverged", help="score models that missed the training target too")] = False,
) -> None:
    """Re-render the leaderboard of the last run in a store, from stored records alone."""
    from genbench import runner

    with friendly_errors():
        from genbench.check import check_output

        check_output(markdown, "--markdown")
        result = runner.leaderboard(store, suite=suite, preset=preset,
                                    include_unconverged=True if include_unconverged else None)
    emit_json(result, json_path)
    if json_path != "-":
        show_leaderboard(run_board(result), run_title(result), sort, wide, intervals, markdown)
        show_notes(result)


def _params(items: list[str] | None) -> dict[str, Any]:
    """--param KEY=VALUE items (values parsed as JSON when they are)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@app.command()
def volume(
    store: STORE = DEFAULT_STORE,
    estimator: Annotated[str, typer.Option(metavar="NAME", help="volume estimator plugin: laplace or sampling")] = "laplace",
    suite: Annotated[Optional[str], typer.Option(metavar="SUITE", help="estimate this suite's models (trained first if missing)")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", metavar="KEY=VALUE", help="estimator param (repeatable)")] = None,
    device: Annotated[Device, typer.Option(help="where to compute")] = Device.auto,
    json_path: Annotated[Optional[str], json_option("the estimates")] = None,
) -> None:
    """Estimate the weight volume of every model in a store (or of a suite's models)."""
    params = _params(param)
    with friendly_errors():
        from genbench.plugins import PluginError, get_registry
        from genbench.estimate import volume_report
        from genbench.runner import resolve_device
        from genbench.suite import check_component

        try:
            get_registry().get("volume_estimator", estimator)
        except PluginError as exc:
            fail(f"--estimator: {exc}")
        problems: list[str] = []
        check_component(get_registry(), "volume_estimator", estimator, params, "--param", problems)
        if problems:
            fail(problems)
        with spinner(f"estimating weight volumes ({estimator})"):
            report = volume_report(store, estimator, params, suite=suite,
                                   device=resolve_device(device.value))
    emit_json(report, json_path)
    if json_path != "-":
        _volume_table(report, estimator)


def _volume_table(report: dict[str, Any], estimator: str) -> None:
    from rich.table import Table

    from genbench.suite import short_names

    table = Table(title=f"weight volume ({estimator}), {len(report['models'])} models")
    hps = sorted({h for m in report["models"].values() for h in m["hparams"]})
    names = short_names(hps)
    diag = [d for d in ("ess_min", "epochs") if any(d in m.get("diagnostics", {})
                                                      for m in report["models"].values())]
    for col in ["model", *[names[h] for h in hps], "vol/dim (mean)", "sum log vol", "layers",
                *[{"ess_min": "ESS", "epochs": "passes"}[d] for d in diag], "s"]:
        table.add_column(col, justify="right", no_wrap=True)
    for key, m in report["models"].items():
        table.add_row(key[:8], *[str(m["hparams"].get(h, "")) for h in hps],
                      f"{m['vol_per_dim_mean']:.4f}", f"{m['log_vol_sum']:.1f}",
                      str(len(m["layers"])),
                      *[f"{m.get('diagnostics', {}).get(d, float('nan')):.0f}" for d in diag],
                      f"{m['seconds']:.2f}")
    console.print(table)
    err.print(f"{estimator} params from {report['settings_from']}", highlight=False)
    for key, error in report.get("failed", {}).items():
        err.print(f"model {key[:8]}: {error}", highlight=False, soft_wrap=True)
    if report.get("failed") and not report["models"]:
        fail(f"every {estimator} estimate failed ({len(report['failed'])} models); params "
             f"{report['params']} from {report['settings_from']}: fix them with --param", code=3)
    if report.get("failed"):  # as `genbench run`: completed, with failures (exit 3)
        fail(f"{len(report['failed'])} of {len(report['failed']) + len(report['models'])} "
             f"{estimator} estimates failed (listed above)", code=3)


@app.command()
def report(
    store: STORE = DEFAULT_STORE,
    run_ids: Annotated[Optional[list[int]], typer.Option("--run", help="run id (repeatable; default: the last run of each suite in the store)")] = None,
    out: Annotated[Path, typer.Option("--out", help="directory for report.md, report.html and the figures")] = Path("report"),
    bootstrap: Annotated[Optional[int], typer.Option(min=0, help="bootstrap resamples for the intervals (default: the suite's, or 200)")] = None,
    json_path: Annotated[Optional[str], json_option("what was written, with each finding's verdict")] = None,
) -> None:
    """Write a run's report: provenance, leaderboard, figures and a verdict per finding."""
    from genbench.report import ReportError, pick_runs, report as write_report, stored_runs

    try:
        pick_runs(stored_runs(store), run_ids, store)  # bad input is one line, before any work
    except ReportError as exc:
        fail(str(exc))
    with friendly_errors():
        bars, progress = rich_progress()
        try:
            result = write_report(store, runs=run_ids, out=out, bootstrap=bootstrap, progress=progress)
        finally:
            if bars.live.is_started:
                bars.stop()
    emit_json(result, json_path)
    verdicts = [v for r in result["runs"] for v in r["findings"].values() if v]
    err.print(f"{result['markdown']}, {result['html']} and {len(result['figures'])} figures; "
              f"{len(verdicts)} findings with a verdict", highlight=False)


@app.command()
def suites(json_path: Annotated[Optional[str], json_option("the list")] = None) -> None:
    """List the registry's suites with their model counts and estimated run time here."""
    with friendly_errors():
        from genbench.catalog import list_suites

        rows = list_suites()
    emit_json(rows, json_path)
    if json_path == "-":
        return
    from rich.table import Table

    table = Table(title="registry suites")
    for col in ("suite", "models", "dataset", "est. time (this CPU)", "description"):
        table.add_column(col)
    for r in rows:
        est = r.get("est_seconds")
        est_text = "-" if est is None else human_duration(est)
        table.add_row(r["name"], str(r["models"]), str(r.get("dataset", "")), est_text,
                      r.get("description", ""))
    console.print(table)


def human_duration(seconds: float) -> str:
    """3 s, 4 min, 5.2 h, 3.1 days, 7.0 years."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _cols(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


@app.command()
def score(
    table: Annotated[Path, typer.Argument(metavar="TABLE", help="CSV or JSON Lines (one row per model; a `genbench export`), or the JSON that `genbench run --json` wrote")],
    gap: Annotated[str, typer.Option(metavar="COLUMN", help="column of the loss gap (test - train loss)")] = "gap",
    acc_gap: Annotated[Optional[str], typer.Option(metavar="COLUMN", help="column of the accuracy gap (default: acc_gap if present)")] = None,
    condition_on: Annotated[Optional[str], typer.Option(metavar="COLS", help="comma-separated hyperparameter columns omega ranges over (default: an export's hp: columns)")] = None,
    against: Annotated[Optional[str], typer.Option(metavar="COLS", help="comma-separated hyperparameter columns to report MI with (default: an export's against: columns)")] = None,
    measures: Annotated[Optional[str], typer.Option(metavar="COLS", help="comma-separated measure columns (default: every other numeric column)")] = None,
    against_within: Annotated[Optional[str], typer.Option(metavar="COLS", help="comma-separated columns held fixed for the MI with --against (default: the preset's)")] = None,
    preset: Annotated[Optional[str], typer.Option(metavar="NAME", help="scoring preset: paper, jiang, pgdl (default: a run JSON's, else paper)")] = None,
    max_omega: Annotated[Optional[int], typer.Option(metavar="K", help="largest |omega| to condition on (default: 2)")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(metavar="N", help="bootstrap resamples for intervals (default: 0, none)")] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help="bootstrap seed (default: 0)")] = None,
    include_unconverged: Annotated[bool, typer.Option("--include-unconverged", help="score models whose converged column is false too")] = False,
    json_path: Annotated[Optional[str], json_option("the scores")] = None,
    markdown: MARKDOWN = None,
    sort: SORT = None,
    wide: WIDE = False,
    intervals: INTERVALS = False,
) -> None:
    """Score a population trained anywhere: every measure column against the gap."""
    from genbench.export import read_table, score_table
    from genbench.tables import TableError

    try:
        t = read_table(table)
        with spinner(f"scoring {len(t.rows)} models"):
            board = score_table(t, gap=gap, acc_gap=acc_gap, condition_on=_cols(condition_on),
                                against=_cols(against), measures=_cols(measures), preset=preset,
                                max_omega=max_omega, bootstrap=bootstrap, seed=seed,
                                include_unconverged=include_unconverged,
                                against_within=_cols(against_within))
    except (TableError, ValueError, KeyError, OSError) as exc:
        fail(str(exc).strip("'\"").splitlines()[0] if str(exc) else type(exc).__name__)
    emit_json(board, json_path)
    if json_path != "-":
        show_leaderboard(board, f"{table.name}: {board['n_models']} models", sort, wide,
                         intervals, markdown)


@app.command()
def export(
    store: STORE = DEFAULT_STORE,
    run_id: Annotated[Optional[int], typer.Option("--run", metavar="ID", help="the run to export (default: the last)")] = None,
    csv_path: Annotated[Optional[str], typer.Option("--csv", metavar="PATH", help="write CSV to PATH ('-': stdout)")] = None,
    jsonl_path: Annotated[Optional[str], typer.Option("--jsonl", metavar="PATH", help="write JSON Lines to PATH ('-': stdout)")] = None,
) -> None:
    """Write a run as a flat table, one row per model: key, seed, hyperparameters, metrics,
    converged, engine, every measure and measure part (`genbench score` reads it back)."""
    from genbench.export import store_rows, write_csv, write_jsonl

    if csv_path is None and jsonl_path is None:
        fail("export: name an output with --csv PATH or --jsonl PATH ('-' for stdout)")
    with friendly_errors():
        run_record, rows = store_rows(store, run_id)
        if csv_path is not None:
            write_csv(rows, csv_path)
        if jsonl_path is not None:
            write_jsonl(rows, jsonl_path)
    say(f"run {run_record['id']} ({run_record['suite']}): {len(rows)} models exported")


@app.command()
def plugins(
    json_path: Annotated[Optional[str], json_option("the list")] = None,
    params: Annotated[Optional[str], typer.Option("--params", metavar="NAME", help="list this component's params instead (as `describe`)")] = None,
) -> None:
    """List every plugin, its version and its components; failed plugins with their error."""
    if params is not None:
        describe(params, json_path)
        return
    from genbench.plugins import get_registry

    registry = get_registry()
    rows = [{"name": p.name, "version": p.version, "builtin": p.builtin,
             "components": p.components, "error": p.error} for p in registry.plugins.values()]
    emit_json(rows, json_path)
    if json_path == "-":
        return
    from rich.table import Table

    table = Table(title="genbench plugins")
    for col in ("plugin", "version", "source", "components / error"):
        table.add_column(col)
    for r in rows:
        what = f"[red]FAILED: {escape(r['error'])}[/red]" if r["error"] else ", ".join(r["components"])
        table.add_row(r["name"], r["version"], "built-in" if r["builtin"] else "third-party", what)
    console.print(table)


@app.command()
def describe(
    name: Annotated[str, typer.Argument(metavar="NAME", help="a component: NAME or KIND:NAME (e.g. measure:pac_sharpness)")],
    json_path: Annotated[Optional[str], json_option("the params")] = None,
) -> None:
    """Show a component's params: name, type, default and description."""
    from genbench.introspect import describe_component

    with friendly_errors():
        info = describe_component(name)
    emit_json(info, json_path)
    if json_path == "-":
        return
    from rich.table import Table

    table = Table(title=f"{info['kind']} {info['name']} (version {info['version']}, "
                        f"plugin {info['plugin']})", caption=info["doc"] or None)
    for col in ("param", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for p in info["params"]:
        table.add_row(p["name"], p["type"], "(required)" if p["required"] else json.dumps(p["default"]),
                      p["description"])
    console.print(table)


@app.command()
def version(json_path: Annotated[Optional[str], json_option("the versions")] = None) -> None:
    """Versions of genbench, Python, torch and CUDA, and of every plugin."""
    import platform

    import torch

    from genbench import __version__
    from genbench.plugins import get_registry

    cuda = torch.cuda.is_available()
    info = {"genbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "cuda_available": cuda,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else [],
            "plugins": {p.name: p.version for p in get_registry().plugins.values()}}
    emit_json(info, json_path)
    if json_path == "-":
        return
    typer.echo(f"genbench {info['genbench']}\npython {info['python']}\ntorch {info['torch']}"
               f" (CUDA build: {info['cuda_build'] or 'none, CPU only'}; device: "
               f"{', '.join(info['cuda_devices']) or 'none'})")
    for name, v in info["plugins"].items():
        typer.echo(f"plugin {name} {v}")


@app.command()
def check(
    store: STORE = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option("--repair", help="drop damaged models so a rerun retrains them")] = False,
    json_path: Annotated[Optional[str], json_option("the report")] = None,
) -> None:
    """Check a store: every weights file against its checksum, and the SQLite file.

    Exit code 0: no problem (or all repaired); 3: problems found."""
    with friendly_errors():
        from genbench.check import check_store

        report = check_store(store, repair=repair)
    emit_json(report, json_path)
    for line in report["problems"]:
        err.print(f"[red]problem:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    for line in report["notes"]:
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if report["repaired"]:
        err.print(f"repaired: dropped {report['repaired']} damaged model(s); rerun the suite "
                  "to retrain them", markup=False, highlight=False)
    elif not report["problems"]:
        console.print(f"ok: store {store} has no problems", markup=False, highlight=False)
    if report["problems"] and not report["repaired"]:
        raise typer.Exit(3)


@app.command()
def failures(
    store: STORE = DEFAULT_STORE,
    json_path: Annotated[Optional[str], json_option("the failures")] = None,
) -> None:
    """List every failed model and value in a store, with its error (retry them with
    `genbench run SUITE --retry-failed`)."""
    with friendly_errors():
        from genbench.check import list_failures

        rows = list_failures(store)
    emit_json(rows, json_path)
    if json_path == "-":
        return
    if not rows:
        console.print(f"no failures in store {store}", markup=False, highlight=False)
        return
    from rich.table import Table

    table = Table(title=escape(f"{len(rows)} failure(s) in {store}"))
    for col in ("model", "what", "hyperparameters", "error"):
        table.add_column(col)
    for r in rows:
        hp = " ".join(f"{k}={v}" for k, v in r["hparams"].items())
        what = "model" if r["kind"] == "model" else f"{r['kind']} {r['name']}"
        table.add_row(r["model"][:12], escape(what), escape(hp), escape(r["error"] or ""))
    console.print(table, crop=False)


def main() -> None:
    """Console-script entry point: an unexpected error is one line and exit code 1
    (``genbench -vv ...`` shows its traceback)."""
    try:
        app(prog_name="genbench", standalone_mode=True)
    except Exception as exc:  # noqa: BLE001 - no traceback reaches a user
        if STATE["verbosity"] >= 2:
            raise
        err.print(f"[red]error:[/red] internal error: {escape(f'{type(exc).__name__}: {exc}')} "
                  "(genbench -vv ... shows the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

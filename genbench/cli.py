"""The `genbench` command line. Heavy imports (torch) happen inside commands only,
so `genbench --help` stays fast."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Benchmark generalization measures on populations of trained networks.")
console = Console()
err = Console(stderr=True)

STORE = Annotated[Path, typer.Option("--store", help="store directory (SQLite + safetensors)")]
DEFAULT_STORE = Path(".genbench")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OnOff(str, Enum):
    on = "on"
    off = "off"


def fail(lines: str | list[str], code: int = 2) -> None:
    """Print one line per problem (no traceback) and exit."""
    for line in [lines] if isinstance(lines, str) else lines:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def friendly_errors():
    """Turn expected user errors into one-line messages."""
    from pydantic import ValidationError

    from genbench.plugins import PluginError
    from genbench.suite import SuiteError, pydantic_problems

    try:
        yield
    except SuiteError as exc:
        fail(exc.problems)
    except ValidationError as exc:
        fail(pydantic_problems(exc, prefix=f"{exc.title}."))
    except (PluginError, FileNotFoundError, LookupError, ValueError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def rich_progress():
    """A progress callback for genbench.runner.run drawing one bar per stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.fields[stage]:<8}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.description}"), console=err,
                    transient=False)

    def progress(stage: str, total: int):
        if not bars.live.is_started:
            bars.start()
        task = bars.add_task("", total=total, stage=stage)

        def advance(description: str) -> None:
            bars.update(task, advance=1, description=description)

        return advance

    return bars, progress


def show_leaderboard(result: dict[str, Any], sort: str | None, markdown: Path | None) -> None:
    from genbench.leaderboard import rich_table, to_markdown

    board = {**result.get("scoring", {}), "leaderboard": result["leaderboard"]}
    if not result["leaderboard"]:
        err.print("No leaderboard: fewer than 3 trained models.")
        return
    console.print(rich_table(board, sort_by=sort, title=f"{result['suite']}: "
                             f"{board.get('n_models', len(result['models']))} models"), crop=False)
    if markdown is not None:
        markdown.write_text(to_markdown(board, sort_by=sort))


@app.command()
def run(
    suite: Annotated[str, typer.Argument(help="suite file or registry name")] = "default",
    store: STORE = DEFAULT_STORE,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the run JSON here")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="write the leaderboard as Markdown")] = None,
    device: Annotated[Device, typer.Option(help="where to train and measure")] = Device.auto,
    executor: Annotated[Optional[str], typer.Option(help="executor plugin (default: the suite's)")] = None,
    address: Annotated[Optional[str], typer.Option(help="cluster address for the ray executor")] = None,
    batching: Annotated[OnOff, typer.Option(help="train same-shape models as one stacked computation")] = OnOff.on,
    sort: Annotated[Optional[str], typer.Option(help="sort the leaderboard by this column")] = None,
) -> None:
    """Train a suite's population, compute every measure, score them, show the leaderboard."""
    from genbench import runner

    with friendly_errors():
        from genbench.plugins import get_registry
        from genbench.suite import load_suite

        registry = get_registry()
        spec = load_suite(suite, registry)  # every problem is reported before any work starts
        bars, progress = rich_progress()
        extra = {"executor_params": {"address": address}} if address else {}
        try:
            result = runner.run(spec, store=store, device=device.value, executor=executor,
                                json_path=json_path, progress=progress, registry=registry,
                                batching=batching is OnOff.on, **extra)
        finally:
            if bars.live.is_started:
                bars.stop()
        s = result["summary"]
        err.print(f"{s['models']} models: {s['trained']} trained, {s['reused']} reused, "
                  f"{s['failed']} failed; measures: {s['measures_computed']} computed, "
                  f"{s['measures_reused']} reused; {s['seconds']:.1f} s; store: {result['store']}")
        show_leaderboard(result, sort, markdown)


@app.command()
def validate(suite: Annotated[str, typer.Argument(help="suite file or registry name")]) -> None:
    """Check a suite completely (schema, components, params, grid) without running anything."""
    with friendly_errors():
        from genbench.plugins import get_registry
        from genbench.population import expand
        from genbench.suite import load_suite

        registry = get_registry()
        s = load_suite(suite, registry)
        n = len(expand(s, registry))
        console.print(f"[green]ok[/green] {s.name}: {n} models, measures: {', '.join(s.measures)}")


@app.command()
def leaderboard(
    store: STORE = DEFAULT_STORE,
    suite: Annotated[Optional[str], typer.Option(help="suite name (default: the last run)")] = None,
    preset: Annotated[Optional[str], typer.Option(help="scoring preset (default: the suite's)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the leaderboard JSON")] = False,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="write Markdown here")] = None,
    sort: Annotated[Optional[str], typer.Option(help="sort by this column")] = None,
) -> None:
    """Re-render the leaderboard of the last run in a store, from stored records alone."""
    from genbench import runner

    with friendly_errors():
        result = runner.leaderboard(store, suite=suite, preset=preset)
        if json_out:
            typer.echo(json.dumps(result, indent=2, default=str))
        else:
            show_leaderboard(result, sort, markdown)


@app.command()
def volume(
    store: STORE = DEFAULT_STORE,
    estimator: Annotated[str, typer.Option(help="volume estimator plugin: laplace or sampling")] = "laplace",
    suite: Annotated[Optional[str], typer.Option(help="estimate this suite's models (trained first if missing)")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="estimator param KEY=VALUE (repeatable)")] = None,
    device: Annotated[Device, typer.Option(help="where to compute")] = Device.auto,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the estimates as JSON")] = None,
) -> None:
    """Estimate the weight volume of every model in a store (or of a suite's models)."""
    with friendly_errors():
        from genbench.runner import resolve_device
        from genbench.volume import volume_report

        params = {}
        for item in param or []:
            key, sep, value = item.partition("=")
            if not sep:
                fail(f"--param {item}: expected KEY=VALUE")
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
        from genbench.plugins import get_registry
        from genbench.suite import check_component

        problems: list[str] = []
        check_component(get_registry(), "volume_estimator", estimator, params, "--param", problems)
        if problems:
            fail(problems)
        report = volume_report(store, estimator, params, suite=suite,
                               device=resolve_device(device.value))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    from rich.table import Table

    table = Table(title=f"weight volume ({estimator}), {len(report['models'])} models")
    hps = sorted({h for m in report["models"].values() for h in m["hparams"]})
    from genbench.suite import short_names

    names = short_names(hps)
    for col in ["model", *[names[h] for h in hps], "vol/dim (mean)", "sum log vol", "layers", "s"]:
        table.add_column(col, justify="right")
    for key, m in report["models"].items():
        table.add_row(key[:8], *[str(m["hparams"].get(h, "")) for h in hps],
                      f"{m['vol_per_dim_mean']:.4f}", f"{m['log_vol_sum']:.1f}",
                      str(len(m["layers"])), f"{m['seconds']:.2f}")
    console.print(table)
    for key, error in report.get("failed", {}).items():
        err.print(f"model {key[:8]}: {error}", highlight=False, soft_wrap=True)


@app.command()
def report(
    store: STORE = DEFAULT_STORE,
    run_ids: Annotated[Optional[list[int]], typer.Option("--run", help="run id (repeatable; default: the last run of each suite in the store)")] = None,
    out: Annotated[Path, typer.Option("--out", help="directory for report.md, report.html and the figures")] = Path("report"),
    bootstrap: Annotated[Optional[int], typer.Option(min=0, help="bootstrap resamples for the intervals (default: the suite's, or 200)")] = None,
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
    verdicts = [v for r in result["runs"] for v in r["findings"].values() if v]
    err.print(f"{result['markdown']}, {result['html']} and {len(result['figures'])} figures; "
              f"{len(verdicts)} findings with a verdict", highlight=False)


@app.command()
def suites(json_out: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """List the registry's suites with their model counts and estimated run time here."""
    with friendly_errors():
        from genbench.catalog import list_suites

        rows = list_suites()
    if json_out:
        typer.echo(json.dumps(rows, indent=2, default=str))
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
    table: Annotated[Path, typer.Argument(help="CSV or JSON Lines, one row per model")],
    gap: Annotated[str, typer.Option(help="column of the loss gap (test - train loss)")] = "gap",
    acc_gap: Annotated[Optional[str], typer.Option(help="column of the accuracy gap (default: acc_gap if present)")] = None,
    condition_on: Annotated[Optional[str], typer.Option(help="comma-separated hyperparameter columns omega ranges over")] = None,
    against: Annotated[Optional[str], typer.Option(help="comma-separated hyperparameter columns to report MI with")] = None,
    measures: Annotated[Optional[str], typer.Option(help="comma-separated measure columns (default: every other numeric column)")] = None,
    preset: Annotated[str, typer.Option(help="scoring preset: paper, jiang, pgdl")] = "paper",
    max_omega: Annotated[int, typer.Option(help="largest |omega| to condition on")] = 2,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for intervals (0: none)")] = 0,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the scores as JSON")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="write the leaderboard as Markdown")] = None,
    sort: Annotated[Optional[str], typer.Option(help="sort by this column")] = None,
) -> None:
    """Score a population trained anywhere: every measure column against the gap."""
    from genbench.scoring import PRESETS, score_population
    from genbench.tables import TableError, load_population

    if preset not in PRESETS:
        fail(f"--preset: unknown preset '{preset}'; choose one of {', '.join(sorted(PRESETS))}")
    try:
        pop = load_population(table, gap=gap, acc_gap=acc_gap, condition_on=_cols(condition_on),
                              against=_cols(against), measures=_cols(measures))
        if PRESETS[preset].gap not in pop.gaps:
            raise TableError(f"--acc-gap: preset '{preset}' scores the accuracy gap; name its column")
        board = score_population(pop.measures, pop.gaps, pop.hparams,
                                 condition_on=_cols(condition_on) or [], against=_cols(against) or [],
                                 preset=preset, max_omega=max_omega, bootstrap=bootstrap, seed=seed)
    except (TableError, ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if json_path is not None:
        json_path.write_text(json.dumps(board, indent=2) + "\n")
    from genbench.leaderboard import rich_table, to_markdown

    with friendly_errors():
        console.print(rich_table(board, sort_by=sort, title=f"{table.name}: {board['n_models']} models"),
                      crop=False)
        if markdown is not None:
            markdown.write_text(to_markdown(board, sort_by=sort))


@app.command()
def plugins(json_out: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """List every plugin, its version and its components; failed plugins with their error."""
    from genbench.plugins import get_registry

    registry = get_registry()
    rows = [{"name": p.name, "version": p.version, "builtin": p.builtin,
             "components": p.components, "error": p.error} for p in registry.plugins.values()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="genbench plugins")
    for col in ("plugin", "version", "source", "components / error"):
        table.add_column(col)
    for r in rows:
        what = f"[red]FAILED: {r['error']}[/red]" if r["error"] else ", ".join(r["components"])
        table.add_row(r["name"], r["version"], "built-in" if r["builtin"] else "third-party", what)
    console.print(table)


def main() -> None:  # console-script entry point
    app(prog_name="genbench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Render the dict returned by :func:`genbench.scoring.score_population` as a table.

One row per measure, sorted by the preset's headline score (best first). The compact
table (the default, it fits a 100-column terminal) shows the headline, the MI with the
gap at each |omega| under the preset's reduction (mean for ``paper``, minimum for
``jiang`` and ``pgdl``), Kendall's tau and the average sign-error; ``wide=True`` shows
every score (MI with each 'against' hyperparameter, both reductions, the granulated
tau, the robust sign-error). Headers are the names docs/quickstart.md uses.

MI is blind to direction (science.md section 3), so every MI with the gap is shown
multiplied by the measure's direction (the entry's ``"direction"``, else the sign of its
Kendall's tau): a measure that ranks models exactly backwards reads -1.000, never a
bold 1.000. The best value of each column is bold: the largest, except for the
sign-errors, where it is the smallest. A value that is undefined shows as ``n/a``,
with the scoring dict's reason (``"notes"``) in the legend.

The JSON form of the leaderboard is the dict itself. ``rich`` is imported only when a
rich table is asked for, and torch never is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.table import Table

__all__ = ["Column", "SORT_HELP", "columns", "headline", "rows", "rich_table", "to_markdown",
           "print_table"]


@dataclass(frozen=True)
class Column:
    """One leaderboard column: its ``--sort`` id, header, score path and legend."""

    id: str
    header: str
    path: str            # "mi.2", "mi_hparam.dropout", "kendall_tau", ...
    better: str          # "high" or "low"
    legend: str
    signed: bool = False  # shown multiplied by the measure's direction


def _fixed(ks: list[str]) -> list[Column]:
    out = [Column(f"gg{k}", f"GG |ω|={k}", f"mi.{k}", "high",
                  f"sign-MI with the gap at |ω|={k} (mean over ω), times the sign of τ", True)
           for k in ks]
    out += [Column(f"gg{k}_min", f"min GG |ω|={k}", f"mi_min.{k}", "high",
                   f"sign-MI with the gap at |ω|={k} (minimum over ω), times the sign of τ", True)
            for k in ks]
    return out + [
        Column("tau", "tau", "kendall_tau", "high", "Kendall's τ with the gap (signed)"),
        Column("gtau", "gran. tau", "granulated_kendall", "high", "Jiang's granulated τ"),
        Column("sign_error", "sign-err", "sign_error", "low",
               "average sign-error over environments (lower is better)"),
        Column("robust_sign_error", "max sign-err", "robust_sign_error", "low",
               "robust (maximum) sign-error over environments (lower is better)"),
        Column("sign_error_q90", "q90 sign-err", "sign_error_q90", "low",
               "90th percentile of the sign-error over environments (lower is better)"),
    ]


SORT_HELP = ("gg0/gg1/gg2 (GG |ω|=k), gg0_min/gg1_min/gg2_min, tau, gtau, sign_error, "
             "robust_sign_error, sign_error_q90, mi_<hyperparameter>; default: the preset's headline score")


def _entries(board: dict) -> dict[str, dict]:
    return board.get("leaderboard", {})


def _ks(board: dict) -> list[str]:
    """The |omega| values the board has, largest first (the paper's column order)."""
    have = {k for e in _entries(board).values() for k in e.get("mi", {})}
    return sorted(have, key=int, reverse=True)


def _against(board: dict) -> list[str]:
    against = list(board.get("options", {}).get("against") or [])
    for e in _entries(board).values():
        against += [h for h in e.get("mi_hparam", {}) if h not in against]
    return against


def headline(board: dict) -> Column:
    """The preset's headline score: MI with the gap at the largest |omega| under the
    preset's reduction over subsets (mean: ``paper``; minimum: ``jiang``, ``pgdl``);
    Kendall's tau when the board has no MI."""
    cols = {c.path: c for c in _fixed(_ks(board))}
    ks = _ks(board)
    if not ks:
        return cols["kendall_tau"]
    minimum = board.get("options", {}).get("reduce") == "min"
    return cols[f"{'mi_min' if minimum else 'mi'}.{ks[0]}"]


def columns(board: dict, wide: bool = False) -> list[Column]:
    """The board's columns: compact (headline, GG at each |omega| under the preset's
    reduction, tau, sign-error) or, with ``wide``, every score the board has."""
    from genbench.suite import short_names

    against = _against(board)
    names = short_names(against)
    mi_hp = [Column(f"mi_{h}", f"MI {names[h]}", f"mi_hparam.{h}", "high",
                    f"sign-MI with {h} (unsigned)") for h in against]
    fixed = _fixed(_ks(board))
    if wide:
        return mi_hp + fixed
    head = headline(board)
    family = head.path.split(".")[0] if head.path.startswith("mi") else "mi"
    keep = {"kendall_tau", "sign_error"}
    return [head] + [c for c in fixed if c != head and (c.path.split(".")[0] == family
                                                         or c.path in keep)]


def _resolve_sort(board: dict, sort_by: str | None) -> Column:
    if sort_by is None:
        return headline(board)
    cols = columns(board, wide=True)
    for c in cols:
        if sort_by in (c.id, c.path):
            return c
    raise ValueError(f"--sort: unknown column {sort_by!r}; choose one of "
                     f"{', '.join(c.id for c in cols)}")


def direction(entry: dict) -> int:
    """The measure's direction: the entry's ``"direction"``, else the sign of its tau."""
    d = entry.get("direction")
    if d is None:
        tau = entry.get("kendall_tau")
        d = 0 if tau is None else (tau > 0) - (tau < 0)
    return int(d)


def value(entry: dict, col: Column) -> float | None:
    """The value shown in a cell (signed MI where the column says so); None if undefined."""
    head, _, tail = col.path.partition(".")
    v = entry.get(head)
    if tail:
        v = v.get(tail) if isinstance(v, dict) else None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return v * direction(entry) if col.signed else v


def rows(board: dict, sort_by: str | None = None) -> list[tuple[str, dict]]:
    """(measure, entry) pairs, best first by ``sort_by`` (a column id or score path;
    default the headline): descending for "high"-better columns, ascending for "low",
    undefined values last, equal values in the board's order."""
    col = _resolve_sort(board, sort_by)
    sign = -1.0 if col.better == "high" else 1.0

    def key(item: tuple[str, dict]) -> tuple[int, float]:
        v = value(item[1], col)
        return (1, 0.0) if v is None else (0, sign * v)

    return sorted(_entries(board).items(), key=key)


def _best(entries: list[dict], col: Column) -> float | None:
    vals = [v for v in (value(e, col) for e in entries) if v is not None]
    if not vals:
        return None
    return max(vals) if col.better == "high" else min(vals)


def _cell(entry: dict, col: Column, intervals: bool) -> str:
    v = value(entry, col)
    if v is None:
        return "n/a"
    text = f"{v:.3f}"
    ci = entry.get("ci", {}).get(col.path) if intervals else None
    if ci and ci[0] is not None and ci[1] is not None:
        lo, hi = sorted(x * direction(entry) if col.signed else x for x in ci)
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def _is_best(entry: dict, col: Column, best: float | None) -> bool:
    v = value(entry, col)
    return v is not None and best is not None and abs(v - best) <= 1e-12


def _caption(board: dict, cols: list[Column], sort_col: Column, intervals: bool) -> list[str]:
    """The options line, the left-out models, a legend line per column, the n/a reasons."""
    o = board.get("options", {})
    lines = []
    if o:
        mi = ("MI normalized by H" if o.get("normalize")
              else f"MI unnormalized (log base {o.get('log_base')})")
        parts = [f"{board.get('preset', '?')} preset", f"gap: {o.get('gap')}", mi,
                 f"ties: {o.get('tie_rule')}"]
        if o.get("gap_tol"):
            parts.append(f"|Δgap| <= {o.get('gap_tol')} is a tie")
        parts.append(f"cells: {o.get('cell_reduce')}")
        if o.get("bootstrap"):
            parts.append(interval_label(o) + ("" if intervals else " (shown with --intervals)"))
        lines.append("; ".join(parts) + ".")
    unconverged = (board.get("left_out") or {}).get("unconverged")
    if unconverged is not None:  # said even when 0: a reader should not have to wonder
        lines.append(f"{unconverged} unconverged model(s) left out" +
                     (" (--include-unconverged puts them back)." if unconverged else "."))
    lines.append(f"Sorted by {sort_col.header}, best first; bold: best in its column.")
    lines += [f"{c.header}: {c.legend}" for c in cols]
    notes = board.get("notes") or {}
    entries = list(_entries(board).values())
    for c in cols:
        if any(value(e, c) is None for e in entries):
            why = notes.get(c.path) or notes.get(c.id) or "undefined here (no pair qualifies, or H = 0)"
            lines.append(f"n/a in {c.header}: {why}")
    return lines


def _layout(board: dict, sort_by: str | None, wide: bool):
    cols = columns(board, wide)
    ordered = rows(board, sort_by)
    entries = [e for _, e in ordered]
    best = {c: _best(entries, c) for c in cols}
    return cols, ordered, best


def rich_table(board: dict, sort_by: str | None = None, title: str | None = None,
               wide: bool = False, intervals: bool = False) -> Table:
    """The leaderboard as a rich Table, best value per column in bold green.
    Cells never wrap; print it with :func:`print_table` so none is cut either."""
    from rich import box
    from rich.table import Table

    cols, ordered, best = _layout(board, sort_by, wide)
    if title is None:
        title = (f"Generalization measures ({board.get('preset', '?')} preset, "
                 f"{board.get('n_models', '?')} models)")
    caption = "\n".join(_caption(board, cols, _resolve_sort(board, sort_by), intervals))
    table = Table(title=title, caption=caption, caption_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Measure", style="bold", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for c in cols:
        table.add_column(c.header, justify="right", no_wrap=True)
    for name, e in ordered:
        cells = [name, str(e.get("n_models", ""))]
        for c in cols:
            text = _cell(e, c, intervals)
            cells.append(f"[bold green]{text}[/bold green]" if _is_best(e, c, best[c]) else text)
        table.add_row(*cells)
    return table


def print_table(console: Console, table: Table) -> None:
    """Print a table at least as wide as its widest row needs, so no number is cut
    (rich would otherwise shrink columns to the terminal and truncate cells)."""
    from rich.measure import Measurement

    caption, table.caption = table.caption, None  # the caption wraps; it sets no width
    need = Measurement.get(console, console.options.update(width=10_000), table).maximum
    table.caption = caption
    width = console.width
    console.width = max(width, need)  # print() clamps its width to the console's
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def to_markdown(board: dict, sort_by: str | None = None, wide: bool = False,
                intervals: bool = False) -> str:
    """The same table as GitHub Markdown, best value per column in bold."""
    cols, ordered, best = _layout(board, sort_by, wide)

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    header = ["Measure", "n"] + [esc(c.header) for c in cols]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---", "---:"] + ["---:"] * len(cols)) + "|"]
    for name, e in ordered:
        cells = [esc(name), str(e.get("n_models", ""))]
        for c in cols:
            text = _cell(e, c, intervals)
            cells.append(f"**{text}**" if _is_best(e, c, best[c]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    caption = _caption(board, cols, _resolve_sort(board, sort_by), intervals)
    lines += [""] + [esc(c) + "  " for c in caption]
    return "\n".join(lines) + "\n"


def interval_label(options: dict) -> str:
    """What the score intervals are, in words (docs/scoring.md, "Intervals")."""
    level, b = f"{options.get('ci_level', 0.95):.0%}", options.get("bootstrap")
    if options.get("interval", "subsample") == "subsample":
        return (f"{level} bias-corrected half-sample intervals over models (no duplicate "
                f"models), {b} resamples")
    return f"{level} percentile bootstrap intervals over models, {b} resamples"

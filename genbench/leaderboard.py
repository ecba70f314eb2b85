"""Render the dict returned by :func:`genbench.scoring.score_population` as a table.

One row per measure, the paper's Table 2 columns (MI with each 'against'
hyperparameter, such as dropout; MI with the gap at |omega| = 2, 1, 0) followed by the
minimum-reduced MI (Jiang et al.), the signed Kendall's tau (MI is blind to direction,
so it must be read beside a signed statistic), the granulated tau and the average and
robust sign-errors (paper Table 14). The best value of each column is highlighted;
"best" is the largest value except for the sign-errors, where it is the smallest.

The JSON form of the leaderboard is the dict itself (it holds only str, int, float,
None, lists and dicts). ``rich`` is imported only when a rich table is asked for, and
torch never is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

__all__ = ["COLUMNS", "columns", "rows", "rich_table", "to_markdown"]

#: Fixed columns: (column id, header, score path, better). :func:`columns` puts one
#: ("mi_<hp>", "MI(<hp>)", "mi_hparam.<hp>", "high") column per 'against'
#: hyperparameter in front of these, and drops |omega| columns a board does not have.
COLUMNS: list[tuple[str, str, str, str]] = [
    ("gg2", "GG ω2", "mi.2", "high"),
    ("gg1", "GG ω1", "mi.1", "high"),
    ("gg0", "GG ω0", "mi.0", "high"),
    ("gg2_min", "minGG ω2", "mi_min.2", "high"),
    ("gg1_min", "minGG ω1", "mi_min.1", "high"),
    ("tau", "τ", "kendall_tau", "high"),
    ("gtau", "gran. τ", "granulated_kendall", "high"),
    ("sign_error", "SE", "sign_error", "low"),
    ("robust_sign_error", "max SE", "robust_sign_error", "low"),
]
LEGEND = ("GG ωk: sign-MI with the gap at |ω| = k (mean over ω); minGG: minimum over ω; "
          "τ: Kendall's tau with the gap; SE: average sign-error, max SE: robust sign-error")


def _entries(board: dict) -> dict[str, dict]:
    return board.get("leaderboard", {})


def _get(entry: dict, path: str) -> float | None:
    """The value at a score path ("mi.2", "mi_hparam.dropout", "kendall_tau")."""
    head, _, tail = path.partition(".")
    v = entry.get(head)
    if tail:
        v = v.get(tail) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def columns(board: dict) -> list[tuple[str, str, str, str]]:
    """The concrete columns of this board: MI with each 'against' hyperparameter, then
    every fixed column whose score the board has."""
    entries = list(_entries(board).values())
    against = list(board.get("options", {}).get("against") or [])
    for e in entries:
        for h in e.get("mi_hparam", {}):
            if h not in against:
                against.append(h)
    have_k = set()
    for e in entries:
        have_k.update(e.get("mi", {}).keys())
    from genbench.suite import short_names

    names = short_names(against)
    cols = [(f"mi_{h}", f"MI {names[h]}", f"mi_hparam.{h}", "high") for h in against]
    for cid, header, path, better in COLUMNS:
        if path.startswith("mi") and path.split(".", 1)[1] not in have_k:
            continue
        cols.append((cid, header, path, better))
    return cols


def _resolve_sort(cols: list[tuple[str, str, str, str]], sort_by: str) -> tuple[str, str]:
    for cid, _, path, better in cols:
        if sort_by in (cid, path):
            return path, better
    valid = [c[0] for c in cols]
    raise ValueError(f"unknown column {sort_by!r}; sort by one of {valid}")


def rows(board: dict, sort_by: str | None = None) -> list[tuple[str, dict]]:
    """(measure, entry) pairs in display order: the board's order, or sorted by a column
    (best first: descending for "high"-better columns, ascending for "low"; missing
    values last; equal values keep the board's order)."""
    items = list(_entries(board).items())
    if sort_by is None:
        return items
    path, better = _resolve_sort(columns(board), sort_by)
    sign = -1.0 if better == "high" else 1.0

    def key(item: tuple[str, dict]) -> tuple[int, float]:
        v = _get(item[1], path)
        return (1, 0.0) if v is None or not math.isfinite(v) else (0, sign * v)

    return sorted(items, key=key)


def _best(entries: list[dict], path: str, better: str) -> float | None:
    vals = [v for v in (_get(e, path) for e in entries) if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return max(vals) if better == "high" else min(vals)


def _cell(entry: dict, path: str) -> str:
    v = _get(entry, path)
    text = "—" if v is None else f"{v:.3f}"
    ci = entry.get("ci", {}).get(path)
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _is_best(entry: dict, path: str, best: float | None) -> bool:
    v = _get(entry, path)
    return v is not None and best is not None and abs(v - best) <= 1e-12


def _caption(board: dict) -> str:
    o = board.get("options", {})
    if not o:
        return ""
    mi = "MI normalized by H" if o.get("normalize") else f"MI unnormalized (log base {o.get('log_base')})"
    parts = [f"gap: {o.get('gap')}", mi, f"ties: {o.get('tie_rule')}"]
    if o.get("gap_tol"):
        parts.append(f"|Δgap| <= {o.get('gap_tol')} is a tie")
    parts.append(f"cells: {o.get('cell_reduce')}")
    if o.get("bootstrap"):
        parts.append(f"[{o.get('ci_level', 0.95):.0%} bootstrap interval, {o.get('bootstrap')} resamples]")
    return "; ".join(parts) + ".\n" + LEGEND


def rich_table(board: dict, sort_by: str | None = None, title: str | None = None) -> Table:
    """The leaderboard as a rich Table, best value per column in bold green."""
    from rich.table import Table

    cols = columns(board)
    ordered = rows(board, sort_by)
    entries = [e for _, e in ordered]
    if title is None:
        title = f"Generalization measures ({board.get('preset', '?')} preset, {board.get('n_models', '?')} models)"
    from rich import box

    table = Table(title=title, caption=_caption(board) or None, box=box.SIMPLE_HEAD)
    table.add_column("Measure", style="bold", no_wrap=True,
                     min_width=max([len(n) for n, _ in ordered] + [7]))
    table.add_column("n", justify="right")
    for _, header, _, better in cols:
        label = header + (" ↓" if better == "low" else "")
        # "-0.333" stays whole; MI-with-hyperparameter headers keep their name readable
        width = min(len(label), 14) if label.startswith("MI ") else 6
        table.add_column(label, justify="right", no_wrap=False, min_width=width)
    best = {path: _best(entries, path, better) for _, _, path, better in cols}
    for name, e in ordered:
        cells = [name, str(e.get("n_models", ""))]
        for _, _, path, _ in cols:
            text = _cell(e, path)
            cells.append(f"[bold green]{text}[/bold green]" if _is_best(e, path, best[path]) else text)
        table.add_row(*cells)
    return table


def to_markdown(board: dict, sort_by: str | None = None) -> str:
    """The same table as GitHub Markdown, best value per column in bold."""
    cols = columns(board)
    ordered = rows(board, sort_by)
    entries = [e for _, e in ordered]
    best = {path: _best(entries, path, better) for _, _, path, better in cols}

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    header = ["Measure", "n"] + [esc(h) + (" ↓" if b == "low" else "") for _, h, _, b in cols]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---", "---:"] + ["---:"] * len(cols)) + "|"]
    for name, e in ordered:
        cells = [esc(name), str(e.get("n_models", ""))]
        for _, _, path, _ in cols:
            text = _cell(e, path)
            cells.append(f"**{text}**" if _is_best(e, path, best[path]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    caption = _caption(board)
    if caption:
        lines += [""] + [esc(c) for c in caption.split("\n")]
    return "\n".join(lines) + "\n"

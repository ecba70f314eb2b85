"""The report's figures: matplotlib (Agg, no display), one PNG per function.

Each function takes plain data (the report's model dicts and the leaderboard) and a
path, draws one figure and writes it. Colours follow one key (the dropout rate, or the
suite's first grid key) through every figure, so a reader learns the legend once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
                     "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
                     "axes.spines.top": False, "axes.spines.right": False})


def palette(values: list[Any], ordered: bool = False) -> dict[Any, Any]:
    """A colour per distinct value: ordered (viridis) for numbers, categorical otherwise
    (in order of first appearance when ``ordered``, else sorted)."""
    distinct = list(dict.fromkeys(values)) if ordered else sorted(set(values), key=lambda v: (str(type(v)), v))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        cmap = plt.get_cmap("viridis")
        n = max(len(distinct) - 1, 1)
        return {v: cmap(0.9 * i / n) for i, v in enumerate(distinct)}
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(distinct)}


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def _legend(fig: plt.Figure, colours: dict[Any, Any], title: str, marker: str = "o") -> None:
    handles = [plt.Line2D([], [], marker=marker, ls="", color=c, label=str(v))
               for v, c in colours.items()]
    fig.legend(handles=handles, title=title, loc="upper center", ncol=min(len(handles), 8),
               bbox_to_anchor=(0.5, 1.0), frameon=False)


def _grid(n: int, ncols: int = 4, size: tuple[float, float] = (3.0, 2.5)):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.6),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _log_if_wide(ax: plt.Axes, values: np.ndarray, axis: str = "x") -> None:
    v = values[np.isfinite(values)]
    if v.size and (v > 0).all() and v.max() / v.min() > 100:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def measures_vs_gap(models: list[dict], measures: list[str], board: dict[str, dict],
                    colour_key: str, colour_name: str, path: Path) -> None:
    """Small multiples: each measure (x) against the loss gap (y), one point per model;
    hollow points are unconverged models (left out of the scores)."""
    colours = palette([m["hparams"].get(colour_key) for m in models])
    fig, axes = _grid(len(measures))
    gap = np.array([m["gap"] for m in models], dtype=float)
    for ax, name in zip(axes, measures):
        x = np.array([np.nan if m["measures"].get(name) is None else m["measures"][name]
                      for m in models], dtype=float)
        for m, xi, gi in zip(models, x, gap):
            c = colours[m["hparams"].get(colour_key)]
            hollow = m.get("converged") is False
            ax.scatter(xi, gi, s=22, color="none" if hollow else c, edgecolors=c, linewidths=1)
        _log_if_wide(ax, x)
        tau = board.get(name, {}).get("kendall_tau")
        ax.set_title(name + ("" if tau is None else f"  (τ = {tau:+.2f})"))
        ax.set_xlabel("measure value")
        ax.set_ylabel("loss gap")
        missing = int(np.isnan(x).sum())
        if missing:
            ax.text(0.98, 0.02, f"{missing} missing", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=7, color="0.4")
    _legend(fig, colours, colour_name)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _save(fig, path)


def volume_by_condition(conditions: list[str], numeric: list[float] | None,
                        series: dict[str, dict[str, list[float]]], xlabel: str, path: Path) -> None:
    """Per estimator (panel), the volume of each condition: every model as a dot and the
    mean ± sd over its models as a bar. ``series``: estimator -> {line label: values per
    condition, as a list of lists}; numeric: x positions (e.g. dropout rates) or None."""
    fig, axes = _grid(len(series), ncols=2, size=(4.6, 3.2))
    x = np.array(numeric if numeric is not None else range(len(conditions)), dtype=float)
    span = (x.max() - x.min()) if len(x) > 1 else 1.0
    styles = [("o", "-", "C0"), ("s", "--", "C3"), ("^", ":", "C2")]
    for ax, (est, lines) in zip(axes, series.items()):
        for j, (label, per_cond) in enumerate(lines.items()):
            marker, ls, colour = styles[j % len(styles)]
            shift = (j - (len(lines) - 1) / 2) * 0.02 * span
            means, sds = [], []
            for xi, vals in zip(x, per_cond):
                vals = [v for v in vals if v is not None]
                means.append(np.mean(vals) if vals else np.nan)
                sds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
                ax.scatter([xi + shift] * len(vals), vals, s=10, color=colour, alpha=0.35)
            ax.errorbar(x + shift, means, yerr=sds, marker=marker, ls=ls if numeric else "",
                        color=colour, capsize=3, label=label)
        ax.set_title(f"{est} volume")
        ax.set_ylabel("volume per dimension")
        ax.set_xlabel(xlabel)
        if numeric is None:
            ax.set_xticks(x, conditions, rotation=25, ha="right")
        else:
            ax.set_xticks(x)
        if len(lines) > 1:
            ax.legend()
    fig.tight_layout()
    _save(fig, path)


def volume_during_training(curves: dict[Any, dict[int, list[float]]], colours: dict[Any, Any],
                           title: str, path: Path) -> None:
    """The tracked volume against the epoch, per condition (or per value of ``title``, e.g.
    the dropout rate): mean over its models, band = min to max."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for cond, per_epoch in curves.items():
        epochs = sorted(per_epoch)
        vals = [per_epoch[e] for e in epochs]
        mean = [np.mean(v) for v in vals]
        ax.plot(epochs, mean, marker="o", color=colours[cond], label=str(cond))
        ax.fill_between(epochs, [min(v) for v in vals], [max(v) for v in vals],
                        color=colours[cond], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("volume per dimension")
    ax.legend(title=title or None, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def mi_by_omega(board: dict[str, dict], signed: Any, path: Path) -> None:
    """Signed MI with the gap per measure and |omega| (bars), bootstrap intervals as whiskers.
    ``signed(entry, path) -> (value, interval)`` signs MI by the measure's direction."""
    names = list(board)
    ks = sorted({k for e in board.values() for k in (e.get("mi") or {})})
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(names) * max(len(ks), 1) / 2 + 1.4))
    height = 0.8 / max(len(ks), 1)
    y = np.arange(len(names))
    for j, k in enumerate(ks):
        vals, lo, hi = [], [], []
        for n in names:
            v, ci = signed(board[n], f"mi.{k}")
            vals.append(np.nan if v is None else v)
            # a half-sample interval may miss its point estimate (docs/scoring.md): the
            # whisker then stops at the bar; the table prints the interval as it is
            lo.append(0 if v is None or ci is None else max(0.0, v - ci[0]))
            hi.append(0 if v is None or ci is None else max(0.0, ci[1] - v))
        ax.barh(y + (j - (len(ks) - 1) / 2) * height, vals, height=height, xerr=[lo, hi],
                capsize=2, color=plt.get_cmap("Blues")(0.4 + 0.5 * j / max(len(ks) - 1, 1)),
                label=f"|ω| = {k}", error_kw={"lw": 0.8})
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("MI with the gap × sign of Kendall's τ")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(ks), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def pac_s_parts(models: list[dict], measures: list[str], path: Path) -> None:
    """Per PAC-S measure, each model's value split into its two terms (stacked bars),
    models sorted by value: which term drives the ranking."""
    fig, axes = _grid(len(measures), ncols=2, size=(4.8, 3.0))
    for ax, name in zip(axes, measures):
        rows = sorted((m["parts"][name] for m in models if name in (m.get("parts") or {})),
                      key=lambda p: sum(p.values()))
        labels = list(dict.fromkeys(k for p in rows for k in p))
        bottom = np.zeros(len(rows))
        for j, part in enumerate(labels):
            vals = np.array([p.get(part, 0.0) for p in rows], dtype=float)
            ax.bar(np.arange(len(rows)), vals, bottom=bottom, width=0.85, label=part.replace("_", " "),
                   color=f"C{j}")
            bottom += vals
        ax.set_title(name)
        ax.set_xlabel("models, sorted by value")
        ax.set_ylabel("nats")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def train_loss(models: list[dict], target: float | None, colour_key: str, colour_name: str,
               path: Path) -> None:
    """Training loss (eval mode) per epoch for every model, log scale, the target dashed;
    a dot marks each model's final loss (hollow: unconverged)."""
    colours = palette([m["hparams"].get(colour_key) for m in models])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for m in models:
        c = colours[m["hparams"].get(colour_key)]
        hist = [(e["epoch"], e["train_loss"]) for e in m.get("history") or [] if "train_loss" in e]
        if hist:
            ax.plot(*zip(*hist), color=c, lw=0.8, alpha=0.7)
        hollow = m.get("converged") is False
        ax.scatter([m["epochs"]], [m["train_loss"]], s=18, color="none" if hollow else c,
                   edgecolors=c, zorder=3)
    if target is not None:
        ax.axhline(target, color="crimson", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], target, f" target {target:g}", color="crimson",
                va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("train cross-entropy (eval mode)")
    handles = [plt.Line2D([], [], color=c, label=str(v)) for v, c in colours.items()]
    ax.legend(handles=handles, title=colour_name, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    fig.tight_layout()
    _save(fig, path)


def group_curves(models: list[dict], condition: Any) -> dict[Any, dict[int, list[float]]]:
    """condition(model) -> epoch -> the tracked vol/dim values of its models."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in models:
        for e in m.get("history") or []:
            vol = e.get("volume")
            if isinstance(vol, dict) and vol.get("vol_per_dim_mean") is not None:
                out[condition(m)][e["epoch"]].append(vol["vol_per_dim_mean"])
    return {k: dict(v) for k, v in out.items()}

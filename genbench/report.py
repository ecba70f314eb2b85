"""`genbench report`: stored runs as the document a researcher shares.

Writes ``report.md``, one self-contained ``report.html`` (figures inlined as base64
PNG, no external reference) and the figures as PNG files, from the store alone:
provenance, the leaderboard, figures, and a computed verdict for each of the paper's
findings (rule in :mod:`genbench.findings`). Every section is there when the run has
what it needs and says "not in this suite" (or "not in this run") otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import sqlite3
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from genbench import findings as fnd
from genbench.leaderboard import interval_label

Progress = Callable[[str, int], Callable[[str], None]]
DEFAULT_BOOTSTRAP = 200  # intervals on the leaderboard when the suite asks for none


class ReportError(ValueError):
    """Bad input to the report, one line naming the option and the fix."""


# -- the store: which runs, and what they hold ------------------------------------------------
def stored_runs(store: str | Path) -> list[dict[str, Any]]:
    """Every finished run in a store, oldest first: id, suite, created, suite_json, model_keys, summary."""
    db = Path(store) / "genbench.sqlite"
    if not db.exists():
        raise ReportError(f"--store {store}: no genbench store there; run `genbench run --store {store}` first")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    finally:
        con.close()
    return [{"id": r["id"], "suite": r["suite"], "created": r["created"],
             "suite_json": json.loads(r["suite_json"]), "model_keys": json.loads(r["model_keys"]),
             "summary": json.loads(r["summary"]) if r["summary"] else None} for r in rows]


def pick_runs(runs: list[dict[str, Any]], ids: list[int] | None, store: str | Path) -> list[dict]:
    """The runs asked for, or by default the last finished run of each suite in the store."""
    if not runs:
        raise ReportError(f"--store {store}: no run recorded; run `genbench run --store {store}` first")
    by_id = {r["id"]: r for r in runs}
    if ids:
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ReportError(f"--run {missing[0]}: no such run in {store}; its runs are "
                              f"{', '.join(str(r['id']) for r in runs)}")
        return [by_id[i] for i in dict.fromkeys(ids)]
    last: dict[str, dict] = {}
    for r in runs:
        if r["summary"] is not None:
            last.pop(r["suite"], None)
            last[r["suite"]] = r
    if not last:
        raise ReportError(f"--store {store}: no run finished; rerun `genbench run --store {store}`")
    return sorted(last.values(), key=lambda r: r["id"])


def check_out(out: str | Path) -> Path:
    """Create ``out`` and prove it writable, before any work."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".genbench-report-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write there ({exc.strerror or exc}); "
                          "choose a writable directory") from None
    return path


@dataclass
class RunData:
    """One run as the report reads it: the run JSON and the store records behind it."""

    row: dict[str, Any]
    suite: Any
    result: dict[str, Any]
    models: list[dict[str, Any]]             # the run JSON's rows, enriched (see load_run)
    failed: list[dict[str, Any]]             # store rows of models that failed to train
    volume_sources: dict[str, str] = field(default_factory=dict)
    provenance: list[dict[str, str]] = field(default_factory=list)
    measure_seconds: dict[str, float] = field(default_factory=dict)
    slug: str = ""


def load_run(store: str | Path, row: dict[str, Any], bootstrap: int | None = None,
             registry: Any = None) -> RunData:
    """Rebuild one run's JSON from stored records (as `genbench leaderboard` does for the
    last run) and add what the figures need: training history, volumes, provenance."""
    from genbench import runner
    from genbench.plugins import get_registry
    from genbench.store import Store
    from genbench.suite import Suite

    registry = registry or get_registry()
    suite = Suite(**row["suite_json"])
    keys = row["model_keys"]
    if bootstrap is None:
        bootstrap = suite.scoring.bootstrap or DEFAULT_BOOTSTRAP
    with Store(store) as st:
        rows = runner.collect(st, suite, keys, registry)
        board = runner.score_rows(rows, suite, bootstrap=bootstrap) if len(rows) >= 3 else None
        result = runner.build_result(suite, str(st.root), row["summary"] or {}, rows, board)
        stored = {m["key"]: m for m in st.models(keys)}
        results = st.results(model_keys=keys)
    run = RunData(row=row, suite=suite, result=result, models=result["models"],
                  failed=[m for m in stored.values() if m["status"] == "failed"])
    volumes = _volumes(results, suite, registry)
    for m in run.models:
        s = stored[m["key"]]
        m["history"] = (s["metrics"] or {}).get("history", [])
        m["volume"], m["volume_noise_off"] = {}, {}
        for est, data in volumes.get(m["key"], {}).items():
            m["volume"][est] = data.get("vol_per_dim_mean")
            off = data.get("noise_off")
            if isinstance(off, dict) and off.get("vol_per_dim_mean") is not None:
                m["volume_noise_off"][est] = off["vol_per_dim_mean"]
            run.volume_sources[est] = "final weights"
        tracked = _tracked_final(m)
        if tracked and tracked[0] not in m["volume"]:
            m["volume"][tracked[0]] = tracked[1]
            run.volume_sources.setdefault(tracked[0], "tracked during training, last epoch")
    _fill_noise_off(run.models)
    prov = [p for m in stored.values() for p in m["provenance"]] + [r["provenance"] for r in results]
    run.provenance = list({json.dumps(p, sort_keys=True): p for p in prov if isinstance(p, dict)}.values())
    for r in results:
        if r["kind"] == "measure" and r["name"] in suite.measures and r["seconds"]:
            run.measure_seconds[r["name"]] = run.measure_seconds.get(r["name"], 0.0) + r["seconds"]
    return run


def _fill_noise_off(models: list[dict]) -> None:
    """An estimate stored without ``noise_off`` had no noise in its factors (no noise
    regularizer bound), so its noise-off value is the value itself: the undropped twins
    then anchor the noise-off line and the estimator-share finding. Only for estimators
    that give ``noise_off`` somewhere in the run."""
    with_off = {e for m in models for e in m["volume_noise_off"]}
    for m in models:
        for e in with_off:
            if e not in m["volume_noise_off"] and m["volume"].get(e) is not None:
                m["volume_noise_off"][e] = m["volume"][e]


def _volumes(results: list[dict], suite: Any, registry: Any) -> dict[str, dict[str, dict]]:
    """model key -> estimator -> the stored volume estimate made with the suite's params and
    the estimator's current version (the newest such row)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    wanted: dict[str, tuple[dict, str] | None] = {}
    for r in results:
        if r["kind"] != "volume" or r["error"] is not None or not isinstance(r["data"], dict):
            continue
        name = r["name"]
        if name not in wanted:
            try:
                cls = registry.get("volume_estimator", name).cls
                wanted[name] = (cls.Params(**suite.volume.get(name, {})).identity(), str(cls.version))
            except Exception:  # noqa: BLE001 - an estimator no longer installed: not shown
                wanted[name] = None
        want = wanted[name]
        if want and r["params"] == want[0] and str(r["provenance"].get("version")) == want[1]:
            out[r["model_key"]][name] = r["data"]  # results come oldest first
    return out


def _tracked_final(model: dict) -> tuple[str, float] | None:
    """(estimator, vol/dim) tracked at the model's last epoch, if it was."""
    for e in reversed(model["history"]):
        vol = e.get("volume")
        if isinstance(vol, dict) and vol.get("vol_per_dim_mean") is not None:
            if e.get("epoch") == model["epochs"]:
                return vol.get("estimator", "laplace"), vol["vol_per_dim_mean"]
            return None
    return None


# -- the document: blocks rendered to Markdown and HTML ------------------------------------------
@dataclass
class Doc:
    """A list of blocks: ("h", level, text), ("p", text), ("list", items),
    ("table", header, rows), ("figure", path, caption)."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def list(self, items: list[str]) -> None:
        self.blocks.append(("list", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", path, caption))


def to_markdown(doc: Doc, base: Path) -> str:
    out = []
    for b in doc.blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            def cell(text: str) -> str:
                return str(text).replace("|", "\\|")
            lines = ["| " + " | ".join(cell(h) for h in b[1]) + " |",
                     "|" + "|".join(["---"] * len(b[1])) + "|"]
            lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]]
            out.append("\n".join(lines))
        elif b[0] == "figure":
            rel = os.path.relpath(b[1], base).replace(os.sep, "/")
            out.append(f"![{Path(b[1]).stem}]({rel})\n\n*{b[2]}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """HTML for one line of text: escaped, **bold** and `code` kept."""
    t = html.escape(str(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


CSS = """body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1100px;
margin:24px auto;padding:0 16px;color:#1a1a1a;line-height:1.45;font-size:15px}
h1{font-size:26px}h2{font-size:21px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{font-size:17px;margin-top:26px}table{border-collapse:collapse;margin:10px 0;font-size:12px}
.wide{overflow-x:auto}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}figure{margin:14px 0}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#444;margin-top:4px}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:13px}
.holds{color:#116611;font-weight:bold}.refuted{color:#b00020;font-weight:bold}
.inconclusive{color:#8a6d00;font-weight:bold}.ci{font-size:11px;color:#555;white-space:nowrap}"""


def to_html(doc: Doc, title: str) -> str:
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{CSS}</style></head><body>"]
    for b in doc.blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in r)
                           + "</tr>" for r in b[2])
            out.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}"
                       "</tbody></table></div>")
        elif b[0] == "figure":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(Path(b[1]).stem)}' "
                       f"src='data:image/png;base64,{data}'><figcaption>{_inline(b[2])}"
                       "</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _cell_html(cell: str) -> str:
    """A table cell: a verdict in its colour; a number's interval on its own smaller line."""
    text = _inline(cell)
    text = re.sub(r"<b>(holds|refuted|inconclusive)</b>", r"<span class='\1'>\1</span>", text)
    return re.sub(r"^(<b>)?(\S+) (\[[^\]]+\])(</b>)?$",
                  lambda m: f"{m[1] or ''}{m[2]}<br><span class='ci'>{m[3]}</span>{m[4] or ''}", text)


# -- formatting helpers ---------------------------------------------------------------------------
def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def _names(run: RunData) -> dict[str, str]:
    from genbench.suite import short_names

    return short_names(run.suite.hyperparameters())


def colour_key(run: RunData) -> str | None:
    """The dropout rate when the grid varies it, else the suite's first grid key."""
    hps = run.suite.hyperparameters()
    return next((h for h in hps if fnd.regularizer_of(h) == "dropout"), hps[0] if hps else None)


def condition(run: RunData) -> Callable[[dict], str]:
    """A model's training condition: its regularizer settings that are on ('none' if all off)."""
    names = _names(run)

    def label(m: dict) -> str:
        on = [f"{names[k]}={v}" for k, v in m["hparams"].items()
              if fnd.regularizer_of(k) is not None and not fnd.is_off(v)]
        return ", ".join(on) or "none"

    return label


def condition_axis(run: RunData, models: list[dict]) -> tuple[Callable[[dict], Any], list, bool, str]:
    """How the volume figures group models: (level of a model, levels, numeric?, axis label).
    By the dropout rate when it is the only regularizer the grid varies, else by condition."""
    names = _names(run)
    dkey = fnd.dropout_key(models)
    reg_keys = {k for m in models for k in m["hparams"] if fnd.regularizer_of(k)}
    if dkey and reg_keys == {dkey}:
        return (lambda m: m["hparams"][dkey]), sorted({m["hparams"][dkey] for m in models}), True, names[dkey]
    label = condition(run)
    return label, list(dict.fromkeys(label(m) for m in models)), False, "training condition"


def scored(run: RunData) -> list[dict]:
    """The models the scores (and the findings) use: unconverged ones left out unless the
    suite includes them."""
    include = getattr(run.suite.scoring, "include_unconverged", False)
    return [m for m in run.models if include or m.get("converged") is not False]


def left_out_note(run: RunData) -> str:
    """One sentence: how many unconverged models the scores and findings leave out."""
    n = len(run.models) - len(scored(run))
    if not any("converged" in m for m in run.models):
        return "No model left out (the convergence flag is not in this run)."
    return f"{n} unconverged model{'s' if n != 1 else ''} left out." if n else "No model left out."


# -- sections -------------------------------------------------------------------------------
def provenance(doc: Doc, run: RunData) -> None:
    s, res, summary = run.suite, run.result, run.row["summary"] or {}
    digest = hashlib.sha256(json.dumps(run.row["suite_json"], sort_keys=True).encode()).hexdigest()
    conv = [m.get("converged") for m in run.models]
    converged = (f"{sum(c is True for c in conv)} converged" if any(c is not None for c in conv)
                 else "convergence: not in this run")
    versions = summary.get("versions") or {}
    # Shared quantities (sigma, alpha) are genbench's own: no plugin, kind "shared".
    plugins = sorted({(p["plugin"], p.get("plugin_version", "?")) for p in run.provenance
                      if p.get("plugin")})
    components = sorted({f"{p.get('kind') or 'shared'}:{p.get('name')} v{p.get('version')}"
                         for p in run.provenance})
    stages = summary.get("stage_seconds")
    stage_text = (", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) if stages
                  else "per stage: not in this run")
    measure_time = ", ".join(f"{n} {sec:.1f} s" for n, sec in run.measure_seconds.items())
    doc.h(3, "Provenance")
    doc.list([
        f"suite **{s.name}** ({s.description or 'no description'}); suite hash `{digest[:16]}`; "
        f"run {run.row['id']} of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(run.row['created']))}",
        f"seeds: {', '.join(map(str, s.seeds))}; grid: "
        + (", ".join(f"{_names(run)[h]} {_grid_values(run, h)}" for h in s.hyperparameters()) or "none"),
        f"models: {len(run.row['model_keys'])} in the run, {len(run.models)} trained, "
        f"{len(run.failed)} failed, {converged}",
        f"versions: genbench {versions.get('genbench', _version('genbench') + ' (at report time)')}, "
        f"torch {versions.get('torch', _version('torch') + ' (at report time)')}; plugins: "
        + ", ".join(f"{n} {v}" for n, v in plugins),
        "components: " + ", ".join(components),
        f"device: {summary.get('device', 'not in this run')}",
        f"wall time: {summary.get('seconds', 'n/a')} s in all ({stage_text})"
        + (f"; stored measure seconds, summed over models: {measure_time}" if measure_time else ""),
    ])
    for m in run.failed[:5]:
        doc.p(f"Failed model `{m['key'][:10]}` ({_hp_text(run, m['hparams'])}): "
              f"{(m['error'] or '').splitlines()[0] if m['error'] else 'no error recorded'}")


def _grid_values(run: RunData, key: str) -> str:
    vals = list(dict.fromkeys(p.get(key) for p in run.suite.grid_points()))
    return "{" + ", ".join(map(str, vals)) + "}"


def _hp_text(run: RunData, hparams: dict) -> str:
    names = _names(run)
    return ", ".join(f"{names.get(k, k)}={v}" for k, v in hparams.items())


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def leaderboard_table(doc: Doc, run: RunData) -> None:
    from genbench import leaderboard as lb

    doc.h(3, "Leaderboard")
    board = {**run.result.get("scoring", {}), "leaderboard": run.result.get("leaderboard", {})}
    if not board["leaderboard"]:
        doc.p("Leaderboard: not in this run (fewer than 3 trained models).")
        return
    shown = lb.columns(board, wide=True)
    cols = [(c.id, c.header, c.path, c.better) for c in shown]
    entries = board["leaderboard"]
    values = {n: {path: fnd.signed(e, path) for _, _, path, _ in cols} for n, e in entries.items()}
    best = {}
    for _, _, path, better in cols:
        vals = [v[path][0] for v in values.values() if v[path][0] is not None]
        best[path] = (max(vals) if better == "high" else min(vals)) if vals else None
    rows = []
    for name, e in entries.items():
        cells = [name, str(e.get("n_models", "")), _direction(e)]
        for _, _, path, _ in cols:
            v, ci = values[name][path]
            text = _num(v) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")
            cells.append(f"**{text}**" if v is not None and v == best[path] else text)
        rows.append(cells)
    doc.table(["measure", "n", "dir"] + [h + (" ↓" if b == "low" else "") for _, h, _, b in cols], rows)
    o = board.get("options", {})
    notes = board.get("notes") or {}
    doc.p(f"Preset `{board.get('preset')}`; gap: {o.get('gap')}; MI "
          f"{'normalized' if o.get('normalize') else 'unnormalized'}; ties: {o.get('tie_rule')}; "
          f"{_interval_text(o)}. {left_out_note(run)} MI columns (GG ωk, minGG) are signed by the "
          "measure's direction with the gap (dir: sign of Kendall's τ), so a measure that ranks "
          "models backwards reads below 0; the best value of each column is bold. "
          + " ".join(f"{c.header}: {c.legend}." for c in shown) + "".join(f" {k}: {v}." for k, v in notes.items()))


def _interval_text(o: dict) -> str:
    return f"[{interval_label(o)}]" if o.get("bootstrap") else "intervals: not in this run (bootstrap 0)"


def _direction(entry: dict) -> str:
    d = entry.get("direction")
    if d is None:
        tau = entry.get("kendall_tau")
        d = None if tau is None else (tau > 0) - (tau < 0)
    return {1: "+", -1: "−", 0: "0", None: "n/a"}[d]


def figure_sections(doc: Doc, run: RunData, out: Path, advance: Callable[[str], None]) -> int:
    """Every figure the run has data for; returns how many were drawn."""
    from genbench import figures as fg

    names = _names(run)
    ckey = colour_key(run)
    cname = names.get(ckey, "model") if ckey else "model"
    models = run.models
    board = run.result.get("leaderboard", {})
    measures = list(run.suite.measures)
    drawn = 0
    doc.h(3, "Figures")

    def path(name: str) -> Path:
        return out / f"{run.slug}-{name}.png"

    # 1. each measure against the gap
    if measures and models:
        p = path("measures-vs-gap")
        fg.measures_vs_gap(models, measures, board, ckey, cname, p)
        n_unconv = sum(m.get("converged") is False for m in models)
        doc.figure(p, f"Each measure against the loss gap (test - train cross-entropy), one point per "
                   f"model ({len(models)} models), coloured by {cname}; τ: Kendall's tau with the gap "
                   f"on the scored models. " + (f"Hollow: {n_unconv} unconverged (left out of the "
                                               "scores). " if n_unconv else "")
                   + "Log x axis where a measure spans more than two decades.")
        drawn += 1
    else:
        doc.p("Measures against the gap: not in this suite (no measure or no trained model).")
    advance("measures vs gap")

    # 2. volume by condition (the dropout rate), per estimator
    drawn += _volume_figure(doc, run, path("volume"), fg)
    advance("volume")

    # 3. volume during training (Figure 2)
    key_of, levels, numeric, xlabel = condition_axis(run, models)
    curves = fg.group_curves(models, key_of)
    if curves:
        p = path("volume-training")
        curves = {lv: curves[lv] for lv in levels if lv in curves}
        fg.volume_during_training(curves, fg.palette(list(curves), ordered=not numeric),
                                  xlabel if numeric else "", p)
        est = {e.get("volume", {}).get("estimator") for m in models for e in m["history"]
               if isinstance(e.get("volume"), dict)} - {None}
        doc.figure(p, f"Weight volume during training ({', '.join(sorted(est)) or 'tracked'} "
                   "estimator, per-dimension volume, mean over layers), per training condition: line = "
                   "mean over the condition's models (seeds and other grid values), band = min to max "
                   "(the paper's Figure 2).")
        drawn += 1
    else:
        doc.p("Volume during training: not in this suite (`[train.track_volume]` not set).")
    advance("volume during training")

    # 4. MI with the gap per measure and |omega|
    if board:
        p = path("mi")
        fg.mi_by_omega(board, fnd.signed, p)
        o = run.result.get("scoring", {}).get("options", {})
        doc.figure(p, f"MI with the loss gap per measure and |ω| (mean over the conditioning subsets), "
                   f"signed by the sign of Kendall's τ; whiskers: {_interval_text(o)}. "
                   f"{left_out_note(run)}")
        drawn += 1
    else:
        doc.p("MI per measure: not in this run (no leaderboard).")
    advance("MI")

    # 5. PAC-S split into its two terms
    pac = [n for n in measures if any(n in (m.get("parts") or {}) for m in models)]
    if pac:
        p = path("pac-s-parts")
        fg.pac_s_parts(models, pac, p)
        doc.figure(p, "PAC-S values split into their two terms, one bar per model, sorted by value: "
                   "sharpness term sum ||W^F - W^0||^2 / (2 σ^2) and volume term sum_l -log vol_l "
                   "(nats). The taller term drives the ranking. " + _share_text(models, pac))
        drawn += 1
    else:
        has_pac = any(n.startswith("pac_s") for n in measures)
        doc.p("PAC-S terms: " + ("not in this run (the values were stored without their parts)."
                                 if has_pac else "not in this suite (no PAC-S measure)."))
    advance("PAC-S parts")

    # 6. training loss with the convergence target
    if models:
        p = path("train-loss")
        target = run.suite.train.stop_train_loss
        fg.train_loss(models, target, ckey, cname, p)
        below = sum(m["train_loss"] <= target for m in models) if target else None
        doc.figure(p, "Training cross-entropy (eval mode) per epoch, one line per model, coloured by "
                   f"{cname}; dot: final value" + (", hollow if unconverged" if any(
                       m.get("converged") is False for m in models) else "") + ". "
                   + (f"Dashed: the convergence target stop_train_loss = {target:g}; {below} of "
                      f"{len(models)} models end at or below it." if target else
                      "The suite sets no loss target (every model trains to max_epochs)."))
        drawn += 1
    advance("training loss")
    return drawn


def _share_text(models: list[dict], pac: list[str]) -> str:
    out = []
    for n in pac:
        shares = [p["volume_term"] / sum(p.values()) for m in models
                  if (p := (m.get("parts") or {}).get(n)) and "volume_term" in p and sum(p.values())]
        if shares:
            out.append(f"{n}: the volume term is a median {statistics.median(shares):.1%} of the value")
    return "; ".join(out) + ("." if out else "")


def _volume_figure(doc: Doc, run: RunData, p: Path, fg: Any) -> int:
    models = scored(run)
    ests = fnd.estimators(models)
    if not ests:
        doc.p("Weight volume by condition: not in this suite (no volume estimate stored: add a "
              "measure that reads one, e.g. pac_s_laplace, or `[train.track_volume]`).")
        return 0
    key_of, levels, numeric, xlabel = condition_axis(run, models)
    labels = levels
    series: dict[str, dict[str, list[list[float]]]] = {}
    for e in ests:
        lines = {"factor noise on" if any(e in m["volume_noise_off"] for m in models) else e:
                 [[m["volume"].get(e) for m in models if key_of(m) == lv] for lv in levels]}
        if any(e in m["volume_noise_off"] for m in models):
            lines["factor noise off"] = [[m["volume_noise_off"].get(e) for m in models
                                          if key_of(m) == lv] for lv in levels]
        series[e] = lines
    fg.volume_by_condition([str(x) for x in labels], levels if numeric else None, series, xlabel, p)
    per = {lv: sum(key_of(m) == lv for m in models) for lv in levels}
    src = "; ".join(f"{e}: {run.volume_sources.get(e, 'final weights')}" for e in ests)
    doc.figure(p, f"Weight volume (per-dimension volume, mean over layers) by {xlabel}, per estimator "
               f"({src}). Dots: models; markers and bars: mean ± sd over the models of each "
               f"{'rate' if numeric else 'condition'} ({', '.join(f'{k}: {v}' for k, v in per.items())} "
               "models, pooling seeds and the other grid values). "
               + ("Laplace with its dropout noise in the factors on and off: the gap between the two "
                  "lines is the estimator's share. " if any(m["volume_noise_off"] for m in models)
                  else "Factor noise off: not in this run. ") + left_out_note(run))
    return 1


def findings_section(doc: Doc, run: RunData) -> list[fnd.Finding]:
    board = run.result.get("leaderboard", {})
    against = run.result.get("scoring", {}).get("options", {}).get("against") or run.suite.against()
    found = fnd.all_findings(scored(run), board, against)
    doc.h(3, "Findings")
    rows = []
    for f in found:
        if f.verdict is None:
            rows.append([f.claim, f"not in this suite: {f.why}", "—"])
        else:
            numbers = "; ".join(f"{p.label}: {p.numbers} → {p.verdict}" for p in f.parts)
            rows.append([f.claim, numbers + (f" ({f.note})" if f.note else ""), f"**{f.verdict}**"])
    doc.table(["claim (science.md section 6)", "numbers behind it", "verdict"], rows)
    doc.p(f"On {len(scored(run))} models. {left_out_note(run)} The rule:")
    doc.list(fnd.RULE)
    return found


# -- the report --------------------------------------------------------------------------------
def _quiet(stage: str, total: int) -> Callable[[str], None]:
    return lambda description: None


def report(store: str | Path = ".genbench", runs: list[int] | None = None,
           out: str | Path = "report", bootstrap: int | None = None,
           progress: Progress | None = None, markdown: str | Path | None = None,
           title: str | None = None, preamble: str = "") -> dict[str, Any]:
    """Write the report of ``runs`` (default: the last run of each suite in ``store``) to
    ``out``: report.md (or ``markdown``), report.html and the PNG figures. Returns the paths
    and the verdicts. ``bootstrap``: resamples for the leaderboard's intervals (default: the
    suite's, or 200 when it sets none, since verdicts on rankings need intervals)."""
    chosen = pick_runs(stored_runs(store), runs, store)
    out = check_out(out)
    md_path = Path(markdown) if markdown is not None else out / "report.md"
    if markdown is not None:
        check_out(md_path.parent)
    advance = (progress or _quiet)("report", 8 * len(chosen) + 1)
    loaded = []
    for row in chosen:
        advance(f"loading run {row['id']} ({row['suite']})")
        run = load_run(store, row, bootstrap)
        clash = sum(r["suite"] == row["suite"] for r in chosen) > 1
        run.slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", row["suite"]) + (f"-run{row['id']}" if clash else "")
        loaded.append(run)
    title = title or "genbench report: " + ", ".join(r.suite.name for r in loaded)
    doc = Doc()
    doc.h(1, title)
    if preamble:
        doc.p(preamble)
    doc.p(f"Generated by `genbench report` from the store `{store}` "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Every number and verdict below "
          "is computed from stored records; none is typed by hand.")
    side_by_side = len(loaded) > 1
    if side_by_side:
        doc.h(2, "Findings side by side")
        marker = len(doc.blocks)
    figures = 0
    results: dict[str, Any] = {"runs": [], "figures": []}
    for run in loaded:
        doc.h(2, f"{run.suite.name} (run {run.row['id']})")
        provenance(doc, run)
        leaderboard_table(doc, run)
        n_before = len([b for b in doc.blocks if b[0] == "figure"])
        figures += figure_sections(doc, run, out, advance)
        results["figures"] += [str(b[1]) for b in doc.blocks[n_before:] if b[0] == "figure"]
        found = findings_section(doc, run)
        advance(f"findings of {run.suite.name}")
        results["runs"].append({"id": run.row["id"], "suite": run.suite.name,
                                "findings": {f.id: f.verdict for f in found}})
    if side_by_side:
        doc.blocks[marker:marker] = [_side_by_side(results["runs"], loaded)]
    results["figures"] = sorted({str(b[1]) for b in doc.blocks if b[0] == "figure"})
    md_path.write_text(to_markdown(doc, md_path.parent))
    (out / "report.html").write_text(to_html(doc, title))
    advance("written")
    results.update({"markdown": str(md_path), "html": str(out / "report.html")})
    return results


def _side_by_side(runs: list[dict], loaded: list[RunData]) -> tuple:
    claims = {f.id: f.claim for f in fnd.all_findings([], {}, [])}
    header = ["claim"] + [f"{r['suite']} (run {r['id']})" for r in runs]
    rows = [[claims[fid]] + [f"**{r['findings'][fid]}**" if r["findings"].get(fid) else "not in this suite"
                             for r in runs] for fid in claims]
    return ("table", header, rows)

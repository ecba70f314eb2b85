"""The paper's findings (science.md section 6) as computed verdicts: holds, refuted, inconclusive.

Pure functions of plain data (no store, no torch), so the rule can be tested on
synthetic populations whose truth is known. A *population* is a list of model dicts::

    {"hparams": {grid key: value}, "seed": int, "gap": float, "test_loss": float,
     "volume": {estimator: vol/dim or None}, "volume_noise_off": {estimator: vol/dim}}

The rule (stated in every report, see :data:`RULE`): an effect is a mean over matched
units with a 95% Student-t interval over the units. A unit is a model minus its *twin*
(same seed and same other hyperparameters, every regularizer off), or, for a trend, the
least-squares slope within a group of models that differ only in the dropout rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOLDS, REFUTED, INCONCLUSIVE = "holds", "refuted", "inconclusive"
LEVEL = 0.95
#: "Barely changes" means within this fraction of dropout's mean volume change in the same run.
BARELY = 0.25

RULE = [
    "Each effect is a mean over matched units with a 95% Student-t interval over the units. A unit "
    "is one model minus its twin (the model of the same seed and the same other hyperparameters with "
    "every regularizer off) or, for a trend, the least-squares slope within one group of models that "
    "differ only in the dropout rate.",
    "A directional claim **holds** when the interval excludes 0 on the side the paper predicts, is "
    "**refuted** when it excludes 0 on the other side, and is **inconclusive** otherwise or with "
    "fewer than 2 units.",
    f"\"Barely changes\" holds when the interval lies inside ±δ, δ = {BARELY:g} × dropout's mean "
    "volume change in the same run, is refuted when it lies wholly outside ±δ, inconclusive otherwise.",
    "\"Highest MI\" compares the best PAC-S measure P with the best other measure O (MI with the gap "
    "signed by Kendall's τ, so a measure that ranks backwards scores below 0): holds when P leads and "
    "P's bootstrap interval lies above O's value, refuted when O leads and P's interval lies below "
    "O's value, inconclusive otherwise or without intervals; \"lowest sign-error\" likewise, reversed.",
    "A claim with several parts (levels, |ω|, estimators) holds when every part holds, is refuted "
    "when any part is refuted, and is inconclusive otherwise.",
]


@dataclass(frozen=True)
class Effect:
    """Mean of ``n`` units with a two-sided t interval (None when n < 2)."""

    n: int
    mean: float
    lo: float | None
    hi: float | None

    def text(self, digits: int = 4) -> str:
        if self.n == 0:
            return "no units"
        ci = "" if self.lo is None else f" [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"
        return f"{self.mean:+.{digits}f}{ci} (n={self.n})"


@dataclass
class Part:
    """One tested piece of a claim: what was compared, the number, its verdict."""

    label: str
    numbers: str
    verdict: str


@dataclass
class Finding:
    """A claim of the paper and what this run says about it. ``verdict`` is None when the
    suite cannot test it (``why`` says what is missing)."""

    id: str
    claim: str
    verdict: str | None = None
    parts: list[Part] = field(default_factory=list)
    why: str = ""
    note: str = ""


# -- statistics -------------------------------------------------------------------------
def mean_interval(values: list[float], level: float = LEVEL) -> Effect:
    """Mean and Student-t interval of the mean (exact under normal units; the usual choice
    for a handful of seeds, where a bootstrap interval is far too narrow)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return Effect(0, math.nan, None, None)
    mean = sum(vals) / n
    if n < 2:
        return Effect(n, mean, None, None)
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Effect(n, mean, mean - half, mean + half)


def direction_verdict(effect: Effect, expected: int) -> str:
    """holds / refuted / inconclusive for a claim that the effect has sign ``expected``."""
    if effect.lo is None:
        return INCONCLUSIVE
    if effect.lo > 0 or effect.hi < 0:
        return HOLDS if (1 if effect.lo > 0 else -1) == expected else REFUTED
    return INCONCLUSIVE


def equivalence_verdict(effect: Effect, margin: float) -> str:
    """holds when the interval lies inside ±margin, refuted when wholly outside it."""
    if effect.lo is None or not math.isfinite(margin) or margin <= 0:
        return INCONCLUSIVE
    if -margin < effect.lo and effect.hi < margin:
        return HOLDS
    if effect.lo > margin or effect.hi < -margin:
        return REFUTED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """Every part holds -> holds; any part refuted -> refuted; else inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if REFUTED in verdicts:
        return REFUTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# -- matching models to their twins ---------------------------------------------------------
def regularizer_of(key: str) -> str | None:
    """'regularizers.dropout.rate' -> 'dropout'; None for a key that is no regularizer's."""
    parts = key.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "regularizers" else None


def is_off(value: Any) -> bool:
    return value in (0, 0.0, False, None)


def treatments(models: list[dict]) -> dict[str, list[str]]:
    """Regularizer name -> its grid keys, for the regularizers the population switches on."""
    out: dict[str, list[str]] = {}
    for m in models:
        for k, v in m["hparams"].items():
            reg = regularizer_of(k)
            if reg is not None and not is_off(v):
                out.setdefault(reg, [])
                if k not in out[reg]:
                    out[reg].append(k)
    return out


def _reg_keys(models: list[dict]) -> set[str]:
    return {k for m in models for k in m["hparams"] if regularizer_of(k) is not None}


def _context(m: dict, skip: set[str]) -> tuple:
    return (m["seed"], tuple(sorted((k, repr(v)) for k, v in m["hparams"].items() if k not in skip)))


def paired_changes(models: list[dict], regs: set[str], quantity: Callable[[dict], float | None],
                   ) -> dict[str, list[float]]:
    """Per level of the treatment (e.g. 'dropout.rate=0.3'), quantity(model) - quantity(twin)
    over every model that has one of ``regs`` on and every other regularizer off."""
    reg_keys = _reg_keys(models)
    twins = {}
    for m in models:
        if all(is_off(m["hparams"].get(k)) for k in reg_keys):
            twins[_context(m, reg_keys)] = m
    out: dict[str, list[float]] = defaultdict(list)
    for m in models:
        on = {k for k in reg_keys if not is_off(m["hparams"].get(k))}
        if not on or not {regularizer_of(k) for k in on} <= regs:
            continue
        twin = twins.get(_context(m, reg_keys))
        a, b = quantity(m), (quantity(twin) if twin is not None else None)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        level = ", ".join(f"{'.'.join(k.split('.')[1:])}={m['hparams'][k]}" for k in sorted(on))
        out[level].append(a - b)
    return dict(sorted(out.items()))


def slopes(models: list[dict], key: str, quantity: Callable[[dict], float | None]) -> list[float]:
    """Least-squares slope of quantity on hparams[key], within each group of models that share
    the seed and every other hyperparameter, other regularizers off (groups of >= 2 levels)."""
    reg_keys = _reg_keys(models) - {key}
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for m in models:
        if key not in m["hparams"] or not all(is_off(m["hparams"].get(k)) for k in reg_keys):
            continue
        q = quantity(m)
        if q is not None and math.isfinite(q):
            groups[_context(m, {key})].append((float(m["hparams"][key]), q))
    out = []
    for pts in groups.values():
        xs = [x for x, _ in pts]
        if len(set(xs)) < 2:
            continue
        mx, my = sum(xs) / len(xs), sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x in xs)
        out.append(sum((x - mx) * (y - my) for x, y in pts) / sxx)
    return out


# -- quantities ---------------------------------------------------------------------------
def volume_of(estimator: str, noise_off: bool = False) -> Callable[[dict], float | None]:
    field_ = "volume_noise_off" if noise_off else "volume"
    return lambda m: (m.get(field_) or {}).get(estimator)


def gap(m: dict) -> float | None:
    return m.get("gap")


def test_loss(m: dict) -> float | None:
    return m.get("test_loss")


def estimators(models: list[dict], noise_off: bool = False) -> list[str]:
    field_ = "volume_noise_off" if noise_off else "volume"
    names: list[str] = []
    for m in models:
        for e, v in (m.get(field_) or {}).items():
            if v is not None and e not in names:
                names.append(e)
    return names


# -- the claims ---------------------------------------------------------------------------------
def directional(models: list[dict], regs: set[str], checks: list[tuple[str, Callable, int]],
                ) -> list[Part]:
    """One part per (quantity, level): the paired change and its verdict against ``expected``."""
    parts = []
    for label, quantity, expected in checks:
        for level, changes in paired_changes(models, regs, quantity).items():
            eff = mean_interval(changes)
            parts.append(Part(f"{label}, {level}", f"Δ = {eff.text()}",
                              direction_verdict(eff, expected)))
    return parts


def _finish(f: Finding, parts: list[Part], why: str) -> Finding:
    if parts:
        f.parts, f.verdict = parts, combine([p.verdict for p in parts])
    else:
        f.why = why
    return f


def dropout_raises_volume(models: list[dict]) -> Finding:
    f = Finding("dropout-volume", "Dropout raises the weight volume under both estimators (Table 1).")
    ests = estimators(models)
    checks = [(f"{e} vol/dim", volume_of(e), +1) for e in ests]
    missing = [e for e in ("laplace", "sampling") if e not in ests]
    if ests and missing:
        f.note = f"{' and '.join(missing)}: not in this run"
    return _finish(f, directional(models, {"dropout"}, checks) if checks else [],
                   "needs dropout runs with twins without it, and a volume estimate")


def dropout_lowers_gap(models: list[dict]) -> Finding:
    f = Finding("dropout-gap", "Dropout lowers the generalization gap (Table 1).")
    return _finish(f, directional(models, {"dropout"}, [("loss gap", gap, -1)]),
                   "needs dropout runs with twins without it")


def dropout_key(models: list[dict]) -> str | None:
    return next((k for k in treatments(models).get("dropout", [])), None)


def volume_grows_with_rate(models: list[dict]) -> Finding:
    f = Finding("rate-trend", "The volume grows with the dropout rate while the gap shrinks (Figure 3).")
    key = dropout_key(models)
    rates = {m["hparams"].get(key) for m in models} if key else set()
    if len(rates) < 3:
        return _finish(f, [], "needs at least 3 dropout rates (0 and two more)")
    parts = []
    for label, quantity, expected in ([(f"{e} vol/dim", volume_of(e), +1) for e in estimators(models)]
                                      + [("loss gap", gap, -1)]):
        eff = mean_interval(slopes(models, key, quantity))
        parts.append(Part(f"slope of {label} per unit rate", eff.text(),
                          direction_verdict(eff, expected)))
    return _finish(f, parts, "")


def noise_claim(models: list[dict], fid: str, claim: str, regs: set[str], vol_sign: int,
                loss_sign: int) -> Finding:
    f = Finding(fid, claim)
    checks = [(f"{e} vol/dim", volume_of(e), vol_sign) for e in estimators(models)]
    checks.append(("test loss", test_loss, loss_sign))
    parts = directional(models, regs, checks) if regs & set(treatments(models)) else []
    return _finish(f, parts, f"needs {' or '.join(sorted(regs))} runs with twins without it")


def controls_barely_move(models: list[dict]) -> Finding:
    f = Finding("controls", "Weight decay and batch norm barely change the volume (Figure 6c).")
    present = {"weight_decay", "batch_norm"} & set(treatments(models))
    if not present:
        return _finish(f, [], "needs weight-decay or batch-norm runs with twins without them")
    parts = []
    for e in estimators(models):
        ref = [c for cs in paired_changes(models, {"dropout"}, volume_of(e)).values() for c in cs]
        margin = BARELY * abs(sum(ref) / len(ref)) if ref else math.nan
        for reg in sorted(present):
            for level, changes in paired_changes(models, {reg}, volume_of(e)).items():
                eff = mean_interval(changes)
                bound = f"δ = {margin:.4f}" if ref else "no dropout reference for δ"
                parts.append(Part(f"{e} vol/dim, {level}", f"Δ = {eff.text()}; {bound}",
                                  equivalence_verdict(eff, margin)))
    return _finish(f, parts, "needs a volume estimate")


def estimator_share(models: list[dict]) -> Finding:
    """(Ours) How much of a volume change survives with the estimator's factor noise off."""
    f = Finding("estimator-share", "(Ours) Dropout's volume increase is in the trained weights, "
                "not only in the estimator's own dropout noise (Laplace, factor noise on and off).")
    parts = []
    for e in estimators(models, noise_off=True):
        on = paired_changes(models, {"dropout"}, volume_of(e))
        off = paired_changes(models, {"dropout"}, volume_of(e, noise_off=True))
        for level, changes in off.items():
            eff, eff_on = mean_interval(changes), mean_interval(on.get(level, []))
            share = (1 - eff.mean / eff_on.mean) if eff_on.n and eff_on.mean else math.nan
            parts.append(Part(f"{e} vol/dim with noise off, {level}",
                              f"Δ off = {eff.text()}; Δ on = {eff_on.text()}; "
                              f"estimator's share {share:.0%}", direction_verdict(eff, +1)))
    return _finish(f, parts, "needs volume estimates with the factor noise off (noise_off)")


# -- rankings on the leaderboard ------------------------------------------------------------------
PAC_S = ("pac_s_laplace", "pac_s_sampling")


def signed(entry: dict, path: str) -> tuple[float | None, list[float] | None]:
    """The score at ``path`` ("mi.0", "sign_error", "mi_hparam.<hp>") and its interval;
    MI with the gap is signed by the entry's direction (or the sign of Kendall's tau)."""
    head, _, tail = path.partition(".")
    v = entry.get(head)
    v = v.get(tail) if tail and isinstance(v, dict) else v
    ci = (entry.get("ci") or {}).get(path)
    ci = list(ci) if ci and None not in ci else None
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None, None
    if head in ("mi", "mi_min"):
        d = entry.get("direction")
        if d is None:
            tau = entry.get("kendall_tau")
            d = 0 if tau is None else (tau > 0) - (tau < 0)
        v = v * d
        ci = sorted(c * d for c in ci) if ci else None
    return float(v), ci


def rank_part(board: dict[str, dict], path: str, label: str, higher: bool = True) -> Part | None:
    """The best PAC-S measure against the best other measure on one score (see RULE)."""
    sign = 1 if higher else -1

    def best(names: list[str]) -> tuple[str, float, list[float] | None] | None:
        vals = [(n, *signed(board[n], path)) for n in names]
        vals = [v for v in vals if v[1] is not None]
        return max(vals, key=lambda v: sign * v[1]) if vals else None

    p = best([n for n in board if n in PAC_S])
    o = best([n for n in board if n not in PAC_S])
    if p is None or o is None:
        return None
    ci = "" if p[2] is None else f" [{p[2][0]:.3f}, {p[2][1]:.3f}]"
    numbers = f"{p[0]} {p[1]:.3f}{ci} vs {o[0]} {o[1]:.3f}"
    if p[2] is None:
        return Part(label, numbers + " (no bootstrap interval)", INCONCLUSIVE)
    lo, hi = (p[2][0], p[2][1]) if higher else (-p[2][1], -p[2][0])
    pv, ov = sign * p[1], sign * o[1]
    verdict = HOLDS if pv > ov and lo > ov else REFUTED if ov > pv and hi < ov else INCONCLUSIVE
    return Part(label, numbers, verdict)


def pac_s_leads(board: dict[str, dict], fid: str, claim: str, paths: list[tuple[str, str]],
                higher: bool = True) -> Finding:
    f = Finding(fid, claim)
    if not any(n in PAC_S for n in board) or all(n in PAC_S for n in board):
        return _finish(f, [], "needs a PAC-S measure and another measure on the leaderboard")
    parts = [p for path, label in paths if (p := rank_part(board, path, label, higher)) is not None]
    return _finish(f, parts, "the leaderboard has no such score")


def leaderboard_findings(board: dict[str, dict], against: list[str]) -> list[Finding]:
    ks = sorted({k for e in board.values() for k in (e.get("mi") or {})})
    drop = [h for h in against if regularizer_of(h) == "dropout"]
    return [
        pac_s_leads(board, "pac-s-gap", "PAC-S(Laplace) and PAC-S(Sampling) have the highest MI with "
                    "the gap at |ω| = 0, 1, 2 (Table 2).", [(f"mi.{k}", f"signed MI with the gap, |ω|={k}")
                                                            for k in ks]),
        pac_s_leads(board, "pac-s-dropout", "PAC-S has by far the highest MI with dropout (Table 2).",
                    [(f"mi_hparam.{h}", f"MI with {h.split('.', 1)[1]}") for h in drop]),
        pac_s_leads(board, "pac-s-sign-error", "PAC-S has the lowest average sign-error (Table 14).",
                    [("sign_error", "average sign-error")], higher=False),
    ]


def all_findings(models: list[dict], board: dict[str, dict], against: list[str]) -> list[Finding]:
    """Every finding of science.md section 6, in its order; untestable ones carry ``why``."""
    return [
        dropout_raises_volume(models),
        dropout_lowers_gap(models),
        volume_grows_with_rate(models),
        *leaderboard_findings(board, against),
        noise_claim(models, "reverse-noise", "Reverse (disentanglement) noise expands the volume and "
                    "lowers the test loss (Figure 4).",
                    {"activation_reverse_noise", "node_loss_reverse_noise"}, +1, -1),
        noise_claim(models, "weight-noise", "Stochastic weight noise contracts the volume and raises "
                    "the test loss (Figure 4; the paper keeps only contracting runs, this test keeps "
                    "every run).", {"weight_noise"}, -1, +1),
        controls_barely_move(models),
        estimator_share(models),
    ]

"""Scores against plain-loop references, hand-computed cases and the properties a score
must have (perfect / reversed / independent predictors, monotone invariance, ties).

The brute-force functions below follow docs/scoring.md literally, one ordered pair at a
time, so they share no code (and no counting shortcut) with genbench.scoring.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from genbench.scoring import (PRESETS, ScoreOptions, _count_earlier_greater, against_groups, _score_once,
                              _structure, pair_counts, resolve_options, score_paths,
                              score_population)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# brute-force references (plain Python loops over pairs)
# ---------------------------------------------------------------------------------------

def sgn(a, b, tol=0.0):
    """sign(a - b), 0 when |a - b| <= tol (evaluated as max <= min + tol)."""
    if max(a, b) <= min(a, b) + tol:
        return 0
    return 1 if a > b else -1


def bf_mi(signs, tie_rule, log_base):
    """(I, H(V_y), number of ordered pairs used) from a list of (s_x, s_y)."""
    if tie_rule == "drop":
        signs = [(a, b) for a, b in signs if a != 0 and b != 0]
    elif tie_rule == "lump":
        signs = [(int(a > 0), int(b > 0)) for a, b in signs]
    W = len(signs)
    if W == 0:
        return None, None, 0
    joint, px, py = {}, {}, {}
    for a, b in signs:
        joint[(a, b)] = joint.get((a, b), 0) + 1
        px[a] = px.get(a, 0) + 1
        py[b] = py.get(b, 0) + 1
    I = 0.0
    for (a, b), k in joint.items():
        p = k / W
        I += p * math.log(p / ((px[a] / W) * (py[b] / W)))
    H = -sum((k / W) * math.log(k / W) for k in py.values())
    return I / math.log(log_base), H / math.log(log_base), W


def bf_tau(signs, tie_rule):
    if tie_rule == "drop":
        signs = [(a, b) for a, b in signs if a != 0 and b != 0]
    num = sum(a * b for a, b in signs)
    den = math.sqrt(sum(a * a for a, _ in signs) * sum(b * b for _, b in signs))
    return num / den if den > 0 else None


def bf_hoeffding(dg, n, shift):
    h = max(0.0, 1.0 - 2.0 * math.exp(-2.0 * n * (abs(dg) / 2.0) ** 2)) ** 2
    return h - shift if h > shift else 0.0


def bf_score(c, g, hp, condition_on, against, opts: ScoreOptions, max_omega=2, orig=None):
    """Every score of one measure, literally, over ordered pairs (skipping pairs of two
    copies of one model, orig[i] == orig[j], as a bootstrap resample must). MI with an
    'against' hp is taken within groups of opts.against_within (the paper's rule: every
    conditioned hp but batch size and lr)."""
    within = opts.against_within
    if within == "all_but_batch_size_lr":
        within = [h for h in condition_on if h not in ("batch_size", "train.batch_size", "lr", "train.lr")]
    orig = list(range(len(c))) if orig is None else orig
    models = [i for i in range(len(c)) if math.isfinite(c[i]) and math.isfinite(g[i])]
    tol = opts.gap_tol

    def signs(pairs, target=None, ttol=tol):
        t = g if target is None else target
        return [(sgn(c[i], c[j]), sgn(t[i], t[j], ttol)) for i, j in pairs]

    def ordered(ms):
        return [(i, j) for i in ms for j in ms if i != j and orig[i] != orig[j]]

    def cells(ms, names):
        out = {}
        for i in ms:
            out.setdefault(tuple(hp[h][i] for h in names), []).append(i)
        return list(out.values())

    def reduce(per):
        """per: (I, H, W, has_pairs) of each cell; the value of the subset, or None."""
        if not any(W > 0 for _, _, W, _ in per):
            return None
        zero = opts.empty_cell == "zero"
        if opts.cell_reduce == "mean":
            xs = []
            for I, H, W, has in per:
                good = W > 0 and (H > 0 or not opts.normalize)
                if good:
                    xs.append(I / H if opts.normalize else I)
                elif zero and has:
                    xs.append(0.0)
            return sum(xs) / len(xs) if xs else None
        keep = [(I, H, W) if W > 0 else (0.0, 0.0, 0) for I, H, W, has in per if W > 0 or (zero and has)]
        w = [W if opts.cell_reduce == "pool" else 1 for _, _, W in keep]
        num = sum(wi * I for wi, (I, H, W) in zip(w, keep))
        hs = sum(wi * H for wi, (I, H, W) in zip(w, keep))
        if opts.normalize:
            return num / hs if hs > 0 else None
        return num / sum(w) if sum(w) else None

    r = {}
    cond = list(dict.fromkeys(condition_on))
    for k in range(0, min(max_omega, len(cond)) + 1):
        vals = []
        for omega in itertools.combinations(cond, k):
            per = [bf_mi(signs(ordered(cell)), opts.tie_rule, opts.log_base) + (len(ordered(cell)) > 0,)
                   for cell in cells(models, omega)]
            v = reduce(per)
            if v is not None:
                vals.append(v)
        r[f"mi.{k}"] = sum(vals) / len(vals) if vals else None
        r[f"mi_min.{k}"] = min(vals) if vals else None
    for h in against:
        ms = [i for i in models if hp[h][i] is not None and not (isinstance(hp[h][i], float) and math.isnan(hp[h][i]))]
        per = [bf_mi(signs(ordered(group), hp[h], 0.0), opts.tie_rule, opts.log_base) + (len(ordered(group)) > 0,)
               for group in cells(ms, within)]
        r[f"mi_hparam.{h}"] = reduce(per)
    r["kendall_tau"] = bf_tau(signs(ordered(models)), opts.tie_rule)
    H_all = list(dict.fromkeys(list(condition_on) + list(against)))
    psis = []
    for h in H_all:
        others = [o for o in H_all if o != h]
        taus = []
        for cell in cells(models, others):
            if len({hp[h][i] for i in cell}) < 2:
                continue
            t = bf_tau(signs(ordered(cell)), opts.tie_rule)
            if t is not None:
                taus.append(t)
        if taus:
            psis.append(sum(taus) / len(taus))
    r["granulated_kendall"] = sum(psis) / len(psis) if psis else None
    settings = {}
    for i in models:
        settings.setdefault(tuple(hp[h][i] for h in H_all), []).append(i)
    keys = list(settings)
    mean = {k: sum(g[i] for i in v) / len(v) for k, v in settings.items()}
    df = len(models) - len(settings)
    sd = math.sqrt(sum((g[i] - mean[k]) ** 2 for k, v in settings.items() for i in v) / df) if df > 0 else None
    losses = []
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            if sum(x != y for x, y in zip(keys[a], keys[b])) != 1:
                continue
            if opts.seed_noise_z > 0 and sd is not None:
                se = sd * math.sqrt(1 / len(settings[keys[a]]) + 1 / len(settings[keys[b]]))
                if abs(mean[keys[a]] - mean[keys[b]]) <= opts.seed_noise_z * se:
                    continue
            sw = sw2 = sl = 0.0
            for i in settings[keys[a]]:
                for j in settings[keys[b]]:
                    sc, sg = sgn(c[i], c[j]), sgn(g[i], g[j], tol)
                    if opts.tie_rule == "drop" and (sc == 0 or sg == 0):
                        continue
                    w = 1.0 if opts.pair_weight == "none" else bf_hoeffding(g[i] - g[j], opts.n_test, opts.weight_shift)
                    sw += w
                    sw2 += w * w
                    sl += w * (1 - sc * sg) / 2
            if sw > 0 and sw * sw / sw2 >= opts.min_ess:
                losses.append(sl / sw)
    r["sign_error"] = sum(losses) / len(losses) if losses else None
    r["robust_sign_error"] = max(losses) if losses else None
    r["sign_error_q90"] = None
    if losses:
        srt, pos = sorted(losses), 0.9 * (len(losses) - 1)
        lo = int(pos)
        r["sign_error_q90"] = srt[lo] + (pos - lo) * (srt[min(lo + 1, len(srt) - 1)] - srt[lo])
    pairs_per_env = [len(settings[a]) * len(settings[b]) for a, b in itertools.combinations(keys, 2)
                     if sum(x != y for x, y in zip(a, b)) == 1]
    if pairs_per_env and max(pairs_per_env) <= 1:      # one seed: undefined
        r["robust_sign_error"] = r["sign_error_q90"] = None
    r["n_models"] = len(models)
    return r


def flat(entry):
    out = {}
    for key in ("mi", "mi_min"):
        for k, v in entry[key].items():
            out[f"{key}.{k}"] = v
    for h, v in entry["mi_hparam"].items():
        out[f"mi_hparam.{h}"] = v
    for key in ("kendall_tau", "granulated_kendall", "sign_error", "robust_sign_error", "sign_error_q90",
                "n_models"):
        out[key] = entry[key]
    return out


def assert_close(got, want, tol=1e-12):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        if want[k] is None:
            assert got[k] is None, (k, got[k])
        else:
            assert got[k] is not None, (k, want[k])
            assert abs(got[k] - want[k]) <= tol, (k, got[k], want[k])


def random_population(rng, n, ties=True):
    """Small population with ties in measures, gaps and hyperparameters, and a NaN."""
    hp = {"a": rng.integers(0, 2, n).astype(float), "b": rng.integers(0, 3, n),
          "c": np.array(rng.choice(["x", "y"], n), dtype=object),
          "d": rng.choice([0.0, 0.15, 0.3], n)}
    g = rng.normal(size=n)
    if ties:
        g = np.round(g, 1)
    loss = g + 0.3 * rng.normal(size=n)
    m1 = np.round(loss + rng.normal(size=n), 1 if ties else 8)
    m2 = rng.integers(0, 4, n).astype(float)       # many ties
    m3 = -loss + 0.1 * rng.normal(size=n)
    m1[0] = np.nan
    return {"m1": m1, "m2": m2, "m3": m3}, {"loss": g, "acc": np.round(rng.normal(size=n), 1)}, hp


# ---------------------------------------------------------------------------------------
# the counting engine
# ---------------------------------------------------------------------------------------

def test_count_earlier_greater_bruteforce():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 3, 7, 16, 33, 64, 65, 100, 129, 300, 1000, 4097):
        for hi in (3, 50):
            x = rng.integers(0, hi, n)
            # a query per element, x itself, or a non-decreasing function of x (y + tol)
            mono = (np.searchsorted(np.unique(x), x) * 2 + 1) * (hi // 3 + 1) // 2 if n else x
            for q, monotone in ((rng.integers(0, hi, n), False), (x, False), (mono, True)):
                want = [sum(1 for l in range(k) if x[l] > q[k]) for k in range(n)]
                assert _count_earlier_greater(x, q, monotone=monotone).tolist() == want, (n, hi)


@pytest.mark.parametrize("tol", [0.0, 0.1, 0.25, 3.0])     # 3.0: too many near pairs to list
def test_pair_counts_bruteforce(tol):
    rng = np.random.default_rng(2)
    n, G = 60, 5
    grp = rng.integers(0, G, n)
    x = np.round(rng.normal(size=n), 1)
    y = np.round(rng.normal(size=n), 1)
    got = pair_counts(grp, x, y, G, tol)
    for k in range(G):
        ids = [i for i in range(n) if grp[i] == k]
        P = tx = ty = tb = C = D = 0
        for a, b in itertools.combinations(ids, 2):
            sx, sy = sgn(x[a], x[b]), sgn(y[a], y[b], tol)
            P += 1
            tx += sx == 0
            ty += sy == 0
            tb += sx == 0 and sy == 0
            C += sx * sy > 0
            D += sx * sy < 0
        assert (got.P[k], got.tx[k], got.ty[k], got.tb[k], got.C[k], got.D[k]) == (P, tx, ty, tb, C, D)


@pytest.mark.parametrize("tol", [0.0, 0.015, 0.05, 1.0])   # near pairs listed (0.015) or merged
@pytest.mark.parametrize("fenwick", [True, False])
def test_pair_counts_large_groups_against_broadcast(tol, fenwick, monkeypatch):
    """Many merge levels (groups of hundreds) against an O(n^2) broadcast reference, with
    large groups counted by scipy's Fenwick tree and, without it, by the merge sort."""
    import genbench.scoring as scoring
    if not fenwick:
        monkeypatch.setattr(scoring, "_kendall_dis", None)
    rng = np.random.default_rng(3)
    n, G = 1500, 3
    grp = rng.integers(0, G, n)
    x = np.round(rng.normal(size=n), 2)
    y = np.round(rng.normal(size=n), 2)
    got = pair_counts(grp, x, y, G, tol)
    for k in range(G):
        xs, ys = x[grp == k], y[grp == k]
        sx = np.sign(xs[:, None] - xs[None, :])
        hi, lo = np.maximum(ys[:, None], ys[None, :]), np.minimum(ys[:, None], ys[None, :])
        sy = np.where(hi <= lo + tol, 0.0, np.sign(ys[:, None] - ys[None, :]))
        upper = np.triu(np.ones_like(sx, dtype=bool), 1)
        prod = (sx * sy)[upper]
        assert got.C[k] == (prod > 0).sum() and got.D[k] == (prod < 0).sum()
        assert got.tx[k] == (sx[upper] == 0).sum() and got.ty[k] == (sy[upper] == 0).sum()
        assert got.tb[k] == ((sx[upper] == 0) & (sy[upper] == 0)).sum()


# ---------------------------------------------------------------------------------------
# full scores against the brute force
# ---------------------------------------------------------------------------------------

CONFIGS = [
    ("paper", {}), ("jiang", {}), ("pgdl", {"cells": "shared"}),
    ("paper", {"empty_cell": "skip", "against_within": ["b"]}),
    ("jiang", {"empty_cell": "zero", "against_within": ["a", "c"]}),
    ("jiang", {"empty_cell": "zero", "cell_reduce": "mean"}),
    ("pgdl", {"empty_cell": "zero", "cells": "shared", "normalize": False}),
    ("paper", {"normalize": True, "cell_reduce": "pool"}),
    ("jiang", {"tie_rule": "drop", "cell_reduce": "mean", "log_base": math.e}),
    ("jiang", {"tie_rule": "lump", "normalize": False, "gap_tol": 0.15}),
    ("pgdl", {"tie_rule": "category", "normalize": False, "cells": "shared"}),
    ("jiang", {"pair_weight": "hoeffding", "n_test": 200, "min_ess": 1.5}),
    ("paper", {"pair_weight": "hoeffding", "n_test": 100, "weight_shift": 0.0}),
    ("jiang", {"seed_noise_z": 0.5}),
    ("paper", {"seed_noise_z": 1.0, "pair_weight": "hoeffding", "n_test": 100}),
]


@pytest.mark.parametrize("preset,over", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_bruteforce(preset, over, seed):
    rng = np.random.default_rng(seed)
    measures, gaps, hp = random_population(rng, 36)
    cond, against = ["a", "b", "c"], ["d"]
    board = score_population(measures, gaps, hp, cond, against, preset=preset, **over)
    opts = resolve_options(preset, **over)
    hp_py = {h: list(v.tolist()) for h, v in hp.items()}
    g = gaps[opts.gap].tolist()
    for name, c in measures.items():
        want = bf_score(c.tolist(), g, hp_py, cond, against, opts)
        assert_close(flat(board["leaderboard"][name]), want)


@pytest.mark.parametrize("max_omega", [0, 1, 3])
def test_max_omega_keys_and_bruteforce(max_omega):
    rng = np.random.default_rng(5)
    measures, gaps, hp = random_population(rng, 30)
    board = score_population(measures, gaps, hp, ["a", "b"], ["d"], preset="jiang", max_omega=max_omega)
    want_keys = [str(k) for k in range(min(max_omega, 2) + 1)]
    entry = board["leaderboard"]["m2"]
    assert list(entry["mi"]) == want_keys and list(entry["mi_min"]) == want_keys
    hp_py = {h: list(v.tolist()) for h, v in hp.items()}
    want = bf_score(measures["m2"].tolist(), gaps["acc"].tolist(), hp_py, ["a", "b"], ["d"],
                    PRESETS["jiang"], max_omega=max_omega)
    assert_close(flat(entry), want)


def test_large_population_matches_bruteforce_without_ties():
    """Fewer ties, more models: exercises deep merge levels of the counting engine."""
    rng = np.random.default_rng(9)
    measures, gaps, hp = random_population(rng, 90, ties=False)
    measures = {"m1": measures["m1"]}
    board = score_population(measures, gaps, hp, ["a", "b"], ["d"], preset="paper")
    hp_py = {h: list(v.tolist()) for h, v in hp.items()}
    want = bf_score(measures["m1"].tolist(), gaps["loss"].tolist(), hp_py, ["a", "b"], ["d"], PRESETS["paper"])
    assert_close(flat(board["leaderboard"]["m1"]), want)


def test_measures_sharing_the_gap_side_each_match_bruteforce():
    """Three measures scored together (two on the same models, one with a NaN: its own
    model set) on groups big enough for the Fenwick count, with a tolerance that ties
    near pairs: each measure's scores equal the brute force on that measure alone."""
    rng = np.random.default_rng(11)
    measures, gaps, hp = random_population(rng, 200, ties=False)
    board = score_population(measures, gaps, hp, ["a", "b"], ["d"], preset="paper", gap_tol=0.01)
    opts = resolve_options("paper", gap_tol=0.01)
    hp_py = {h: list(v.tolist()) for h, v in hp.items()}
    for name, c in measures.items():
        want = bf_score(c.tolist(), gaps[opts.gap].tolist(), hp_py, ["a", "b"], ["d"], opts)
        assert_close(flat(board["leaderboard"][name]), want)


# ---------------------------------------------------------------------------------------
# hand-computed 4-model cases
# ---------------------------------------------------------------------------------------

def hb(p):
    """Binary entropy in bits."""
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_hand_four_models_mixed_directions():
    """c = 1,2,3,4; gap = 1,3,4,2; a = 0,0,1,1; b = 0,1,0,1.

    Unordered pairs: (1,2)(1,3)(1,4)(2,3) concordant, (2,4)(3,4) discordant: C=4, D=2.
    Counting both orientations: p(++)=p(--)=1/3, p(+-)=p(-+)=1/6, marginals 1/2, so
    I = 1 - H_b(1/3) bits = normalized MI; tau = (4-2)/6 = 1/3.
    |omega|=1: fixing a gives cells {1,2} (concordant) and {3,4} (discordant): each cell
    MI = 1 (MI is blind to direction); fixing b: {1,3} conc., {2,4} disc.: 1. |omega|=2:
    every cell has one model -> undefined.
    Granulated tau: varying a (cells by b): taus +1, -1 -> 0; varying b: +1, -1 -> 0.
    Environments (settings differ in one hp): (1,2) b: 0, (3,4) b: 1, (1,3) a: 0,
    (2,4) a: 1 -> mean 1/2, robust 1. (1,4) and (2,3) differ in both: not environments.
    """
    c = np.array([1.0, 2, 3, 4])
    g = np.array([1.0, 3, 4, 2])
    hp = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0, 1])}
    e = score_population({"m": c}, {"loss": g, "acc": g}, hp, ["a", "b"], [], preset="jiang")["leaderboard"]["m"]
    assert e["mi"]["0"] == pytest.approx(1 - hb(1 / 3), abs=1e-12)
    assert e["mi"]["1"] == pytest.approx(1.0, abs=1e-12) and e["mi_min"]["1"] == pytest.approx(1.0, abs=1e-12)
    assert e["mi"]["2"] is None and e["mi_min"]["2"] is None
    assert e["kendall_tau"] == pytest.approx(1 / 3, abs=1e-12)
    assert e["granulated_kendall"] == pytest.approx(0.0, abs=1e-12)
    assert e["sign_error"] == pytest.approx(0.5, abs=1e-12)
    assert e["robust_sign_error"] is None      # one model per setting: undefined (science.md §3)
    # paper preset: unnormalized bits; with no ties and symmetric counting the same numbers
    p = score_population({"m": c}, {"loss": g, "acc": g}, hp, ["a", "b"], [], preset="paper")["leaderboard"]["m"]
    assert p["mi"]["0"] == pytest.approx(1 - hb(1 / 3), abs=1e-12)
    # natural-log units: multiply bits by ln 2
    u = score_population({"m": c}, {"loss": g, "acc": g}, hp, ["a", "b"], [], preset="paper",
                         log_base=math.e)["leaderboard"]["m"]
    assert u["mi"]["0"] == pytest.approx((1 - hb(1 / 3)) * math.log(2), abs=1e-12)


def test_hand_four_models_one_env_discordant():
    """c = 1,2,3,4; gap = 1,3,2,4 (only (2,3) discordant, and it is not an environment).

    C=5, D=1: MI = 1 - H_b(1/6), tau = 4/6; every environment is concordant: sign-error 0.
    """
    c = np.array([1.0, 2, 3, 4])
    g = np.array([1.0, 3, 2, 4])
    hp = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0, 1])}
    e = score_population({"m": c}, {"loss": g, "acc": g}, hp, ["a", "b"], [], preset="jiang")["leaderboard"]["m"]
    assert e["mi"]["0"] == pytest.approx(1 - hb(1 / 6), abs=1e-12)
    assert e["kendall_tau"] == pytest.approx(2 / 3, abs=1e-12)
    assert e["granulated_kendall"] == pytest.approx(1.0, abs=1e-12)
    assert e["sign_error"] == 0.0 and e["robust_sign_error"] is None   # one pair per environment


def test_hand_mi_with_hyperparameter_and_tie_rule():
    """c = 1,2,3,4 against dropout d = 0,0,.3,.3.

    Pairs: (1,2),(3,4) tied in d; the other 4 concordant. Ordered table: (+,+)=(-,-)=4,
    (+,0)=(-,0)=2, total 12; p(d=+)=p(d=-)=p(d=0)=1/3.
    category: I = 2(4/12)log2((1/3)/(1/2*1/3)) + 2(2/12)log2((1/6)/(1/2*1/3)) = 2/3 bit,
    H(V_d) = log2 3, normalized 2/(3 log2 3). drop: the tied pairs go, leaving a perfect
    2x2 table: 1 bit = normalized 1.
    """
    c = np.array([1.0, 2, 3, 4])
    d = np.array([0.0, 0.0, 0.3, 0.3])
    g = np.array([4.0, 3, 2, 1])
    args = ({"m": c}, {"loss": g, "acc": g}, {"d": d, "a": np.zeros(4)}, ["a"], ["d"])
    cat = score_population(*args, preset="jiang")["leaderboard"]["m"]["mi_hparam"]["d"]
    assert cat == pytest.approx(2 / (3 * math.log2(3)), abs=1e-12)
    raw = score_population(*args, preset="jiang", normalize=False)["leaderboard"]["m"]["mi_hparam"]["d"]
    assert raw == pytest.approx(2 / 3, abs=1e-12)
    drop = score_population(*args, preset="paper")["leaderboard"]["m"]["mi_hparam"]["d"]
    assert drop == pytest.approx(1.0, abs=1e-12)


def test_hand_tie_rules():
    """c = 1,1,2,3; gap = 1,2,2,3; h = 0,1,0,1 (h is the only hyperparameter).

    Pairs: (1,2) tied in c only; (2,3) tied in gap only; (1,3),(1,4),(2,4),(3,4) concordant.
    C=4, D=0, Tc=1, Tg=1, Tb=0, P=6.
    category: ordered (+,+)=(-,-)=4, (0,+)=(0,-)=1, (+,0)=(-,0)=1 (total 12); both
      marginals (5/12, 2/12, 5/12); I = (2/3) log2(48/25) + (1/3) log2(144/120);
      tau-b = 4 / sqrt(5*5) = 0.8; the environment h=0 vs h=1 has cross pairs
      (1,2): tie 1/2, (1,4): 0, (3,2): tie 1/2, (3,4): 0 -> sign-error 1/4.
    drop: only the 4 concordant pairs: MI 1 bit, tau 1, sign-error over (1,4),(3,4) = 0.
    lump: V = [diff > 0]: table (1,1)=4, (1,0)=1, (0,1)=1, (0,0)=6.
    """
    c = np.array([1.0, 1, 2, 3])
    g = np.array([1.0, 2, 2, 3])
    hp = {"h": np.array([0, 1, 0, 1])}
    args = ({"m": c}, {"loss": g, "acc": g}, hp, ["h"], [])
    cat = score_population(*args, preset="jiang", normalize=False)["leaderboard"]["m"]
    I = (2 / 3) * math.log2(48 / 25) + (1 / 3) * math.log2(144 / 120)
    H = -2 * (5 / 12) * math.log2(5 / 12) - (2 / 12) * math.log2(2 / 12)
    assert cat["mi"]["0"] == pytest.approx(I, abs=1e-12)
    norm = score_population(*args, preset="jiang")["leaderboard"]["m"]
    assert norm["mi"]["0"] == pytest.approx(I / H, abs=1e-12)
    assert cat["kendall_tau"] == pytest.approx(0.8, abs=1e-12)
    assert cat["sign_error"] == pytest.approx(0.25, abs=1e-12)
    assert cat["robust_sign_error"] == pytest.approx(0.25, abs=1e-12)
    drop = score_population(*args, preset="jiang", tie_rule="drop")["leaderboard"]["m"]
    assert drop["mi"]["0"] == pytest.approx(1.0, abs=1e-12)
    assert drop["kendall_tau"] == pytest.approx(1.0, abs=1e-12)
    assert drop["sign_error"] == 0.0
    lump = score_population(*args, preset="pgdl", normalize=False, cells="shared")["leaderboard"]["m"]
    t = {(1, 1): 4, (1, 0): 1, (0, 1): 1, (0, 0): 6}
    px = {1: 5 / 12, 0: 7 / 12}
    Il = sum(k / 12 * math.log2((k / 12) / (px[a] * px[b])) for (a, b), k in t.items())
    assert lump["mi"]["0"] == pytest.approx(Il, abs=1e-12)
    # |omega| = 1 on h: cells {1,3}: one concordant pair; {2,4}: one concordant pair
    assert drop["mi"]["1"] == pytest.approx(1.0, abs=1e-12)


def test_hand_gap_tolerance():
    """Paper preset: |delta gap| <= 1e-4 is a tie, and tied pairs are dropped.

    gap = 0, 0.00005, 1, 2 with c = 2, 1, 3, 4: the only discordant pair (1,2) has
    |delta gap| = 5e-5, so it is dropped: MI 1 bit and tau 1. With gap_tol = 0 it counts:
    C=5, D=1 -> MI = 1 - H_b(1/6), tau = 4/6.
    """
    c = np.array([2.0, 1, 3, 4])
    g = np.array([0.0, 0.00005, 1, 2])
    args = ({"m": c}, {"loss": g, "acc": g}, {"h": np.zeros(4)}, ["h"], [])
    p = score_population(*args, preset="paper")["leaderboard"]["m"]
    assert p["mi"]["0"] == pytest.approx(1.0, abs=1e-12) and p["kendall_tau"] == pytest.approx(1.0)
    q = score_population(*args, preset="paper", gap_tol=0.0)["leaderboard"]["m"]
    assert q["mi"]["0"] == pytest.approx(1 - hb(1 / 6), abs=1e-12)
    assert q["kendall_tau"] == pytest.approx(4 / 6, abs=1e-12)


def test_hand_cell_reductions():
    """Conditioning on h: cell h=0 has 4 models with c = gap (C=6: 12 ordered pairs,
    I1 = 1 bit = H); cell h=1 has 3 models with pairs C=2, D=1 (6 ordered pairs,
    I2 = 1 - H_b(1/3), H = 1 bit).
    pool = (12 I1 + 6 I2) / (12 + 6); mean = (I1 + I2)/2; pool_unweighted = (I1 + I2)/(1 + 1).
    """
    c = np.array([1.0, 2, 3, 4, 1, 2, 3])
    g = np.array([1.0, 2, 3, 4, 1, 3, 2])   # cell 2: (5,6) C, (5,7) C, (6,7) D
    h = np.array([0, 0, 0, 0, 1, 1, 1])
    args = ({"m": c}, {"loss": g, "acc": g}, {"h": h}, ["h"], [])
    I2 = 1 - hb(1 / 3)
    pool = score_population(*args, preset="jiang", cell_reduce="pool")["leaderboard"]["m"]["mi"]["1"]
    mean = score_population(*args, preset="jiang", cell_reduce="mean")["leaderboard"]["m"]["mi"]["1"]
    unw = score_population(*args, preset="jiang", cell_reduce="pool_unweighted")["leaderboard"]["m"]["mi"]["1"]
    assert pool == pytest.approx((12 * 1 + 6 * I2) / 18, abs=1e-12)
    assert mean == pytest.approx((1 + I2) / 2, abs=1e-12)
    assert unw == pytest.approx((1 + I2) / 2, abs=1e-12)   # H = 1 bit in both cells


def test_hand_weighted_sign_error():
    """Two settings, one model each: one pair, weight (hoeffding - 0.5)_+; a second
    environment whose gaps differ too little gets weight 0 and is dropped."""
    c = np.array([1.0, 2, 1, 2])
    g = np.array([0.0, 0.1, 0.5, 0.5001])      # env 1 concordant; env 2: dgap = 1e-4
    hp = {"h": np.array([0, 1, 0, 1]), "k": np.array([0, 0, 1, 1])}
    e = score_population({"m": c}, {"loss": g, "acc": g}, hp, ["h", "k"], [], preset="jiang",
                         pair_weight="hoeffding", n_test=10000)["leaderboard"]["m"]
    # envs: (1,2) dgap 0.1 -> w>0, loss 0; (3,4) dgap 1e-4 -> w = 0, dropped;
    # (1,3) h=0, k varies: c tie -> loss 1/2, dgap .5 -> w > 0; (2,4): c tie, loss 1/2
    assert e["sign_error"] == pytest.approx((0 + 0.5 + 0.5) / 3, abs=1e-12)
    assert e["robust_sign_error"] is None                               # one pair per environment


def test_hand_sign_error_quantile_and_seed_noise_filter():
    """Settings (a, b) with two seeds each; worked by hand. Environments (one hp differs):
    S00-S01 loss 1/4 (one of 4 pairs reversed), S00-S10 loss 1 (every pair reversed, but
    the two settings' mean gaps are equal: the intervention does nothing to the gap beyond
    seed noise), S01-S11 loss 0, S10-S11 loss 0."""
    hp = {"a": np.array([0, 0, 0, 0, 1, 1, 1, 1]), "b": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    g = np.array([0.0, 0.2, 1.0, 1.2, 0.05, 0.15, 2.0, 2.2])     # setting means .1, 1.1, .1, 2.1
    c = np.array([10.0, 0, 11, 8, 5, 6, 20, 21])
    kw = dict(gaps={"loss": g}, hparams=hp, condition_on=["a", "b"], against=[], preset="jiang",
              gap="loss")
    e = score_population({"m": c}, **kw)["leaderboard"]["m"]
    assert e["sign_error"] == pytest.approx((0.25 + 1 + 0 + 0) / 4, abs=1e-12)
    assert e["robust_sign_error"] == 1.0
    assert e["sign_error_q90"] == pytest.approx(0.25 + 0.7 * 0.75, abs=1e-12)   # [0, 0, .25, 1] at 2.7
    # pooled seed SD: SS = 6 * 0.1^2 + 2 * 0.05^2 = 0.065 on 8 - 4 df; se of a difference of two
    # 2-model means = sd * sqrt(1/2 + 1/2) = 0.1275: z = 1.96 drops only S00-S10 (|diff| 0)
    f = score_population({"m": c}, seed_noise_z=1.96, **kw)["leaderboard"]["m"]
    assert f["sign_error"] == pytest.approx(0.25 / 3, abs=1e-12)
    assert f["robust_sign_error"] == 0.25
    assert f["sign_error_q90"] == pytest.approx(0.8 * 0.25, abs=1e-12)        # [0, 0, .25] at 1.8
    # |diff| of S00-S01 and S01-S11 is 1.0 = 7.84 se: z = 8 drops them too
    z8 = score_population({"m": c}, seed_noise_z=8.0, **kw)["leaderboard"]["m"]
    assert z8["robust_sign_error"] == 0.0 and z8["sign_error"] == 0.0


def test_robust_sign_error_defined_with_two_seeds_and_direction():
    """One model per setting: robust sign-error undefined, with the reason in "notes"; a
    second seed makes it the maximum over environments again. A measure ranking the models
    backwards reads direction -1 (its MI is as high as the perfect one's)."""
    c = np.array([1.0, 2, 3, 4])
    g = np.array([1.0, 3, 2, 4])
    hp = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0, 1])}
    one = score_population({"m": c, "reversed": -g, "flat": np.ones(4)}, {"acc": g}, hp, ["a", "b"], [],
                           preset="jiang")
    assert one["leaderboard"]["m"]["robust_sign_error"] is None
    assert "single pair" in one["notes"]["robust_sign_error"]
    assert [one["leaderboard"][k]["direction"] for k in ("m", "reversed", "flat")] == [1, -1, 0]
    # two seeds: settings hold two models; environment (a=0, b=0) vs (a=0, b=1) has 4 pairs
    c2 = np.concatenate([c, c + 0.5])
    g2 = np.concatenate([g, g[[1, 0, 3, 2]]])
    hp2 = {h: np.concatenate([v, v]) for h, v in hp.items()}
    two = score_population({"m": c2}, {"acc": g2}, hp2, ["a", "b"], [], preset="jiang")
    hp_py = {h: v.tolist() for h, v in hp2.items()}
    want = bf_score(c2.tolist(), g2.tolist(), hp_py, ["a", "b"], [], PRESETS["jiang"])
    assert two["leaderboard"]["m"]["robust_sign_error"] == pytest.approx(want["robust_sign_error"], abs=1e-12)
    assert 0 < want["robust_sign_error"] < 1 and two["notes"] == {}


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------

def _simple(n=200, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=n)
    hp = {"a": rng.integers(0, 2, n), "b": rng.integers(0, 3, n), "d": rng.choice([0.0, 0.3], n)}
    return rng, g, hp


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_perfect_and_reversed_predictor(preset):
    rng, g, hp = _simple()
    gaps = {"loss": g, "acc": g}
    over = {"cells": "shared"} if preset == "pgdl" else {}   # the program's self-pairs: see test_pgdl_*
    board = score_population({"perfect": 3 * g + 1, "reversed": -g}, gaps, hp, ["a", "b"], ["d"],
                             preset=preset, normalize=True, **over)["leaderboard"]
    for k in ("0", "1", "2"):
        assert board["perfect"]["mi"][k] == pytest.approx(1.0, abs=1e-12)
        assert board["perfect"]["mi_min"][k] == pytest.approx(1.0, abs=1e-12)
        assert board["reversed"]["mi"][k] == pytest.approx(1.0, abs=1e-12)
    assert board["perfect"]["kendall_tau"] == pytest.approx(1.0, abs=1e-12)
    assert board["reversed"]["kendall_tau"] == pytest.approx(-1.0, abs=1e-12)
    assert board["perfect"]["granulated_kendall"] == pytest.approx(1.0, abs=1e-12)
    assert board["reversed"]["granulated_kendall"] == pytest.approx(-1.0, abs=1e-12)
    assert board["perfect"]["sign_error"] == 0.0 and board["perfect"]["robust_sign_error"] == 0.0
    assert board["reversed"]["sign_error"] == 1.0


def test_independent_predictor_near_zero():
    rng, g, hp = _simple(n=400, seed=3)
    board = score_population({"noise": rng.normal(size=g.size)}, {"loss": g, "acc": g}, hp,
                             ["a", "b"], ["d"], preset="jiang")["leaderboard"]["noise"]
    assert board["mi"]["0"] < 0.01
    assert abs(board["kendall_tau"]) < 0.1
    assert abs(board["sign_error"] - 0.5) < 0.1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_invariant_under_increasing_transform(preset):
    rng, g, hp = _simple(n=120, seed=4)
    g = np.round(g, 1)
    m = np.round(rng.normal(size=g.size) + g, 1)
    gaps = {"loss": g, "acc": g}
    base = score_population({"m": m}, gaps, hp, ["a", "b"], ["d"], preset=preset)
    for f in (np.exp, lambda v: 5 * v - 2, lambda v: v ** 3 + v):
        assert score_population({"m": f(m)}, gaps, hp, ["a", "b"], ["d"], preset=preset) == base


def test_nan_measure_scores_on_finite_models():
    rng, g, hp = _simple(n=60, seed=6)
    m = g + rng.normal(size=g.size)
    m_nan = m.copy()
    m_nan[[3, 10, 11]] = np.nan
    keep = np.isfinite(m_nan)
    a = score_population({"m": m_nan}, {"loss": g, "acc": g}, hp, ["a", "b"], ["d"])["leaderboard"]["m"]
    b = score_population({"m": m[keep]}, {"loss": g[keep], "acc": g[keep]},
                         {h: v[keep] for h, v in hp.items()}, ["a", "b"], ["d"])["leaderboard"]["m"]
    assert a["n_models"] == 57
    assert a == b


def test_string_and_object_hyperparameters():
    rng = np.random.default_rng(7)
    n = 40
    g = rng.normal(size=n)
    act = np.array(rng.choice(["relu", "tanh"], n), dtype=object)
    depth = np.array([int(v) for v in rng.choice([11, 16, 19], n)], dtype=object)
    codes = {"relu": 0, "tanh": 1}
    # same partition into cells -> same scores for the same measure
    m = g + np.linspace(0, 1, n)
    a = score_population({"m": m}, {"loss": g, "acc": g}, {"act": act, "depth": depth}, ["act", "depth"], [])
    b = score_population({"m": m}, {"loss": g, "acc": g},
                         {"act": np.array([codes[v] for v in act]), "depth": depth.astype(float)},
                         ["act", "depth"], [])
    assert a["leaderboard"] == b["leaderboard"]


# ---------------------------------------------------------------------------------------
# bootstrap, options, output shape
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,over", [("jiang", {}), ("paper", {}), ("pgdl", {"cells": "shared"}),
                                         ("jiang", {"pair_weight": "hoeffding", "n_test": 200})])
def test_resample_skips_pairs_of_copies(preset, over):
    """A bootstrap resample repeats models; every score on it equals the brute force over
    the resampled rows with pairs of two copies of one model left out."""
    rng = np.random.default_rng(11)
    measures, gaps, hp = random_population(rng, 30)
    opts = resolve_options(preset, **over)
    idx = rng.integers(0, 30, 30)
    assert np.unique(idx).size < idx.size
    st = _structure(30, hp, ["a", "b", "c"], ["d"], 2, against_groups(opts, ["a", "b", "c"]))
    got = _score_once(idx, measures, gaps[opts.gap], st, opts, 2)
    hp_rows = {h: [v.tolist()[i] for i in idx] for h, v in hp.items()}
    for name, c in measures.items():
        want = bf_score([c[i] for i in idx], [gaps[opts.gap][i] for i in idx], hp_rows,
                        ["a", "b", "c"], ["d"], opts, orig=idx.tolist())
        got[name].pop("single_pair_envs")
        got[name].pop("sign.mi_hparam.d")
        assert_close(got[name], want)


def test_bootstrap_intervals():
    rng = np.random.default_rng(8)
    measures, gaps, hp = random_population(rng, 50)
    kw = dict(condition_on=["a", "b"], against=["d"], preset="paper")
    b0 = score_population(measures, gaps, hp, **kw)
    assert all(e["ci"] == {} for e in b0["leaderboard"].values())
    b1 = score_population(measures, gaps, hp, bootstrap=30, seed=3, **kw)
    b2 = score_population(measures, gaps, hp, bootstrap=30, seed=3, **kw)
    b3 = score_population(measures, gaps, hp, bootstrap=30, seed=4, **kw)
    assert b1 == b2 and b1 != b3
    e = b1["leaderboard"]["m3"]
    assert set(e["ci"]) == set(score_paths(2, ["d"]))
    for path, (lo, hi) in e["ci"].items():
        if lo is not None:
            assert lo <= hi
    lo, hi = e["ci"]["kendall_tau"]
    assert lo <= e["kendall_tau"] <= hi
    # point estimates do not depend on bootstrapping
    for name in measures:
        assert {k: v for k, v in b1["leaderboard"][name].items() if k != "ci"} == \
               {k: v for k, v in b0["leaderboard"][name].items() if k != "ci"}


def test_output_shape_and_json():
    rng = np.random.default_rng(10)
    measures, gaps, hp = random_population(rng, 30)
    board = score_population(measures, gaps, hp, ["a", "b", "c"], ["d"], preset="pgdl", bootstrap=5)
    assert json.loads(json.dumps(board)) == board
    assert board["preset"] == "pgdl" and board["n_models"] == 30
    assert board["options"]["gap"] == "acc" and board["options"]["tie_rule"] == "lump"
    e = board["leaderboard"]["m1"]
    assert set(e) == {"mi", "mi_min", "mi_hparam", "kendall_tau", "granulated_kendall",
                      "sign_error", "robust_sign_error", "sign_error_q90", "direction", "n_models", "ci"}
    assert list(e["mi"]) == ["0", "1", "2"] and list(e["mi_hparam"]) == ["d"]
    assert e["n_models"] == 29
    one = score_population(measures, gaps, hp, ["a"], [], preset="pgdl")
    assert list(one["leaderboard"]["m1"]["mi"]) == ["0", "1"]


def test_options_validation():
    measures, gaps, hp = random_population(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match="unknown scoring preset"):
        score_population(measures, gaps, hp, ["a"], [], preset="nope")
    with pytest.raises(TypeError, match="valid options"):
        score_population(measures, gaps, hp, ["a"], [], bogus=1)
    with pytest.raises(ValueError, match="tie_rule"):
        score_population(measures, gaps, hp, ["a"], [], tie_rule="ignore")
    with pytest.raises(KeyError):
        score_population(measures, gaps, hp, ["zzz"], [])
    with pytest.raises(KeyError):
        score_population(measures, {"loss": gaps["loss"]}, hp, ["a"], [], preset="pgdl")
    assert resolve_options("paper", normalize=True).normalize is True
    assert PRESETS["paper"].normalize is False          # presets are frozen, never mutated


def test_presets_as_documented():
    p, j, g = PRESETS["paper"], PRESETS["jiang"], PRESETS["pgdl"]
    assert (p.normalize, p.log_base, p.tie_rule, p.gap_tol, p.cell_reduce, p.reduce, p.gap) == \
           (False, 2.0, "drop", 1e-4, "mean", "mean", "loss")
    assert (j.normalize, j.cell_reduce, j.reduce) == (True, "pool", "min")
    assert (g.normalize, g.reduce, g.gap) == (True, "min", "acc")


def test_no_torch_import():
    for rel in ("genbench/scoring.py", "genbench/leaderboard.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "torch" for a in node.names), rel
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "torch", rel


# ---------------------------------------------------------------------------------------
# the paper's rules (Jin et al. 2022, Table 2), written out independently
# ---------------------------------------------------------------------------------------

def paper_rules(c, g, hp, cond, against):
    """Table 2 as the authors' rules state it, one ordered pair at a time: unnormalized MI in
    bits of (sign dc, sign dGG) over pairs not tied in c and with |dGG| > 1e-4; per cell of
    omega, a cell whose pairs are all dropped counts as MI 0; mean over cells, then over the
    omegas of each size. Dropout column: MI of (sign dc, sign d dropout) within groups of
    models sharing every conditioned hp but batch size and lr, mean over groups."""
    n = len(c)

    def mi_bits(pairs):
        if not pairs:
            return 0.0
        joint = {}
        for p in pairs:
            joint[p] = joint.get(p, 0) + 1
        W = len(pairs)
        pa = {a: sum(k for (x, _), k in joint.items() if x == a) / W for a in (-1, 1)}
        pb = {b: sum(k for (_, y), k in joint.items() if y == b) / W for b in (-1, 1)}
        return sum(k / W * math.log2((k / W) / (pa[a] * pb[b])) for (a, b), k in joint.items())

    def groups(names):
        out = {}
        for i in range(n):
            out.setdefault(tuple(hp[h][i] for h in names), []).append(i)
        return [v for v in out.values() if len(v) > 1]

    def sign(v):
        return (v > 0) - (v < 0)

    r = {}
    for k in range(3):
        per_omega = []
        for omega in itertools.combinations(cond, k):
            per_cell = []
            for cell in groups(omega):
                pairs = [(sign(c[i] - c[j]), sign(g[i] - g[j])) for i in cell for j in cell
                         if i != j and c[i] != c[j] and abs(g[i] - g[j]) > 1e-4]
                per_cell.append(mi_bits(pairs))
            per_omega.append(sum(per_cell) / len(per_cell))
        r[k] = sum(per_omega) / len(per_omega)
    fixed = [h for h in cond if h not in ("batch_size", "train.batch_size", "lr", "train.lr")]
    for h in against:
        per_group = []
        for grp in groups(fixed):
            pairs = [(sign(c[i] - c[j]), sign(hp[h][i] - hp[h][j])) for i in grp for j in grp
                     if i != j and c[i] != c[j] and hp[h][i] != hp[h][j]]
            per_group.append(mi_bits(pairs))
        r[h] = sum(per_group) / len(per_group)
    return r


def test_paper_preset_equals_the_authors_rules():
    """A 2 x 2 x 2 x 3 grid, two seeds, with a measure that is constant on some cells (all
    pairs tied: MI 0 under the paper's rule), gaps tied within 1e-4, and hp names in both
    spellings the authors' rule must recognise."""
    rng = np.random.default_rng(21)
    grid = list(itertools.product([64, 256], [0.1, 0.03], [1, 2], [0.0, 0.15, 0.3], [0, 1]))
    n = len(grid)
    hp = {"train.batch_size": np.array([t[0] for t in grid]), "lr": np.array([t[1] for t in grid]),
          "depth": np.array([t[2] for t in grid]), "dropout": np.array([t[3] for t in grid])}
    g = np.round(rng.normal(size=n), 1) + rng.choice([0.0, 5e-5], n)      # ties and near-ties
    coarse = np.where(hp["depth"] == 1, 1.0, np.round(g + rng.normal(size=n), 0))  # constant on depth 1
    dropout_led = hp["dropout"] * 4 + np.round(rng.normal(size=n), 0) + hp["depth"]
    measures = {"coarse": coarse, "dropout_led": dropout_led, "noisy": np.round(rng.normal(size=n), 1)}
    cond = ["train.batch_size", "lr", "depth"]
    board = score_population(measures, {"loss": g}, hp, cond, ["dropout"], preset="paper")
    assert board["options"]["against_within"] == ["depth"]
    hp_py = {h: v.tolist() for h, v in hp.items()}
    for name, c in measures.items():
        want = paper_rules(c.tolist(), g.tolist(), hp_py, cond, ["dropout"])
        e = board["leaderboard"][name]
        for k in range(3):
            assert e["mi"][str(k)] == pytest.approx(want[k], abs=1e-12), (name, k)
        assert e["mi_hparam"]["dropout"] == pytest.approx(want["dropout"], abs=1e-12), name
    # the zero cells matter: skipping them (the old rule) reads higher for 'coarse'
    skip = score_population(measures, {"loss": g}, hp, cond, ["dropout"], preset="paper",
                            empty_cell="skip")["leaderboard"]["coarse"]
    assert skip["mi"]["2"] > board["leaderboard"]["coarse"]["mi"]["2"]
    # and the groups matter: over all pairs the Dropout column differs
    pooled = score_population(measures, {"loss": g}, hp, cond, ["dropout"], preset="paper",
                              against_within=[])["leaderboard"]["dropout_led"]
    assert pooled["mi_hparam"]["dropout"] != pytest.approx(
        board["leaderboard"]["dropout_led"]["mi_hparam"]["dropout"], abs=1e-3)


# ---------------------------------------------------------------------------------------
# the PGDL organizers' scoring program, transcribed
# ---------------------------------------------------------------------------------------

def pgdl_program(pred, train_acc, test_acc, hp, names):
    """The rules of the NeurIPS 2020 PGDL scoring program, written plainly from a reading of
    ``scoring_program/mutual_information.py`` (public copy: github.com/cadurosar/pgdl, commit
    1a012efd), ``conditional_mutual_information``:

    - gap = train_acc - test_acc;
    - for every ordered pair (h1, h2) of distinct hyperparameter names: one 2 x 2 table per
      name str(v)+str(w) (per hp, v, w over its values, names concatenated across h1, h2);
      every ordered model pair (i, j), i == j included, goes to the table named by
      (h1_i, h1_j, h2_i, h2_j), at ([gap_i > gap_j], [pred_i > pred_j]);
    - per table: MI in bits and the entropy of the gap marginal, -sum p log2(p + 1e-12);
      an empty table gives NaN (0 / 0);
    - value = mean MI over all tables / mean entropy over all tables;
    - result: m = inf; m = min(value, m) over the (h1, h2) in order (Python's min).
    """
    n = len(pred)
    gap = [train_acc[i] - test_acc[i] for i in range(n)]
    values = {h: list(dict.fromkeys(hp[h])) for h in names}

    def table_value(h1, h2):
        tables = {}
        for n1 in [str(v) + str(w) for v in values[h1] for w in values[h1]]:
            for n2 in [str(v) + str(w) for v in values[h2] for w in values[h2]]:
                tables.setdefault(n1 + n2, [[0, 0], [0, 0]])
        n_tables = len(values[h1]) ** 2 * len(values[h2]) ** 2    # the program's third axis
        for i in range(n):
            for j in range(n):
                key = str(hp[h1][i]) + str(hp[h1][j]) + str(hp[h2][i]) + str(hp[h2][j])
                tables[key][int(gap[i] > gap[j])][int(pred[i] > pred[j])] += 1
        if len(tables) < n_tables:                               # names collided: empty tables
            return math.nan
        mis, hs = [], []
        for t in tables.values():
            total = sum(map(sum, t))
            if total == 0:
                return math.nan
            row = [sum(t[a]) / total for a in (0, 1)]
            col = [(t[0][b] + t[1][b]) / total for b in (0, 1)]
            mi = sum(t[a][b] / total * math.log2((t[a][b] / total) / (row[a] * col[b]))
                     for a in (0, 1) for b in (0, 1) if t[a][b])
            mis.append(mi)
            hs.append(-sum(p * math.log2(p + 1e-12) for p in row))
        return (sum(mis) / len(mis)) / (sum(hs) / len(hs))

    m = math.inf
    for h1 in names:
        for h2 in names:
            if h1 != h2:
                m = min(table_value(h1, h2), m)
    return m


def pgdl_table(seed, drop=None, values=(2, 3, 2)):
    """A grid (values per hp) x 2 seeds with tied accuracies and tied measures; ``drop``: leave
    out the models whose first hp indices equal it."""
    rng = np.random.default_rng(seed)
    grid = [t for t in itertools.product(*[range(k) for k in values], range(2))
            if drop is None or t[:len(drop)] != drop]
    hp = {"depth": [t[0] + 1 for t in grid], "width": [[0.5, 1.0, 2.0][t[1]] for t in grid],
          "act": [["relu", "tanh"][t[2]] for t in grid]}
    n = len(grid)
    train_acc = np.round(0.9 + 0.1 * rng.random(n), 2)
    test_acc = np.round(train_acc - 0.2 * rng.random(n) * (1 + np.array(hp["depth"])) / 3, 2)
    gap = train_acc - test_acc
    measures = {"good": np.round(gap * 10 + rng.normal(size=n), 0),
                "ties": rng.integers(0, 3, n).astype(float),
                "reversed": -gap}
    return measures, train_acc, test_acc, hp


@pytest.mark.parametrize("case", ["full", "missing_cell"])
def test_pgdl_preset_equals_the_program(case):
    measures, tr, te, hp = pgdl_table(31, drop=(1, 2) if case == "missing_cell" else None)
    names = ["depth", "width", "act"]
    hp_np = {h: np.array(v, dtype=object) for h, v in hp.items()}
    board = score_population(measures, {"acc": tr - te}, hp_np, names, [], preset="pgdl")
    for name, c in measures.items():
        want = pgdl_program(c.tolist(), tr.tolist(), te.tolist(), hp, names)
        got = board["leaderboard"][name]["mi_min"]["2"]
        if math.isnan(want):
            assert got is None, (name, got)
        else:
            assert got == pytest.approx(want, abs=1e-9), name


def test_pgdl_program_quirks():
    """Values the transcription gave once (numbers written down below), and the quirks: a
    missing cell makes a subset NaN, and the NaN resets the program's running minimum;
    hp values whose names collide ("1"+"11" == "11"+"1") leave a table empty."""
    measures, tr, te, hp = pgdl_table(31)
    names = ["depth", "width", "act"]
    hp_np = {h: np.array(v, dtype=object) for h, v in hp.items()}
    board = score_population(measures, {"acc": tr - te}, hp_np, names, [], preset="pgdl")
    lb = board["leaderboard"]
    # computed once with pgdl_program on pgdl_table(31) (full grid)
    assert lb["good"]["mi_min"]["2"] == pytest.approx(PGDL_FULL_GOOD, abs=1e-9)
    assert lb["reversed"]["mi_min"]["2"] == pytest.approx(PGDL_FULL_REVERSED, abs=1e-9)
    # a backwards measure is not 1 under the program: self-pairs and ties sit in (not >, not >)
    assert lb["reversed"]["mi_min"]["2"] < 0.9
    # missing cell (depth 2, width 2.0): subset {depth, width} is NaN. In the order
    # (width, act, depth) the program visits (width, act), (width, depth) NaN, (act, width),
    # (act, depth), (depth, width) NaN, (depth, act): only {depth, act} follows the last NaN,
    # so the result is that subset's value alone, though {width, act} may be lower.
    m2, tr2, te2, hp2 = pgdl_table(31, drop=(1, 2))
    hp2_np = {h: np.array(v, dtype=object) for h, v in hp2.items()}
    order = ["width", "act", "depth"]
    b2 = score_population(m2, {"acc": tr2 - te2}, hp2_np, order, [], preset="pgdl")["leaderboard"]
    alone = score_population(m2, {"acc": tr2 - te2}, hp2_np, ["act", "depth"], [], preset="pgdl")
    for name in m2:
        want = pgdl_program(m2[name].tolist(), tr2.tolist(), te2.tolist(), hp2, order)
        assert b2[name]["mi_min"]["2"] == pytest.approx(want, abs=1e-9)
        assert b2[name]["mi_min"]["2"] == pytest.approx(alone["leaderboard"][name]["mi_min"]["2"], abs=1e-12)
    # colliding names: depth values 1 and 11
    hp3 = dict(hp, depth=[1 if d == 1 else 11 for d in hp["depth"]])
    hp3_np = {h: np.array(v, dtype=object) for h, v in hp3.items()}
    b3 = score_population(measures, {"acc": tr - te}, hp3_np, ["width", "depth"], [], preset="pgdl")
    assert math.isnan(pgdl_program(measures["good"].tolist(), tr.tolist(), te.tolist(), hp3,
                                   ["width", "depth"]))
    assert b3["leaderboard"]["good"]["mi_min"]["2"] is None


PGDL_FULL_GOOD = 0.10516876779467693        # pgdl_program on pgdl_table(31), 2026-12-01
PGDL_FULL_REVERSED = 0.6760370045293264


# ---------------------------------------------------------------------------------------
# interval coverage against a known truth
# ---------------------------------------------------------------------------------------

def coverage_population(rng, n, rho):
    """(measure, gap) bivariate normal with correlation rho, no ties: Kendall's tau is
    (2/pi) arcsin(rho) (Greiner's relation), and with both orientations of every pair the
    sign-MI in bits is 1 - H_b((1 + tau)/2)."""
    z = rng.normal(size=(n, 2))
    c = z[:, 0]
    g = rho * z[:, 0] + math.sqrt(1 - rho * rho) * z[:, 1]
    return {"m": c}, {"loss": g, "acc": g}, {"a": rng.integers(0, 2, n)}


def coverage(interval, draws, n=40, rho=0.5, resamples=39, seed=0):
    """Share of draws whose 95% interval covers the closed-form truth, for MI and tau.
    39 resamples: the 95% interval is then the smallest and largest of them ((B + 1) alpha = 1)."""
    tau = 2 / math.pi * math.asin(rho)
    truth = {"mi.0": 1 - hb((1 + tau) / 2), "kendall_tau": tau}
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in truth}
    for d in range(draws):
        measures, gaps, hp = coverage_population(rng, n, rho)
        board = score_population(measures, gaps, hp, [], [], preset="jiang", max_omega=0,
                                 bootstrap=resamples, seed=d, interval=interval)
        for k, t in truth.items():
            lo, hi = board["leaderboard"]["m"]["ci"][k]
            hits[k] += lo <= t <= hi
    return {k: v / draws for k, v in hits.items()}


@pytest.mark.parametrize("rho,draws", [(0.5, 200), (0.0, 100)])
def test_subsample_interval_covers_the_truth(rho, draws):
    """The default interval covers the closed-form truth in about 95% of draws: at least
    0.90 of 200 (3.2 binomial standard errors below 0.95) or 0.88 of 100. At rho = 0 the true
    MI, 0, sits on the boundary: only the signed, folded interval can reach it (a percentile
    interval of unsigned MI never does). benchmarks/bench_intervals.py measures more cases."""
    cov = coverage("subsample", draws=draws, rho=rho)
    bar = 0.90 if draws >= 200 else 0.88
    assert cov["mi.0"] >= bar and cov["kendall_tau"] >= bar, cov


# ---------------------------------------------------------------------------------------
# convergence: unconverged models are left out of the scores by default
# ---------------------------------------------------------------------------------------

def test_converged_rule():
    from genbench.suite import TrainRecipe
    from genbench.training import converged

    assert converged({"train_loss": 0.9, "train_acc": 0.1}, TrainRecipe())       # no target
    loss = TrainRecipe(stop_train_loss=0.05)
    assert converged({"train_loss": 0.05, "train_acc": 0.5}, loss)
    assert not converged({"train_loss": 0.0501, "train_acc": 1.0}, loss)
    acc = TrainRecipe(stop_train_acc=0.99)
    assert converged({"train_loss": 2.0, "train_acc": 0.995}, acc)
    assert not converged({"train_loss": 0.0, "train_acc": 0.98}, acc)


def test_score_rows_leaves_out_unconverged():
    from genbench.plugins import get_registry
    from genbench.runner import score_rows
    from genbench.suite import load_suite

    suite = load_suite("default", get_registry())
    rng = np.random.default_rng(4)
    grid = list(itertools.product(*[sorted(set(v)) for v in suite.grid.values()]))
    rows = []
    for i, values in enumerate(grid):
        gap = float(rng.normal())
        rows.append({"hparams": dict(zip(suite.grid, values)), "gap": gap, "acc_gap": gap / 10,
                     "converged": i % 5 != 0,
                     "measures": {m: float(gap + rng.normal()) for m in suite.measures}})
    board = score_rows(rows, suite)
    kept = [r for r in rows if r["converged"]]
    assert board["left_out"] == {"unconverged": len(rows) - len(kept)} and board["n_models"] == len(kept)
    m = suite.measures[0] if isinstance(suite.measures, list) else next(iter(suite.measures))
    want = score_population({m: np.array([r["measures"][m] for r in kept])},
                            {"loss": np.array([r["gap"] for r in kept]),
                             "acc": np.array([r["acc_gap"] for r in kept])},
                            {h: np.array([r["hparams"][h] for r in kept], dtype=object) for h in suite.grid},
                            suite.condition_on(), suite.against(), preset=suite.scoring.preset)
    assert board["leaderboard"][m] == want["leaderboard"][m]
    both = score_rows(rows, suite, include_unconverged=True)
    assert both["left_out"] == {"unconverged": 0} and both["n_models"] == len(rows)

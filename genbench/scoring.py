"""Score generalization measures against a population of trained models.

Every score here is a statistic of *pairs* of models (paper Appendix K.1; Jiang et al.
2019; Dziugaite et al. 2020). With n models there are n(n-1) ordered pairs, so a
loop over pairs is hopeless at the population sizes a benchmark wants. Everything
below is built on one counting engine, :func:`pair_counts`, which returns, for many
groups of models at once, the numbers of concordant, discordant and tied unordered
pairs in O(N log^2 N) numpy work (N = total elements over all groups) and no
Python loop over pairs or cells. Every score is a closed-form function of those
counts, because counting both orientations of every pair makes the joint sign
table symmetric: (+,+) and (-,-) both occur C times, (+,-) and (-,+) both D times.

Conventions (docs/scoring.md states them in full):

* sign(x) with a tolerance for the gap: a pair is *tied in the gap* when
  |gap_i - gap_j| <= gap_tol (evaluated as ``gap_j <= gap_i + gap_tol`` for
  gap_i <= gap_j); ties in the measure and in hyperparameters are exact.
* ``tie_rule`` says what a tied pair (sign 0 on either side) does:
  ``"category"`` - sign 0 is a third value of V (3x3 table), Kendall's tau is tau-b,
  a tied pair costs 1/2 in the sign-error; ``"drop"`` - the pair is removed from
  every score; ``"lump"`` - MI uses the binary variable [difference > 0] (the PGDL
  scoring program's rule: a tie counts as "not greater"); tau and sign-error then
  treat ties as ``"category"`` does.
* Conditional MI uses only pairs whose two models share every hyperparameter
  of omega (one "cell" per combination of values), reduced over cells by
  ``cell_reduce`` and over the subsets omega of each size by both the mean
  (``mi``) and the minimum (``mi_min``).

* Intervals (:func:`_intervals`): bias-corrected percentiles of half-samples without
  replacement, MI signed by its direction; the old bootstrap resamples with replacement
  and skips a pair of two copies of one model (not a pair of distinct models).
* Sign-error: mean, maximum and 90th percentile of the environments' losses; environments
  whose gap effect is within seed noise can be dropped (``seed_noise_z``).

This module imports numpy only (never torch) so that scoring a stored population
is instant and works on any machine.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["ScoreOptions", "PRESETS", "resolve_options", "against_groups", "BUT_BATCH_LR", "score_population", "pair_counts",
           "PairCounts", "score_paths"]

_NORMAL = NormalDist()
_GAPS = ("loss", "acc")
_TIE_RULES = ("category", "drop", "lump")
_CELL_REDUCE = ("mean", "pool", "pool_unweighted")
_REDUCE = ("mean", "min")
_PAIR_WEIGHT = ("none", "hoeffding")
_EMPTY = ("skip", "zero")
_CELLS = ("shared", "value_pairs")
_INTERVALS = ("subsample", "bootstrap")
#: ``against_within`` value: hold fixed every conditioned hp except batch size and lr
BUT_BATCH_LR = "all_but_batch_size_lr"
_BATCH_LR = ("batch_size", "train.batch_size", "lr", "train.lr")


@dataclass(frozen=True)
class ScoreOptions:
    """Every convention that changes a score, explicit so that a number can be
    reproduced (published tables used different ones; see docs/scoring.md)."""

    gap: str = "loss"               # which generalization gap: "loss" (test - train loss) or "acc" (train - test acc)
    normalize: bool = True          # divide I(V_co; V_pa | U) by H(V_pa | U)
    log_base: float = 2.0           # unit of unnormalized MI (2 = bits); irrelevant when normalized
    tie_rule: str = "category"      # "category" | "drop" | "lump" (module docstring)
    gap_tol: float = 0.0            # |delta gap| <= gap_tol counts as a tie in the gap
    cell_reduce: str = "pool"       # over cells of one omega: "pool" (p(cell)-weighted, Jiang's
                                    # conditional MI), "mean" (mean of per-cell scores, the paper's),
                                    # "pool_unweighted" (mean I / mean H, the PGDL scoring program's)
    reduce: str = "mean"            # the subset reduction the preset's published table used; both
                                    # "mi" (mean) and "mi_min" (minimum) are always reported
    ci_level: float = 0.95          # interval level
    pair_weight: str = "none"       # sign-error pair weights: "none" | "hoeffding" (Dziugaite et al.)
    n_test: int = 10000             # test-set size behind the Hoeffding weight
    weight_shift: float = 0.5       # Dziugaite's weight is (hoeffding - weight_shift)_+
    min_ess: float = 0.0            # drop sign-error environments with effective sample size below this
    seed_noise_z: float = 0.0       # drop environments whose settings' mean gaps differ by <= z standard
                                    # errors of seed noise (0: keep all; docs/scoring.md "Sign-error")
    empty_cell: str = "skip"        # a cell with no counted pair: "skip" it, or count it as MI "zero" (the paper's)
    against_within: tuple[str, ...] | str = ()  # MI with an 'against' hp within groups of models sharing
                                    # these hps, reduced over groups like cells; BUT_BATCH_LR = every
                                    # condition_on hp except batch size and lr (the authors' rule)
    interval: str = "subsample"     # "subsample": percentiles of half-samples without replacement,
                                    # MI signed (docs/scoring.md); "bootstrap": percentile bootstrap
    cells: str = "shared"           # a cell's pairs: "shared" (both models share omega's values) or
                                    # "value_pairs" (all ordered pairs, self-pairs too, one cell per pair
                                    # of values: the PGDL scoring program's tables)

    def __post_init__(self) -> None:
        checks = [("gap", self.gap, _GAPS), ("tie_rule", self.tie_rule, _TIE_RULES),
                  ("cell_reduce", self.cell_reduce, _CELL_REDUCE), ("reduce", self.reduce, _REDUCE),
                  ("pair_weight", self.pair_weight, _PAIR_WEIGHT), ("empty_cell", self.empty_cell, _EMPTY),
                  ("cells", self.cells, _CELLS), ("interval", self.interval, _INTERVALS)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"ScoreOptions.{name}={value!r}: choose one of {list(allowed)}")
        if isinstance(self.against_within, str):
            if self.against_within != BUT_BATCH_LR:
                raise ValueError(f"ScoreOptions.against_within={self.against_within!r}: give a list of "
                                 f"hyperparameters or {BUT_BATCH_LR!r}")
        else:
            object.__setattr__(self, "against_within", tuple(self.against_within))
        if self.cells == "value_pairs" and (self.tie_rule != "lump" or self.gap_tol != 0):
            raise ValueError("ScoreOptions.cells='value_pairs' (the PGDL program's tables) needs "
                             "tie_rule='lump' and gap_tol=0")
        if not (self.log_base > 0 and self.log_base != 1):
            raise ValueError(f"ScoreOptions.log_base={self.log_base!r} must be > 0 and != 1")
        if not self.gap_tol >= 0:
            raise ValueError(f"ScoreOptions.gap_tol={self.gap_tol!r} must be >= 0")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ScoreOptions.ci_level={self.ci_level!r} must be in (0, 1)")
        if self.n_test < 1 or self.min_ess < 0 or not 0 <= self.weight_shift < 1 or not self.seed_noise_z >= 0:
            raise ValueError("ScoreOptions: need n_test >= 1, min_ess >= 0, 0 <= weight_shift < 1, "
                             "seed_noise_z >= 0")


#: Named presets over the one implementation (docs/scoring.md says which table each matches).
PRESETS: dict[str, ScoreOptions] = {
    # Jin et al. 2022, Tables 2/12/14: unnormalized MI in bits; pairs tied in the measure or
    # with |delta GG| <= 1e-4 dropped; mean over cells, then mean over subsets; loss gap.
    # A cell with no counted pair counts as MI 0; the Dropout column is the mean over groups
    # of models sharing every conditioned hp except batch size and lr.
    "paper": ScoreOptions(gap="loss", normalize=False, log_base=2.0, tie_rule="drop",
                          gap_tol=1e-4, cell_reduce="mean", reduce="mean", empty_cell="zero",
                          against_within=BUT_BATCH_LR),
    # Jiang et al. 2019 (Fantastic generalization measures): normalized conditional MI
    # I(V;V_g|U_S)/H(V_g|U_S) pooled over cells with weight p(cell), minimum over subsets;
    # the gap is the 0-1 error gap.
    "jiang": ScoreOptions(gap="acc", normalize=True, log_base=2.0, tie_rule="category",
                          gap_tol=0.0, cell_reduce="pool", reduce="min"),
    # NeurIPS 2020 PGDL competition, as its scoring program computes it: normalized
    # conditional MI at |S| = 2, minimum over subsets, accuracy gap, binary "greater / not
    # greater" signs, every ordered pair (self-pairs too) in the cell of its pair of values,
    # mean I over cells divided by mean H over cells.
    "pgdl": ScoreOptions(gap="acc", normalize=True, log_base=2.0, tie_rule="lump",
                         gap_tol=0.0, cell_reduce="pool_unweighted", reduce="min",
                         cells="value_pairs"),
}


def resolve_options(preset: str = "paper", **overrides: Any) -> ScoreOptions:
    """The preset with explicit overrides applied; unknown names fail loudly."""
    if preset not in PRESETS:
        raise ValueError(f"unknown scoring preset {preset!r}; choose one of {sorted(PRESETS)}")
    valid = {f.name for f in fields(ScoreOptions)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"unknown scoring option(s) {bad}; valid options: {sorted(valid)}")
    return replace(PRESETS[preset], **overrides)


def against_groups(opts: ScoreOptions, condition_on: list[str]) -> list[str]:
    """The hyperparameters held fixed for the MI with an 'against' hp (``against_within``)."""
    if opts.against_within == BUT_BATCH_LR:
        return [h for h in condition_on if h not in _BATCH_LR]
    return list(opts.against_within)


# ---------------------------------------------------------------------------------------
# Pair-counting engine
# ---------------------------------------------------------------------------------------

@dataclass
class PairCounts:
    """Unordered-pair counts per group (float64 arrays, exact below 2**53).

    P: pairs; tx: tied in x; ty: tied in y (within tolerance); tb: tied in both;
    C: x and y strictly ordered the same way; D: ordered opposite ways.
    Every pair is exactly one of C, D, (tx - tb), (ty - tb), tb.
    """

    P: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    tb: np.ndarray
    C: np.ndarray
    D: np.ndarray

    def __getitem__(self, sl: slice) -> PairCounts:
        return PairCounts(self.P[sl], self.tx[sl], self.ty[sl], self.tb[sl], self.C[sl], self.D[sl])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Dense integer ranks (0-based) of float values; equal values share a rank."""
    _, inv = np.unique(x, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def _tol_ranks(y: np.ndarray, tol: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of y and of y + tol in their joint order.

    Ranking y and y + tol together turns the float tests of the tie rule into exact
    integer comparisons: y_j > y_i + tol  <=>  ry_j > rq_i, and y_i <= y_j <= y_i + tol
    <=> ry_i <= ry_j <= rq_i (the documented evaluation ``max <= min + tol``).
    """
    y = np.asarray(y, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), y.shape)
    if not np.any(tol > 0):
        r = _ranks(y)
        return r, r
    r = _ranks(np.concatenate([y, y + tol]))
    return r[: y.size], r[y.size:]


def _count_earlier_greater(x: np.ndarray, q: np.ndarray, base: int = 32,
                           monotone: bool = False) -> np.ndarray:
    """For every position k, the number of earlier positions l < k with x[l] > q[k].

    Bottom-up merge sort over 2^L blocks of B (base/2 < B <= base) positions, padded: blocks
    are one broadcast comparison each; at each level above, the two sorted halves of a block
    are merged by one timsort (block index folded into the key). A right-half element k
    then counts the left-half elements above q[k]. With ``monotone`` (the caller promises
    x_a <= x_b => q_a <= q_b, as y and y + tol are), the right half sorted by x is sorted by
    q too, so a stable merge of the lefts' x with the rights' q puts before k exactly the
    lefts <= q[k]: k's count is its index before that merge minus its index after (one more
    timsort; when q == x it is the merge itself). Otherwise one searchsorted. O(N log N)
    numpy work per level, L Python iterations.
    """
    x = np.asarray(x, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    n = x.size
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    exact = bool(np.array_equal(x, q))
    monotone = monotone or exact
    R = int(max(x.max(), q.max())) + 2
    if (n // 2 + 1) * R >= 2 ** 62:              # keep blk * R + value inside int64
        r = _ranks(np.concatenate([x, q]))
        x, q, R = r[:n], r[n:], int(r.max()) + 2
    levels = max(0, (n - 1).bit_length() - base.bit_length() + 1)   # 2^levels blocks
    B = -(-n >> levels)                         # = ceil(n / 2^levels), in [base/2, base]
    npad = B << levels
    dt = np.int32 if (npad // 2 + 1) * R < 2 ** 31 else np.int64   # int32 when it fits
    # values shifted to 1..R-1 so that padding (0) is never greater than a query and its
    # block-prefixed key never reaches into the previous block's key range
    xp = np.zeros(npad, dtype=dt)
    xp[:n] = x + 1
    qp = np.zeros(npad, dtype=dt)               # padding's own counts are discarded; q = 0
                                                # keeps q non-decreasing in x for ``monotone``
    qp[:n] = q + 1
    X = xp.reshape(-1, B)
    Q = qp.reshape(-1, B)
    earlier = np.tri(B, B, -1, dtype=bool)      # earlier[k, l]: l < k
    cnt = np.empty((X.shape[0], B), dtype=np.int64)
    step = max(1, (1 << 20) // (B * B))         # rows per slice: bounded memory
    for r0 in range(0, X.shape[0], step):
        xs, qs = X[r0:r0 + step], Q[r0:r0 + step]
        cnt[r0:r0 + step] = ((xs[:, None, :] > qs[:, :, None]) & earlier).view(np.uint8).sum(
            axis=2, dtype=np.uint8 if B < 256 else np.int64)     # byte sums: B < 256 fits
    out = cnt.reshape(-1)
    order = np.argsort(X, axis=1, kind="stable")
    idx = (order + (np.arange(X.shape[0], dtype=np.int64) * B)[:, None]).reshape(-1)
    vals = xp[idx]
    pos = np.arange(npad, dtype=np.int64)
    after = np.empty(npad, dtype=np.int64)
    w = B
    while w < npad:
        nb = npad // (2 * w)
        offs = (np.arange(nb, dtype=dt) * R)[:, None]
        key = (vals.reshape(nb, 2 * w) + offs).reshape(-1)
        ri = idx.reshape(nb, 2, w)[:, 1, :].reshape(-1)
        order = np.argsort(key, kind="stable")  # timsort: merges the two sorted runs per block
        if monotone:
            if exact:
                after[order] = pos
            else:                               # lefts' x against the rights' q, lefts first on ties
                qkey = key.reshape(nb, 2, w).copy()
                qkey[:, 1, :] = qp[ri].reshape(nb, w) + offs
                after[np.argsort(qkey.reshape(-1), kind="stable")] = pos
            out[ri] += (pos.reshape(nb, 2, w)[:, 1, :] - after.reshape(nb, 2, w)[:, 1, :]).reshape(-1)
        else:
            lkeys = key.reshape(nb, 2, w)[:, 0, :].reshape(-1)  # sorted: blocks in order
            lo = np.searchsorted(lkeys, (qp[ri].reshape(nb, w) + offs).reshape(-1), side="right")
            out[ri] += np.repeat(np.arange(1, nb + 1, dtype=np.int64) * w, w) - lo
        vals = vals[order]
        idx = idx[order]
        w *= 2
    return out[:n]


def _close_pairs_sorted(key: np.ndarray, qkey: np.ndarray, owner: np.ndarray, n_owner: int,
                        has_tol: bool) -> np.ndarray:
    """Per owner: unordered pairs (i, j) with key_i <= key_j <= qkey_i, for ``key`` sorted
    ascending and qkey the same element's upper bound (same group encoded in both)."""
    new = np.empty(key.size, dtype=bool)
    new[:1] = True
    new[1:] = key[1:] != key[:-1]
    t = np.bincount(np.cumsum(new) - 1).astype(np.float64)
    out = np.bincount(owner[new], weights=t * (t - 1) / 2, minlength=n_owner)   # exact ties
    if has_tol:                     # j past i's run of equal keys, up to qkey_i
        run_end = np.append(np.flatnonzero(new)[1:], key.size)[np.cumsum(new) - 1]
        cnt = np.searchsorted(key, qkey, side="right") - run_end
        out += np.bincount(owner, weights=cnt.astype(np.float64), minlength=n_owner)
    return out


_kendall_dis: Any = "not loaded"


def _fenwick() -> Any:
    """scipy.stats.kendalltau's own compiled Fenwick-tree count of discordant pairs, or None
    (a scipy without it: the numpy merge sort counts). Imported on first use: importing
    scipy.stats takes about 0.7 s, paid only by populations with groups of 64 models or more."""
    global _kendall_dis
    if isinstance(_kendall_dis, str):
        try:
            from scipy.stats._stats import _kendall_dis as found
        except ImportError:  # pragma: no cover
            found = None
        _kendall_dis = found
    return _kendall_dis


def _discordant(gs: np.ndarray, xs: np.ndarray, yk: np.ndarray, rank: np.ndarray,
                size: np.ndarray, n_groups: int, min_size: int = 64) -> np.ndarray:
    """D per group, without tolerance, for elements in (group, x, y) order (yk the
    group-prefixed gap ranks, rank the dense gap ranks inside each group, from 1; size
    the group sizes). Groups of ``min_size`` or more go to scipy's compiled Fenwick tree
    (8x the numpy merge sort per element: one call each), smaller ones and a scipy without
    it to :func:`_count_earlier_greater`. tests/test_scoring.py checks both against brute
    force."""
    big = size >= min_size
    fenwick = _fenwick() if big.any() else None
    if fenwick is None:
        big[:] = False
    D = np.zeros(n_groups)
    small = ~big[gs]
    if small.any():
        dis = _count_earlier_greater(yk[small], yk[small])
        D += np.bincount(gs[small], weights=dis.astype(np.float64), minlength=n_groups)
    if big.any():
        start = np.cumsum(size) - size          # where each group begins in (group, x, y) order
        xi = xs.astype(np.intp)
        ri = rank.astype(np.intp)
        for g in np.flatnonzero(big):
            a, b = start[g], start[g] + size[g]
            D[g] = fenwick(xi[a:b], ri[a:b])
    return D


def _near_pairs(key: np.ndarray, qkey: np.ndarray, budget: int = 4) -> tuple[np.ndarray, np.ndarray] | None:
    """For ``key`` sorted (qkey its element's upper bound): every pair (i, j) of sorted
    positions with key_i < key_j <= qkey_i, as two index arrays, or None when there are
    more than ``budget`` per element (a wide tolerance: then the count engine takes the
    tolerance itself, which costs a second merge per level)."""
    new = np.empty(key.size, dtype=bool)
    new[:1] = True
    new[1:] = key[1:] != key[:-1]
    run_end = np.append(np.flatnonzero(new)[1:], key.size)[np.cumsum(new) - 1]
    cnt = np.searchsorted(key, qkey, side="right") - run_end
    if int(cnt.sum()) > budget * key.size:
        return None
    j, i = _expand(run_end, cnt)
    return i, j


@dataclass
class _GapSide:
    """What counting pairs needs of the groups and the gap alone (element order): shared by
    every measure scored on the same elements, so it is computed once for all of them."""

    Ry: int
    yk: np.ndarray       # group-prefixed gap rank
    qk: np.ndarray       # group-prefixed rank of gap + tol
    rank: np.ndarray     # dense gap rank inside the group, from 1
    ty: np.ndarray       # pairs tied in the gap (within tolerance), per group
    near: tuple[np.ndarray, np.ndarray] | None   # element pairs (lower, higher gap) tol ties
    wide: bool           # a wide tolerance: the count engine takes it itself


def _gap_side(grp: np.ndarray, ry: np.ndarray, rq: np.ndarray, n_groups: int) -> _GapSide:
    """:class:`_GapSide` of integer ranks ry, rq (:func:`_tol_ranks`) in groups grp."""
    has_tol = bool(np.any(rq != ry))
    Ry = int(max(ry.max(), rq.max())) + 1
    yk, qk = grp * Ry + ry, grp * Ry + rq
    s = np.argsort(yk)                  # (group, gap) order; the counts below ignore tie order
    ks, qs = yk[s], qk[s]
    # a narrow tolerance: list the pairs it ties (y < y' <= y + tol), count without it, correct
    near = _near_pairs(ks, qs) if has_tol else None
    wide = has_tol and near is None
    ty = _close_pairs_sorted(ks, qs, grp[s], n_groups, wide)
    if near is not None:
        near = (s[near[0]], s[near[1]])
        ty += np.bincount(grp[near[0]], minlength=n_groups)
    new = np.empty(ks.size, dtype=bool)
    new[:1] = True
    new[1:] = ks[1:] != ks[:-1]
    dense = np.cumsum(new)
    size = np.bincount(grp, minlength=n_groups)
    first = dense[np.minimum(np.cumsum(size) - size, ks.size - 1)]   # each group's smallest
    rank = np.empty(ks.size, dtype=np.int64)
    rank[s] = dense - first[grp[s]] + 1
    return _GapSide(Ry, yk, qk, rank, ty, near, wide)


def _pair_counts_ranked(grp: np.ndarray, rx: np.ndarray, ry: np.ndarray, rq: np.ndarray,
                        n_groups: int, gap: _GapSide | None = None) -> PairCounts:
    """:func:`pair_counts` on integer ranks (rx of x; ry, rq of y and y + tol, from
    :func:`_tol_ranks`), so that every sort is a single int64 key. ``gap``: the
    :func:`_gap_side` of (grp, ry, rq), when another measure's count already made it."""
    grp = np.asarray(grp, dtype=np.int64)
    size = np.bincount(grp, minlength=n_groups)
    P = size * (size - 1) / 2
    if grp.size < 2:
        z = np.zeros(n_groups)
        return PairCounts(P.astype(np.float64), z, z.copy(), z.copy(), z.copy(), z.copy())
    gap = gap or _gap_side(grp, ry, rq, n_groups)
    Rx, Ry = int(rx.max()) + 1, gap.Ry
    if float(n_groups) * Rx * Ry >= 2.0 ** 62:   # one composite key would overflow int64
        o = np.lexsort((ry, rx, grp))
    else:
        o = np.argsort((grp * Rx + rx) * Ry + ry)   # equal keys are interchangeable
    gs, xs, ys, qs = grp[o], rx[o], ry[o], rq[o]
    # ties in x: runs of equal (group, x)
    newx = np.empty(gs.size, dtype=bool)
    newx[:1] = True
    newx[1:] = (gs[1:] != gs[:-1]) | (xs[1:] != xs[:-1])
    xid = np.cumsum(newx) - 1
    t = np.bincount(xid).astype(np.float64)
    tx = np.bincount(gs[newx], weights=t * (t - 1) / 2, minlength=n_groups)
    # ties in both: inside each (group, x) run, y is sorted, so xid * Ry + y is sorted
    n_x = int(xid[-1]) + 1
    tb_x = _close_pairs_sorted(xid * Ry + ys, xid * Ry + qs, xid, n_x, gap.wide)
    tb = np.bincount(gs[newx], weights=tb_x, minlength=n_groups)
    ty = gap.ty.copy()
    # In (group, x, y) order, an earlier element l pairs with k as discordant iff
    # y_l > y_k + tol (ties in x are sorted by y, so they never qualify; earlier groups
    # have smaller group-prefixed keys, so they never qualify either).
    if gap.wide:
        dis = _count_earlier_greater(gap.yk[o], gap.qk[o], monotone=True)  # y <= y' => y+tol <= y'+tol
        D = np.bincount(gs, weights=dis.astype(np.float64), minlength=n_groups)
    else:   # discordant without tolerance, less the pairs the tolerance ties
        D = _discordant(gs, xs, gap.yk[o], gap.rank[o], size, n_groups)
        if gap.near is not None:
            lo, hi = gap.near               # the lower and the higher gap of each pair
            g = grp[lo]
            tb += np.bincount(g[rx[lo] == rx[hi]], minlength=n_groups)
            D -= np.bincount(g[rx[hi] < rx[lo]], minlength=n_groups)   # higher gap first in x
    P = P.astype(np.float64)
    C = P - tx - ty + tb - D
    return PairCounts(P, tx, ty, tb, C, D)


def pair_counts(grp: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int,
                tol: np.ndarray | float = 0.0) -> PairCounts:
    """Concordant / discordant / tied unordered pairs within every group, all groups at once.

    grp: group id per element (0 <= grp < n_groups); x: the measure; y: the target (gap
    or hyperparameter); tol: tie tolerance on y (scalar or per element). A pair (i, j)
    with x_i < x_j is concordant when y_j > y_i + tol and discordant when
    y_i > y_j + tol. Elements of different groups are never paired.
    """
    x = np.asarray(x, dtype=np.float64)
    ry, rq = _tol_ranks(y, tol)
    return _pair_counts_ranked(np.asarray(grp, dtype=np.int64), _ranks(x) if x.size else
                               np.zeros(0, np.int64), ry, rq, n_groups)


# ---------------------------------------------------------------------------------------
# Statistics from counts
# ---------------------------------------------------------------------------------------

def _joint_tables(c: PairCounts, tie_rule: str) -> np.ndarray:
    """Ordered-pair joint table of (V_x, V_y) per group, shape (G, k, k).

    Both orientations of every pair are counted, which is what makes the table a closed
    form of the unordered counts (rows/cols ordered -, 0, +; or not-greater, greater).
    """
    G = c.P.size
    if tie_rule == "lump":
        J = np.empty((G, 2, 2))
        J[:, 1, 1] = c.C
        J[:, 1, 0] = c.D + (c.ty - c.tb)
        J[:, 0, 1] = c.D + (c.tx - c.tb)
        J[:, 0, 0] = c.C + (c.tx - c.tb) + (c.ty - c.tb) + 2 * c.tb
        return J
    J = np.zeros((G, 3, 3))
    J[:, 2, 2] = J[:, 0, 0] = c.C
    J[:, 2, 0] = J[:, 0, 2] = c.D
    if tie_rule == "category":
        J[:, 1, 2] = J[:, 1, 0] = c.tx - c.tb
        J[:, 2, 1] = J[:, 0, 1] = c.ty - c.tb
        J[:, 1, 1] = 2 * c.tb
    return J


def _mi_from_tables(J: np.ndarray, log_base: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(I(V_x; V_y), H(V_y), number of ordered pairs) per table; 0 log 0 = 0."""
    W = J.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = J / W[:, None, None]
        px = p.sum(axis=2, keepdims=True)
        py = p.sum(axis=1, keepdims=True)
        terms = np.where(p > 0, p * np.log(p / (px * py)), 0.0)
        hy = np.where(py > 0, -py * np.log(py), 0.0)
    scale = math.log(log_base)
    I = np.where(W > 0, terms.sum(axis=(1, 2)), np.nan) / scale
    H = np.where(W > 0, hy.sum(axis=(1, 2)), np.nan) / scale
    return np.maximum(I, 0.0), H, W


def _tau(c: PairCounts, tie_rule: str) -> np.ndarray:
    """Kendall's tau per group: tau-b, or (C-D)/(C+D) when tied pairs are dropped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if tie_rule == "drop":
            den = c.C + c.D
        else:
            den = np.sqrt((c.P - c.tx) * (c.P - c.ty))
        return np.where(den > 0, (c.C - c.D) / den, np.nan)


def _count_below(blk: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element i: the elements j of its block with a_j < a_i and b_j < b_i (integer ranks).

    Sorted by (block, a, b descending), an earlier element of the same block counts iff its b
    is smaller (equal a's are sorted so they never do): one :func:`_count_earlier_greater`."""
    if blk.size == 0:
        return np.zeros(0, dtype=np.int64)
    R = int(b.max()) + 1
    o = np.lexsort((-b, a, blk))
    key = blk[o] * R + (R - 1 - b[o])
    out = np.empty(blk.size, dtype=np.int64)
    out[o] = _count_earlier_greater(key, key)
    return out


def _value_pair_tables(cell: np.ndarray, G: int, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """The PGDL scoring program's tables: one per ordered pair of cells (a, b), at a*G + b,
    over the ordered model pairs (i in a, j in b), self-pairs included when a == b, with
    V = [x_i > x_j] (a tie is "not greater"). Shape (G*G, 2, 2), axes (measure, gap).

    The count for (i in a, j in b) is a count over the union a u b minus the count over a:
    one block per unordered pair of cells, so (G - 1) n elements, no loop over pairs."""
    order = np.argsort(cell, kind="stable")
    size = np.bincount(cell, minlength=G)
    start = np.cumsum(size) - size
    ca, cb = np.triu_indices(G, 1)
    ia, ea = _expand(start[ca], size[ca])
    ib, eb = _expand(start[cb], size[cb])
    el = order[np.concatenate([ia, ib])]
    blk = np.concatenate([ea, eb])
    na = ia.size

    def ordered_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(G, G): ordered pairs (i in row cell, j in column cell) with a_j < a_i, b_j < b_i."""
        single = _count_below(cell, a, b)
        cross = (_count_below(blk, a[el], b[el]) - single[el]).astype(np.float64)
        out = np.zeros((G, G))
        out[np.arange(G), np.arange(G)] = np.bincount(cell, weights=single, minlength=G)
        out[ca, cb] = np.bincount(ea, weights=cross[:na], minlength=ca.size)
        out[cb, ca] = np.bincount(eb, weights=cross[na:], minlength=ca.size)
        return out.reshape(-1)

    both = ordered_counts(ry, rx)
    gap_gt = ordered_counts(ry, ry)
    meas_gt = ordered_counts(rx, rx)
    total = np.outer(size, size).reshape(-1).astype(np.float64)
    J = np.empty((G * G, 2, 2))
    J[:, 1, 1] = both
    J[:, 1, 0] = meas_gt - both
    J[:, 0, 1] = gap_gt - both
    J[:, 0, 0] = total - meas_gt - gap_gt + both
    return J


def _value_pair_mi(cell: np.ndarray, grid: int, rx: np.ndarray, ry: np.ndarray,
                   opts: ScoreOptions) -> float:
    """The PGDL program's MI of one subset: NaN unless every one of its grid**2 tables holds a
    pair (it divides 0 by 0 in an empty one); 0 where the gap never varies (its 1e-12 inside
    the log makes H about -1e-12 there and returns -0.0)."""
    uniq, cell = np.unique(cell, return_inverse=True)
    if grid == 0 or uniq.size != grid:
        return np.nan
    I, H, W = _mi_from_tables(_value_pair_tables(cell.reshape(-1), grid, rx, ry), opts.log_base)
    v = _reduce_cells(I, H, W, W, np.zeros(W.size, dtype=np.int64), 1, opts)[0]
    return 0.0 if np.isnan(v) else float(v)


def _program_min(vals: dict[tuple[str, ...], float], cond: list[str], k: int) -> float:
    """The PGDL program's minimum over subsets: it visits every ordered k-tuple of distinct
    hps and folds ``m = min(v, m)``, so a NaN subset resets the running minimum (Python's
    min(nan, m) is nan and min(v, nan) is v)."""
    out = math.inf
    for perm in itertools.permutations(cond, k):
        v = vals[tuple(sorted(perm, key=cond.index))]
        out = out if out < v else v
    return out if math.isfinite(out) else np.nan


def _reduce_cells(I: np.ndarray, H: np.ndarray, W: np.ndarray, P: np.ndarray, cells: np.ndarray,
                  n_sub: int, opts: ScoreOptions) -> np.ndarray:
    """One value per subset from its cells (cells[g] = subset index of group g; P[g] its
    pairs before the tie rule).

    A cell whose pairs were all dropped (or, normalizing the mean, with H = 0) is skipped, or
    counts as MI 0 under ``empty_cell="zero"``; a cell with no pair at all (one model) is
    skipped, and a subset with no counted pair at all is undefined, either way."""
    ok = W > 0
    any_ok = np.bincount(cells, weights=ok.astype(float), minlength=n_sub) > 0
    zero = opts.empty_cell == "zero"
    with np.errstate(divide="ignore", invalid="ignore"):
        if opts.cell_reduce == "mean":
            if opts.normalize:
                ok = ok & (H > 0)
                v = np.where(ok, I / np.where(ok, H, 1.0), 0.0)
            else:
                v = np.where(ok, I, 0.0)
            counted = P > 0 if zero else ok
            num = np.bincount(cells, weights=v, minlength=n_sub)
            den = np.bincount(cells, weights=counted.astype(float), minlength=n_sub)
            return np.where(any_ok & (den > 0), num / den, np.nan)
        counted = P > 0 if zero else ok
        w = np.where(ok, W, 0.0) if opts.cell_reduce == "pool" else counted.astype(float)
        Iz = np.where(ok, I, 0.0)
        Hz = np.where(ok, H, 0.0)
        num = np.bincount(cells, weights=w * Iz, minlength=n_sub)
        hden = np.bincount(cells, weights=w * Hz, minlength=n_sub)
        wsum = np.bincount(cells, weights=w, minlength=n_sub)
        if opts.normalize:
            return np.where(any_ok & (hden > 0), num / hden, np.nan)
        return np.where(any_ok & (wsum > 0), num / wsum, np.nan)


def _hoeffding_weight(dgap: np.ndarray, n_test: int, shift: float) -> np.ndarray:
    """Dziugaite et al. 2020's pair weight: how surely two gaps measured on n_test samples
    really differ, (max(0, 1 - 2 exp(-n_test dgap^2 / 2))^2 - shift)_+ (their code)."""
    h = np.maximum(0.0, 1.0 - 2.0 * np.exp(-2.0 * n_test * (np.abs(dgap) / 2.0) ** 2)) ** 2
    return np.maximum(h - shift, 0.0)


# ---------------------------------------------------------------------------------------
# Population structure
# ---------------------------------------------------------------------------------------

def _order_key(v: Any) -> tuple:
    if isinstance(v, (bool, np.bool_, numbers.Real)) and not (isinstance(v, float) and math.isnan(v)):
        return (0, float(v), "")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (2, 0.0, "")
    return (1, 0.0, str(v))


def _encode(values: Any, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sign values) of a hyperparameter column.

    codes: 0..k-1 in the column's order, used for cells (None/NaN is its own level).
    sign values: what V_hp = sign(hp_i - hp_j) compares: the number itself when the
    column is numeric, else the code (numbers < strings, strings sorted); NaN where
    the value is missing, so MI with this hyperparameter skips that model.
    """
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"hparams[{name!r}] has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind in "biuf":
        f = arr.astype(np.float64)
        _, codes = np.unique(f, return_inverse=True)   # NaNs collapse to one (last) level
        return codes.reshape(-1).astype(np.int64), f
    items = [None if (isinstance(v, float) and math.isnan(v)) else
             (v.item() if isinstance(v, np.generic) else v) for v in arr.tolist()]
    uniq = sorted(set(items), key=_order_key)
    index = {v: i for i, v in enumerate(uniq)}
    codes = np.fromiter((index[v] for v in items), dtype=np.int64, count=n)
    numeric = all(_order_key(v)[0] in (0, 2) for v in uniq)
    if numeric:
        sv = np.array([np.nan if v is None else float(v) for v in items], dtype=np.float64)
    else:
        sv = np.where(np.array([v is None for v in items]), np.nan, codes.astype(np.float64))
    return codes, sv


def _cell_ids(codes: np.ndarray, cols: tuple[int, ...] | list[int]) -> tuple[np.ndarray, int]:
    """Cell id per row for the combination of the given columns (0..k-1, in the
    lexicographic order of the combinations)."""
    n = codes.shape[0]
    cols = list(cols)
    if not cols or n == 0:
        return np.zeros(n, dtype=np.int64), 1 if n else 0
    # mixed-radix int64 key: one 1-D unique instead of a slow row-wise unique
    card = [int(codes[:, c].max()) + 1 for c in cols]
    if math.prod(card) < 2 ** 62:
        key = np.zeros(n, dtype=np.int64)
        for c, k in zip(cols, card):
            key = key * k + codes[:, c]
        _, inv = np.unique(key, return_inverse=True)
    else:
        _, inv = np.unique(codes[:, cols], axis=0, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    return inv, int(inv.max()) + 1


def _expand(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [starts[k], starts[k] + lengths[k]) and the k of each entry."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    first = np.cumsum(lengths) - lengths
    return starts.astype(np.int64)[owner] + (np.arange(total, dtype=np.int64) - first[owner]), owner


@dataclass
class _Structure:
    """Everything about the population that does not depend on a measure."""

    n: int
    subsets: list[tuple[str, ...]]            # every omega, sizes 0..max
    subset_cells: list[tuple[np.ndarray, int]]
    gran_hps: list[str]                       # hyperparameters of the granulated tau / environments
    gran_cells: list[tuple[np.ndarray, int]]  # cell per model with all hps but one fixed
    gran_codes: list[np.ndarray]              # code of the varied hp per model
    setting: np.ndarray                       # full setting id per model
    n_settings: int
    env_a: np.ndarray                         # environments: pairs of settings differing in one hp
    env_b: np.ndarray
    env_hp: np.ndarray                        # per environment: the hp it varies (index in gran_hps),
    env_cell: np.ndarray                      # its cell of gran_cells[env_hp],
    env_whole: np.ndarray                     # and whether that cell holds only its two settings
    against: list[str]
    against_vals: list[np.ndarray]
    against_cells: tuple[np.ndarray, int]     # groups the MI with an 'against' hp is taken within
    grid: list[int]                           # per subset: cells of a full grid (0: the PGDL
                                              # program's string keys collide)
    condition_on: list[str]


def _pgdl_grid(hparams: dict[str, Any], omega: tuple[str, ...]) -> int:
    """Number of cells of omega in a full grid, or 0 when the PGDL program's cell names
    (str(v_i) + str(v_j) per hp, concatenated) collide, which leaves some of its cells empty."""
    names = [""]
    for h in omega:
        vals = list(dict.fromkeys(np.asarray(hparams[h], dtype=object).tolist()))
        pair = [str(v) + str(w) for v in vals for w in vals]
        names = [a + b for a in names for b in pair]
    return math.isqrt(len(names)) if len(set(names)) == len(names) else 0


def _structure(n: int, hparams: dict[str, Any], condition_on: list[str], against: list[str],
               max_omega: int, against_within: list[str] = (), cells: str = "shared") -> _Structure:
    names = list(dict.fromkeys(list(condition_on) + list(against)))
    bad = [h for h in against_within if h not in hparams]
    if bad:
        raise KeyError(f"against_within: hyperparameter(s) {bad} not in hparams (have {sorted(hparams)})")
    bad = [h for h in against_within if h in against]
    if bad:
        raise ValueError(f"against_within: {bad} are 'against' hyperparameters; an MI with a "
                         "hyperparameter cannot hold it fixed")
    missing = [h for h in names if h not in hparams]
    if missing:
        raise KeyError(f"hyperparameter(s) {missing} not in hparams (have {sorted(hparams)})")
    enc = {h: _encode(hparams[h], n, h) for h in names}
    codes = (np.stack([enc[h][0] for h in names], axis=1) if names
             else np.zeros((n, 0), dtype=np.int64))
    col = {h: i for i, h in enumerate(names)}
    subsets: list[tuple[str, ...]] = []
    for k in range(0, min(max_omega, len(condition_on)) + 1):
        subsets.extend(itertools.combinations(list(dict.fromkeys(condition_on)), k))
    subset_cells = [_cell_ids(codes, tuple(col[h] for h in s)) for s in subsets]
    gran_cells = [_cell_ids(codes, tuple(i for i in range(len(names)) if i != col[h])) for h in names]
    gran_codes = [codes[:, col[h]] for h in names]
    setting, n_settings = _cell_ids(codes, tuple(range(len(names))))
    # Environments: settings that differ in exactly one hyperparameter. For hp k, group the
    # settings by everything else; every pair of settings inside a group is an environment.
    ea, eb, ek, ec, ew = [], [], [], [], []
    if names and n:
        first = np.zeros(n_settings, dtype=np.int64)
        first[setting[::-1]] = np.arange(n)[::-1]     # a representative model per setting
        scodes = codes[first]
        for k in range(len(names)):
            grp, _ = _cell_ids(scodes, [i for i in range(len(names)) if i != k])
            o = np.argsort(grp, kind="stable")
            gs = grp[o]
            sizes = np.bincount(gs)
            starts = np.cumsum(sizes) - sizes
            # position r inside its group pairs with the later positions r+1..m-1
            rank = np.arange(o.size) - starts[gs]
            later = sizes[gs] - rank - 1
            partner, owner = _expand(np.arange(o.size) + 1, later)
            ea.append(o[owner])
            eb.append(o[partner])
            ek.append(np.full(owner.size, k, dtype=np.int64))
            ec.append(gran_cells[k][0][first[o[owner]]])
            ew.append(sizes[gs[owner]] == 2)
    cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt)   # noqa: E731
    env_a, env_b, env_hp, env_cell = (cat(v, np.int64) for v in (ea, eb, ek, ec))
    env_whole = cat(ew, bool)
    within = [_encode(hparams[h], n, h)[0] for h in against_within]
    against_cells = _cell_ids(np.stack(within, axis=1) if within else np.zeros((n, 0), np.int64),
                              list(range(len(within))))
    grid = [_pgdl_grid(hparams, s) for s in subsets] if cells == "value_pairs" else []
    return _Structure(n, subsets, subset_cells, names, gran_cells, gran_codes, setting, n_settings,
                      env_a, env_b, env_hp, env_cell, env_whole, list(against), [enc[h][1] for h in against], against_cells, grid,
                      list(dict.fromkeys(condition_on)))


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------

def score_paths(max_k: int, against: list[str]) -> list[str]:
    """The flat score paths ("mi.0", "mi_hparam.dropout", ...) in report order."""
    ks = [str(k) for k in range(max_k + 1)]
    return ([f"mi.{k}" for k in ks] + [f"mi_min.{k}" for k in ks] +
            [f"mi_hparam.{h}" for h in against] +
            ["kendall_tau", "granulated_kendall", "sign_error", "robust_sign_error", "sign_error_q90"])


class _Blocks:
    """Collects groups of elements from many score components so one call of the counting
    engine serves them all (fewer, larger numpy operations), and the gap side of a count
    serves every measure scored on the same models (:class:`_GapSide`).

    ``model`` ids let a bootstrap resample skip pairs of two copies of the same model:
    such a pair is tied in everything and is not a pair of distinct models (counting it
    would give the tied cell of the 3x3 MI table a spurious perfect association)."""

    def __init__(self, n_models: int, dedup: bool) -> None:
        self.parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.keys: list[tuple[int, int]] = []
        self.dups: list[np.ndarray | None] = []
        self.n_models = n_models
        self.dedup = dedup
        self.models: list[np.ndarray] = []   # the distinct model sets measures are scored on
        self.current = (-1, 0)               # (model set, parts added since) of this measure

    def measure(self, model: np.ndarray) -> None:
        """The parts added next are one measure's, on the models ``model``: the k-th part of
        two measures on the same models has the same groups and gap, only x differs."""
        same = next((i for i, seen in enumerate(self.models) if np.array_equal(seen, model)), None)
        if same is None:
            self.models.append(model)
            same = len(self.models) - 1
        self.current = (same, 0)

    def add(self, grp: np.ndarray, n_groups: int, rx: np.ndarray, ry: np.ndarray,
            rq: np.ndarray, model: np.ndarray) -> int:
        self.parts.append((grp, n_groups, rx, ry, rq))
        self.keys.append(self.current)
        self.current = (self.current[0], self.current[1] + 1)
        dup = None
        if self.dedup and grp.size > 1:
            uniq, t = np.unique(grp.astype(np.int64) * self.n_models + model, return_counts=True)
            if np.any(t > 1):
                t = t.astype(np.float64)
                dup = np.bincount(uniq // self.n_models, weights=t * (t - 1) / 2, minlength=n_groups)
        self.dups.append(dup)
        return len(self.parts) - 1

    def run(self, chunk: int = 1 << 14) -> list[PairCounts]:
        """Count in chunks of about ``chunk`` elements (whole blocks only): the engine is
        dominated by random memory access, so cache-sized calls are several times faster
        than one huge call, while still amortizing Python overhead over many blocks. A
        chunk holds the same parts of every measure that shares them; its gap side is
        computed once."""
        shared: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(self.keys):
            shared.setdefault(key, []).append(i)
        classes = list(shared.values())
        out: list[PairCounts | None] = [None] * len(self.parts)
        i = 0
        while i < len(classes):
            j, size = i, 0
            while j < len(classes) and len(classes[j]) == len(classes[i]) and (
                    j == i or size + self.parts[classes[j][0]][2].size <= chunk):
                size += self.parts[classes[j][0]][2].size
                j += 1
            gap = None
            for members in zip(*classes[i:j]):     # one measure's parts of these classes
                offsets = np.cumsum([0] + [self.parts[k][1] for k in members])
                g = np.concatenate([self.parts[k][0] + off for k, off in zip(members, offsets)])
                rx, ry, rq = (np.concatenate([self.parts[k][c] for k in members]) for c in (2, 3, 4))
                g = g.astype(np.int64)
                if gap is None and g.size >= 2:
                    gap = _gap_side(g, ry, rq, int(offsets[-1]))
                counts = _pair_counts_ranked(g, rx, ry, rq, int(offsets[-1]), gap)
                for k, a, b in zip(members, offsets[:-1], offsets[1:]):
                    out[k] = counts[slice(a, b)]
            i = j
        for c, dup in zip(out, self.dups):
            if dup is not None:         # copies of one model: tied in x, in y, in both
                c.P = c.P - dup
                c.tx = c.tx - dup
                c.ty = c.ty - dup
                c.tb = c.tb - dup
        return out  # type: ignore[return-value]


def _score_once(idx: np.ndarray, measures: dict[str, np.ndarray], gap: np.ndarray,
                st: _Structure, opts: ScoreOptions, max_k: int) -> dict[str, dict[str, float]]:
    """Every score of every measure on the population idx (model indices; repeats allowed)."""
    g_all = gap[idx]
    blocks = _Blocks(gap.size, dedup=bool(np.unique(idx).size < idx.size))
    plan: dict[str, dict[str, Any]] = {}
    for name, values in measures.items():
        c_all = values[idx]
        ok = np.isfinite(c_all) & np.isfinite(g_all)
        pos = np.flatnonzero(ok)
        m = idx[pos]
        blocks.measure(m)
        x, y = c_all[pos], g_all[pos]
        rx = _ranks(x) if x.size else np.zeros(0, dtype=np.int64)
        ry, rq = _tol_ranks(y, opts.gap_tol) if y.size else (rx, rx)
        p: dict[str, Any] = {"n": int(pos.size)}
        # conditional MI: one block per subset (cells as groups); subset 0 gives tau too
        pgdl = opts.cells == "value_pairs"          # then only subset 0 (for tau) needs counts
        p["subsets"] = [blocks.add(cells[m], nc, rx, ry, rq, m) if not (pgdl and si) else None
                        for si, (cells, nc) in enumerate(st.subset_cells)]
        if pgdl:
            p["value_pairs"] = [_value_pair_mi(cells[m], grid, rx, ry, opts)
                                for (cells, _), grid in zip(st.subset_cells, st.grid)]
        # MI with each 'against' hyperparameter: one group, exact ties
        p["against"] = []
        wc, nwc = st.against_cells
        for hv in st.against_vals:
            hvm = hv[m]
            okh = np.isfinite(hvm)
            rh = _ranks(hvm[okh]) if okh.any() else np.zeros(0, dtype=np.int64)
            p["against"].append(blocks.add(wc[m][okh], nwc, rx[okh], rh, rh, m[okh]))
        # granulated tau: per hp, cells with every other hp fixed
        p["gran"] = []
        for (cells, nc), gc in zip(st.gran_cells, st.gran_codes):
            cm = cells[m]
            # only cells where the varied hp takes at least two values say anything about it
            K = int(gc.max()) + 1 if gc.size else 1
            k_vals = np.bincount(np.unique(cm * K + gc[m]) // K, minlength=nc)
            p["gran"].append((blocks.add(cm, nc, rx, ry, rq, m), k_vals >= 2))
        # sign-error: settings, and the union of both settings of every environment whose
        # granulated cell (above) is not already exactly that union
        if st.env_a.size and opts.pair_weight == "none":
            s = st.setting[m]
            p["settings"] = blocks.add(s, st.n_settings, rx, ry, rq, m)
            order = np.argsort(s, kind="stable")
            size = np.bincount(s, minlength=st.n_settings)
            start = np.cumsum(size) - size
            rest = np.flatnonzero(~st.env_whole)
            ia, ea = _expand(start[st.env_a[rest]], size[st.env_a[rest]])
            ib, eb = _expand(start[st.env_b[rest]], size[st.env_b[rest]])
            el = order[np.concatenate([ia, ib])]
            p["envs"] = blocks.add(np.concatenate([ea, eb]), rest.size, rx[el], ry[el], rq[el], m[el])
            p["env_rest"] = rest
            p["env_sizes"] = size[st.env_a].astype(float) * size[st.env_b]
        p["xy"] = (m, x, y)
        plan[name] = p
    counts = blocks.run()

    out: dict[str, dict[str, float]] = {}
    sub_size = np.array([len(s) for s in st.subsets], dtype=np.int64)
    for name, p in plan.items():
        r: dict[str, float] = {}
        # --- MI with the gap, per subset, then mean / min over subsets of each size
        vals = np.full(len(st.subsets), np.nan)
        for si, b in enumerate(p["subsets"]):
            if opts.cells == "value_pairs":
                vals[si] = p["value_pairs"][si]
                continue
            I, H, W = _mi_from_tables(_joint_tables(counts[b], opts.tie_rule), opts.log_base)
            vals[si] = _reduce_cells(I, H, W, counts[b].P, np.zeros(I.size, dtype=np.int64), 1, opts)[0]
        for k in range(max_k + 1):
            v = vals[sub_size == k]
            v = v[np.isfinite(v)]
            r[f"mi.{k}"] = float(v.mean()) if v.size else np.nan
            r[f"mi_min.{k}"] = float(v.min()) if v.size else np.nan
            if opts.cells == "value_pairs":
                r[f"mi_min.{k}"] = _program_min(dict(zip(st.subsets, vals)), st.condition_on, k)
        # --- MI with each hyperparameter of interest
        for h, b in zip(st.against, p["against"]):
            I, H, W = _mi_from_tables(_joint_tables(counts[b], opts.tie_rule), opts.log_base)
            r[f"mi_hparam.{h}"] = float(_reduce_cells(I, H, W, counts[b].P, np.zeros(I.size, np.int64),
                                                      1, opts)[0])
            r[f"sign.mi_hparam.{h}"] = float(np.sign(np.sum(counts[b].C - counts[b].D)))
        # --- Kendall's tau over all pairs (subset 0 is the single all-model cell)
        r["kendall_tau"] = float(_tau(counts[p["subsets"][0]], opts.tie_rule)[0])
        # --- granulated Kendall: mean over hps of (mean over cells of the cell tau)
        psi = []
        for b, varies in p["gran"]:
            t = _tau(counts[b], opts.tie_rule)
            t = t[varies & np.isfinite(t)]
            if t.size:
                psi.append(t.mean())
        r["granulated_kendall"] = float(np.mean(psi)) if psi else np.nan
        # --- sign-error over environments (NaN: an environment without a counted pair)
        m, x, y = p["xy"]
        if not st.env_a.size:
            losses = np.zeros(0)
        elif opts.pair_weight == "none":
            union = _env_unions(counts, p, st)
            losses = _env_losses_counts(counts[p["settings"]], union, st, p["env_sizes"], opts)
        else:
            losses = _env_losses_weighted(m, x, y, st, opts)
        if opts.seed_noise_z > 0 and losses.size:
            losses = np.where(_gap_effect_clear(st.setting[m], y, st, opts.seed_noise_z), losses, np.nan)
        losses = losses[np.isfinite(losses)]
        r["sign_error"] = float(losses.mean()) if losses.size else np.nan
        r["robust_sign_error"] = float(losses.max()) if losses.size else np.nan
        r["sign_error_q90"] = float(np.quantile(losses, 0.9)) if losses.size else np.nan
        size = np.bincount(st.setting[m], minlength=st.n_settings)
        r["single_pair_envs"] = bool(st.env_a.size) and int((size[st.env_a] * size[st.env_b]).max()) <= 1
        if r["single_pair_envs"]:       # every loss is 0 or 1: the maximum says nothing
            r["robust_sign_error"] = r["sign_error_q90"] = np.nan
        r["n_models"] = p["n"]
        out[name] = r
    return out


def _env_unions(counts: list[PairCounts], p: dict, st: _Structure) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) of the union of each environment's two settings: its own block, or the
    granulated cell of its hyperparameter when that cell is the union (a 2-level hp)."""
    C = np.empty(st.env_a.size)
    D = np.empty(st.env_a.size)
    own = counts[p["envs"]]
    C[p["env_rest"]], D[p["env_rest"]] = own.C, own.D
    for k, (b, _) in enumerate(p["gran"]):
        sel = np.flatnonzero(st.env_whole & (st.env_hp == k))
        C[sel], D[sel] = counts[b].C[st.env_cell[sel]], counts[b].D[st.env_cell[sel]]
    return C, D


def _env_losses_counts(cs: PairCounts, union: tuple[np.ndarray, np.ndarray], st: _Structure,
                       nab: np.ndarray, opts: ScoreOptions) -> np.ndarray:
    """Unweighted sign-error per environment from counts: the cross pairs of settings A and
    B are the pairs of A u B minus those inside A and inside B."""
    a, b = st.env_a, st.env_b
    Cx = union[0] - cs.C[a] - cs.C[b]
    Dx = union[1] - cs.D[a] - cs.D[b]
    if opts.tie_rule == "drop":
        n_used = Cx + Dx
        loss_sum = Dx
    else:
        n_used = nab
        loss_sum = Dx + 0.5 * (nab - Cx - Dx)
    keep = (n_used > 0) & (n_used >= opts.min_ess)
    return np.where(keep, loss_sum / np.where(keep, n_used, 1.0), np.nan)


def _env_losses_weighted(m: np.ndarray, x: np.ndarray, y: np.ndarray, st: _Structure,
                         opts: ScoreOptions, chunk: int = 4_000_000) -> np.ndarray:
    """Dziugaite-weighted sign-error per environment: the pair weight depends on the pair's
    gap difference, so the cross pairs are enumerated (vectorized, in chunks)."""
    s = st.setting[m]
    order = np.argsort(s, kind="stable")
    size = np.bincount(s, minlength=st.n_settings)
    start = np.cumsum(size) - size
    na, nb = size[st.env_a], size[st.env_b]
    npairs = na.astype(np.int64) * nb
    E = st.env_a.size
    sw = np.zeros(E)
    sw2 = np.zeros(E)
    sl = np.zeros(E)
    cum = np.cumsum(npairs)
    lo = 0
    while lo < E:
        done = int(cum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(cum, done + chunk, side="right")), lo + 1)
        envs = np.arange(lo, hi)
        k, owner = _expand(np.zeros(envs.size, dtype=np.int64), npairs[envs])
        e = envs[owner]
        i = order[start[st.env_a[e]] + k // nb[e]]
        j = order[start[st.env_b[e]] + k % nb[e]]
        yi, yj = y[i], y[j]
        sg = np.where(np.maximum(yi, yj) <= np.minimum(yi, yj) + opts.gap_tol, 0.0, np.sign(yi - yj))
        sc = np.sign(x[i] - x[j])
        w = _hoeffding_weight(yi - yj, opts.n_test, opts.weight_shift)
        if opts.tie_rule == "drop":
            w = np.where((sc == 0) | (sg == 0), 0.0, w)
        loss = (1.0 - sc * sg) / 2.0
        sw += np.bincount(e, weights=w, minlength=E)
        sw2 += np.bincount(e, weights=w * w, minlength=E)
        sl += np.bincount(e, weights=w * loss, minlength=E)
        lo = hi
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = np.where(sw2 > 0, sw * sw / sw2, 0.0)
    keep = (sw > 0) & (ess >= opts.min_ess)
    return np.where(keep, sl / np.where(keep, sw, 1.0), np.nan)


def _gap_effect_clear(s: np.ndarray, y: np.ndarray, st: _Structure, z: float) -> np.ndarray:
    """Per environment: do its two settings' mean gaps differ by more than z standard errors
    of seed noise? The noise is the pooled within-setting SD of the gap (models of one
    setting differ only in their seed); sign-error cannot be wrong about an intervention
    whose effect on the gap is within that noise (Dziugaite et al.'s Monte-Carlo filter, for
    seeds). All True when no setting holds two models (no noise estimate)."""
    size = np.bincount(s, minlength=st.n_settings).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(s, weights=y, minlength=st.n_settings) / size
        df = y.size - int((size > 0).sum())
        if df <= 0:
            return np.ones(st.env_a.size, dtype=bool)
        sd = math.sqrt(float(np.sum((y - mean[s]) ** 2)) / df)
        se = sd * np.sqrt(1.0 / size[st.env_a] + 1.0 / size[st.env_b])
        return np.abs(mean[st.env_a] - mean[st.env_b]) > z * se


ROBUST_UNDEFINED = ("undefined: every environment holds a single pair of models (one model per "
                    "setting), so each environment's loss is 0 or 1 and the maximum is 1 for any "
                    "measure; train two seeds or more")


def _direction(tau: float) -> int:
    """Sign of Kendall's tau with the gap: 1 (measure grows with the gap), -1 (ranks it
    backwards), 0 (tied or undefined). MI cannot tell 1 from -1."""
    return int(np.sign(tau)) if np.isfinite(tau) else 0


def _jsonable(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _score_range(path: str, opts: ScoreOptions) -> tuple[float, float]:
    """The values a score can take (an interval is clipped to them)."""
    if path in ("kendall_tau", "granulated_kendall"):
        return -1.0, 1.0
    if path in ("sign_error", "robust_sign_error", "sign_error_q90"):
        return 0.0, 1.0
    return 0.0, 1.0 if opts.normalize else math.inf


def _signed(res: dict, pth: str) -> float:
    """The direction an MI is blind to: the sign of the association among its pairs (Kendall's
    tau for MI with the gap, sum(C - D) for MI with a hyperparameter); 0 counts as +."""
    d = res[f"sign.{pth}"] if pth.startswith("mi_hparam.") else res["kendall_tau"]
    return -1.0 if d < 0 else 1.0


def _fold(lo: float, hi: float) -> tuple[float, float]:
    """An interval for |v| from one for the signed v: [0, max] when it straddles 0."""
    if lo <= 0.0 <= hi:
        return 0.0, max(-lo, hi)
    return (lo, hi) if lo > 0 else (-hi, -lo)


def _bias_corrected(col: np.ndarray, point: dict, pth: str, alpha: float) -> list[float]:
    """Efron's (1981) bias-corrected percentile levels Phi(2 z0 +- z_alpha), z0 = Phi^-1(share
    of replicates below the point estimate), on the signed scale of MI. Plug-in MI is biased
    upward, most in small cells, and the replicates carry that bias: z0 moves the interval
    back down (the acceleration of BCa would need n jackknife scores, and is left at 0)."""
    theta = point[pth] * _signed(point, pth) if pth.startswith("mi") else point[pth]
    share = (np.sum(col < theta) + 0.5 * np.sum(col == theta)) / col.size
    z0 = _NORMAL.inv_cdf(min(max(share, 0.5 / col.size), 1.0 - 0.5 / col.size))
    za = _NORMAL.inv_cdf(alpha)
    return [_NORMAL.cdf(2 * z0 + za), _NORMAL.cdf(2 * z0 - za)]


def _intervals(point: dict, meas: dict[str, np.ndarray], gap: np.ndarray, st: _Structure,
               opts: ScoreOptions, max_k: int, paths: list[str], draws: int,
               seed: int) -> dict[str, dict[str, list[float | None]]]:
    """Intervals for every score from ``draws`` resamples of the models, seeded, the same
    resamples for every measure (so intervals are paired); docs/scoring.md "Intervals".

    ``subsample``: half of the models without replacement (no duplicate model, which bias
    MI). At m = n/2 the spread of theta_m about theta is that of theta about the truth (the
    jackknife histogram, Wu 1990), so its percentiles are an interval, and percentiles are
    transformation-respecting: they stay right for MI, a steep function of the association
    near its truth, where the basic (reflected) interval covered 82-88%. Levels are
    bias-corrected (:func:`_bias_corrected`). MI is taken signed (direction x MI, so the
    replicates straddle 0 when the truth is 0) and the interval folded back. Percentiles
    are order statistics at (draws + 1) alpha (Davison & Hinkley 1997, 5.2), which the
    linear rule biases inward for few draws. ``bootstrap`` (old numbers): percentiles of
    resamples of n with replacement, unsigned, linear rule (pairs of two copies of one
    model are skipped)."""
    n = gap.size
    rng = np.random.default_rng(seed)
    half = opts.interval == "subsample"
    m = n // 2 if half else n
    if m < 2:
        return {name: {pth: [None, None] for pth in paths} for name in meas}
    is_mi = [half and pth.startswith("mi") for pth in paths]
    reps = {name: np.full((draws, len(paths)), np.nan) for name in meas}
    for b in range(draws):
        idx = np.sort(rng.choice(n, size=m, replace=False)) if half else rng.integers(0, n, size=n)
        res = _score_once(idx, meas, gap, st, opts, max_k)
        for name in meas:
            r = res[name]
            reps[name][b] = [r[pth] * _signed(r, pth) if mi else r[pth] for pth, mi in zip(paths, is_mi)]
    alpha = (1.0 - opts.ci_level) / 2.0
    ci: dict[str, dict[str, list[float | None]]] = {name: {} for name in meas}
    for name in meas:
        for j, pth in enumerate(paths):
            col = reps[name][:, j]
            col = col[np.isfinite(col)]
            if col.size < 2 or not np.isfinite(point[name][pth]):
                ci[name][pth] = [None, None]
                continue
            if half:
                lo, hi = np.quantile(col, _bias_corrected(col, point[name], pth, alpha), method="weibull")
            else:
                lo, hi = np.quantile(col, [alpha, 1.0 - alpha])
            if is_mi[j]:
                lo, hi = _fold(lo, hi)
            a, b_ = _score_range(pth, opts)
            ci[name][pth] = [float(min(max(lo, a), b_)), float(min(max(hi, a), b_))]
    return ci


def score_population(measures: dict[str, np.ndarray], gaps: dict[str, np.ndarray],
                     hparams: dict[str, np.ndarray], condition_on: list[str], against: list[str],
                     preset: str = "paper", max_omega: int = 2, bootstrap: int = 0, seed: int = 0,
                     **overrides: Any) -> dict:
    """Score every measure against the population; returns the JSON-ready leaderboard dict.

    measures: name -> value per model (NaN = the measure failed there; each measure is
    scored on the models where it and the gap are finite). gaps: {"loss": ..., "acc": ...}
    (the preset's ``gap`` option picks one). hparams: name -> value per model.
    condition_on: hyperparameters omega ranges over; against: hyperparameters to report
    MI with (never conditioned on by this function). bootstrap: number of resamples of
    the models (seeded; half-samples without replacement unless ``interval="bootstrap"``)
    for intervals of every score (:func:`_intervals`).
    """
    opts = resolve_options(preset, **overrides)
    if max_omega < 0:
        raise ValueError("max_omega must be >= 0")
    if bootstrap < 0:
        raise ValueError("bootstrap must be >= 0")
    if opts.gap not in gaps:
        raise KeyError(f"preset {preset!r} scores against the {opts.gap!r} gap; gaps has {sorted(gaps)}")
    gap = np.asarray(gaps[opts.gap], dtype=np.float64).reshape(-1)
    n = gap.size
    meas = {}
    for name, v in measures.items():
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.size != n:
            raise ValueError(f"measure {name!r} has {a.size} values for {n} models")
        meas[name] = a
    condition_on, against = list(dict.fromkeys(condition_on)), list(dict.fromkeys(against))
    within = against_groups(opts, condition_on)
    st = _structure(n, hparams, condition_on, against, max_omega, within, opts.cells)
    max_k = min(max_omega, len(dict.fromkeys(condition_on)))

    point = _score_once(np.arange(n), meas, gap, st, opts, max_k)
    paths = score_paths(max_k, against)
    ci: dict[str, dict[str, list[float | None]]] = {name: {} for name in meas}
    if bootstrap > 0 and n > 0:
        ci = _intervals(point, meas, gap, st, opts, max_k, paths, bootstrap, seed)

    board: dict[str, Any] = {}
    for name in meas:
        r = point[name]
        ks = [str(k) for k in range(max_k + 1)]
        board[name] = {
            "mi": {k: _jsonable(r[f"mi.{k}"]) for k in ks},
            "mi_min": {k: _jsonable(r[f"mi_min.{k}"]) for k in ks},
            "mi_hparam": {h: _jsonable(r[f"mi_hparam.{h}"]) for h in against},
            "kendall_tau": _jsonable(r["kendall_tau"]),
            "granulated_kendall": _jsonable(r["granulated_kendall"]),
            "sign_error": _jsonable(r["sign_error"]),
            "robust_sign_error": _jsonable(r["robust_sign_error"]),
            "sign_error_q90": _jsonable(r["sign_error_q90"]),
            "direction": _direction(r["kendall_tau"]),
            "n_models": int(r["n_models"]),
            "ci": ci[name],
        }
    notes = {}
    if any(point[name]["single_pair_envs"] for name in meas):
        notes["robust_sign_error"] = notes["sign_error_q90"] = ROBUST_UNDEFINED
    resolved = asdict(opts)
    resolved.update({"preset": preset, "condition_on": condition_on, "against": against,
                     "against_within": within,
                     "max_omega": max_omega, "bootstrap": bootstrap, "seed": seed})
    return {"preset": preset, "n_models": int(n), "options": resolved, "notes": notes,
            "leaderboard": board}

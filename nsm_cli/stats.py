"""Statistics over numpy arrays: the numpy/polars boundary of nsm.

All estimators take every candidate at once, with no Python loop over accounts: numpy, or for the
Cox fits, Harrell's C and the threshold counts a compiled kernel (`kernels`) over arrays sorted
here once. Every estimator is checked in tests against lifelines and scipy on the same arrays.
Conventions:

- times are floats (days), events booleans (True = the outcome happened, False = censored);
- `concordance` follows lifelines: C > 0.5 means a higher score goes with a *longer* time;
- Cox coefficients are log hazard ratios per unit of the covariate given (nsm passes
  standardised log1p(metric), so exp(beta) is the hazard ratio per standard deviation);
  ties are handled with Efron's method, like lifelines' default.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import polars as pl

from nsm_cli import kernels

Z_95 = NormalDist().inv_cdf(0.975)


def normal_sf(z: np.ndarray | float) -> np.ndarray:
    """Upper tail of the standard normal, P(Z > z), elementwise (compiled erfc: importing
    scipy.special alone costs a `nsm rank` run ~0.2 s)."""
    z = np.asarray(z, dtype=float)
    return kernels.normal_sf(z.ravel()).reshape(z.shape)


def chi2_sf(statistic: float, df: int) -> float:
    """Upper tail of the chi-square distribution (scipy.special, imported where a test needs it)."""
    from scipy import special

    return float(special.chdtrc(df, statistic))


@dataclass(frozen=True, slots=True)
class CoxFit:
    """Batched Cox fits: one row per model. `beta` (k, p), `variance` (k, p, p)."""

    beta: np.ndarray
    variance: np.ndarray
    log_likelihood: np.ndarray
    converged: np.ndarray
    penalizer: float

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diagonal(self.variance, axis1=1, axis2=2), 0, None))

    @property
    def p_value(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isinf(self.se), 1.0, 2 * normal_sf(np.abs(self.beta / self.se)))


@dataclass(frozen=True, slots=True)
class _Blocks:
    """Accounts in the order the Cox kernels walk them: by stratum, then by time descending, deaths
    first among equal times; each (stratum, time) is one block (see `kernels.efron_terms`)."""

    order: np.ndarray
    starts: np.ndarray  # per block, its first position; then n
    deaths: np.ndarray  # per block, its number of deaths (the first positions of the block)
    fresh: np.ndarray  # per block, whether it begins a stratum

    @classmethod
    def of(cls, time: np.ndarray, event: np.ndarray, strata: np.ndarray | None = None) -> _Blocks:
        stratum = np.zeros(len(time), np.int64) if strata is None else np.asarray(strata, np.int64)
        order = np.lexsort((~event, -time, stratum))
        t, s = time[order], stratum[order]
        new_stratum = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(new_stratum | np.r_[True, t[1:] != t[:-1]])
        deaths = np.add.reduceat(event[order].astype(np.int64), starts)
        return cls(order, np.r_[starts, len(time)], deaths, new_stratum[starts])

    @property
    def n_events(self) -> int:
        return int(self.deaths.sum())


def _revcumsum(a: np.ndarray, axis: int = 1) -> np.ndarray:
    return np.flip(np.cumsum(np.flip(a, axis=axis), axis=axis), axis=axis)


def cox_fit(time: np.ndarray, event: np.ndarray, X: np.ndarray, *, penalizer: float = 0.0,
            strata: np.ndarray | None = None, max_iter: int = 50, tol: float = 1e-9,
            diverge_at: float = 25.0, start: np.ndarray | None = None, blocks: _Blocks | None = None) -> CoxFit:
    """Fit k Cox models at once by Newton-Raphson with step halving (Efron ties).

    X has shape (k, n, p): k models of p covariates over the same n accounts. `strata` (n,) gives
    each account's stratum: risk sets are formed within strata (a stratified Cox model, like
    lifelines' `strata=`). The penalty is lifelines' ridge term `n * penalizer * beta**2 / 2`
    (on the covariates as given). Models whose coefficients run past `diverge_at` (complete
    separation) stop early, unconverged. `start` (k, p): where Newton begins (default 0). `blocks`:
    the accounts' order for (time, event, strata), when the caller has it already.
    """
    X = np.asarray(X, dtype=float)
    k, n, p = X.shape
    blocks = blocks or _Blocks.of(np.asarray(time, float), np.asarray(event, bool), strata)
    Xs = np.take(X, blocks.order, axis=1)  # a contiguous copy (X[:, order] is laid out transposed, then copied)
    # The fit does not depend on location; centred, the sums lose less to rounding. (Means as matrix
    # products: numpy's reductions over the middle axis of (k, n, p) are ~10x slower.)
    Xs -= (np.ones(n) @ Xs)[:, None, :] / max(n, 1)
    pen = penalizer * n
    eye = np.eye(p)
    n_events = blocks.n_events
    kernel, data = (kernels.efron_terms_1, Xs[:, :, 0]) if p == 1 else (kernels.efron_terms, Xs)

    def terms(idx: np.ndarray, b: np.ndarray):
        ll, g, h = kernel(data, idx, b, blocks.starts, blocks.deaths, blocks.fresh)
        return ll - 0.5 * pen * (b**2).sum(1), g - pen * b, h - pen * eye

    beta = np.zeros((k, p)) if start is None else np.array(start, dtype=float)
    ll, grad, hess = terms(np.arange(k), beta)
    # A covariate constant within every risk set at every event has no information at any beta; its
    # computed information is rounding noise, which Newton would follow. Zero it exactly instead.
    spread = np.einsum("knp,knp->kp", Xs, Xs) / max(n, 1)  # the mean square of each covariate
    uninformed = np.diagonal(-hess, axis1=1, axis2=2) <= 1e-9 * max(1, n_events) * spread
    if uninformed.any():
        Xs.transpose(0, 2, 1)[uninformed] = 0.0
        beta[uninformed] = 0.0
        redo = np.flatnonzero(uninformed.any(axis=1))  # the other models' terms stand
        ll[redo], grad[redo], hess[redo] = terms(redo, beta[redo])
    done = np.zeros(k, bool)
    converged = np.zeros(k, bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(~done)
        if len(idx) == 0:
            break
        delta = _solve(-hess[idx], grad[idx])
        settled = np.abs(delta).max(axis=1) < tol  # the next step would be below tol: converged as it is
        converged[idx[settled]] = done[idx[settled]] = True
        idx, delta = idx[~settled], delta[~settled]
        if len(idx) == 0:
            break
        step = np.ones(len(idx))
        pending = np.arange(len(idx))
        for _halving in range(30):
            trial = beta[idx[pending]] + step[pending, None] * delta[pending]
            ll_t, g_t, h_t = terms(idx[pending], trial)
            ok = np.isfinite(ll_t) & (ll_t >= ll[idx[pending]] - 1e-10 * np.abs(ll[idx[pending]]))
            take = idx[pending[ok]]
            beta[take], ll[take], grad[take], hess[take] = trial[ok], ll_t[ok], g_t[ok], h_t[ok]
            pending = pending[~ok]
            step[pending] /= 2
            if len(pending) == 0:
                break
        moved = np.abs(step[:, None] * delta).max(axis=1)
        converged[idx] = moved < tol
        done[idx] = converged[idx] | (np.abs(beta[idx]).max(axis=1) > diverge_at) | (step < 1e-9)
    variance = np.linalg.pinv(-hess)
    flat = uninformed | (np.diagonal(-hess, axis1=1, axis2=2) <= 1e-12 * max(1, n))  # a covariate with no
    if flat.any():  # (zero variance among those at risk): no estimate, infinite uncertainty
        model, coef = np.nonzero(flat)
        variance[model, coef, coef] = np.inf
    return CoxFit(beta, variance, ll, converged & np.isfinite(beta).all(1), penalizer)


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("kij,kj->ki", np.linalg.pinv(a), b)


def cox_fit_chunked(time: np.ndarray, event: np.ndarray, X: np.ndarray, *, penalizer: float = 0.0,
                    strata: np.ndarray | None = None, start: np.ndarray | None = None) -> CoxFit:
    """`cox_fit` over chunks of models, a chunk per core (the kernels release the GIL). Chunks are
    independent, so results do not depend on the number of threads; the accounts are sorted once."""
    start = np.zeros((X.shape[0], X.shape[2])) if start is None else start  # cox_fit's own default
    blocks = _Blocks.of(np.asarray(time, float), np.asarray(event, bool), strata)
    fits = kernels.by_rows(lambda x, s: cox_fit(time, event, x, penalizer=penalizer, start=s, blocks=blocks), X, start)
    return CoxFit(
        np.concatenate([f.beta for f in fits]), np.concatenate([f.variance for f in fits]),
        np.concatenate([f.log_likelihood for f in fits]), np.concatenate([f.converged for f in fits]),
        penalizer,
    )


def codes_and_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a (n, k): each value's dense code from 0 (equal values, equal codes), int64, and
    its average rank from 1 (ties share the mean rank). Columns run on a thread per core."""
    rows = np.ascontiguousarray(np.asarray(a, dtype=float).T)
    codes, ranks = np.empty(rows.shape, np.int64), np.empty(rows.shape)  # each core fills its share of rows
    kernels.by_rows(lambda v, c, r: kernels.rank_columns(v, np.argsort(v, axis=1), c, r), rows, codes, ranks)
    return codes.T, ranks.T


def dense_codes(a: np.ndarray) -> np.ndarray:
    """Per column of a (n, k): each value's dense rank from 0 (equal values, equal codes), int64."""
    return codes_and_ranks(a)[0]


def average_ranks(codes: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank) of each column of integer codes (n, k)
    that order the values like `dense_codes` (gaps allowed)."""
    out = np.empty(codes.shape)
    for j in range(codes.shape[1]):
        count = np.bincount(codes[:, j])
        out[:, j] = (np.cumsum(count) - (count - 1) / 2)[codes[:, j]]
    return out


def rank_columns(a: np.ndarray) -> np.ndarray:
    """Average ranks of each column of a (n, k) matrix."""
    return codes_and_ranks(a)[1]


def concordance(time: np.ndarray, event: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Harrell's C of each row of `scores` (k, n) with (time, event), lifelines' convention.

    Comparable pairs: (i, j) with i an event and T_j > T_i, or T_j == T_i with j censored.
    A pair is concordant when score_j > score_i, and counts 1/2 when the scores tie.
    NaN when no pair is comparable.
    """
    scores = np.atleast_2d(np.asarray(scores, float))
    return concordance_of_codes(time, event, dense_codes(scores.T))


def concordance_of_codes(time: np.ndarray, event: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`concordance` of each column of integer codes (n, k) that order the scores (see `dense_codes`).

    Accounts are sorted once by `level` (time order, a censored account above an event at the same
    time), so that (i, j) is comparable exactly when i is an event and level[j] > level[i]; the
    pairs are then counted per column by `kernels.concordant_counts` in O(n log n).
    """
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    t_rank = np.unique(time, return_inverse=True)[1].ravel()
    level = 2 * t_rank + (~event)
    order = np.argsort(-level, kind="stable")
    above = len(time) - np.cumsum(np.bincount(level, minlength=int(level.max(initial=-1)) + 1))
    pairs = int(above[level[event]].sum())  # accounts with a higher level, summed over events
    if pairs == 0:
        return np.full(codes.shape[1], np.nan)
    ordered = np.take(np.asarray(codes, np.int64).T, order, axis=1)  # (k, n), each row contiguous for the kernel
    parts = kernels.by_rows(kernels.concordant_counts, ordered, level[order], event[order])
    greater = np.concatenate([g for g, _ in parts]).astype(float)
    ties = np.concatenate([t for _, t in parts]).astype(float)
    return (greater + 0.5 * ties) / pairs


@dataclass(frozen=True, slots=True)
class KaplanMeier:
    """Kaplan-Meier estimate: survival just after each distinct time in `times`."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    greenwood: np.ndarray  # cumulative sum of d / (n (n - d)), for the variance

    def at(self, t: float) -> float:
        """S(t) = P(T > t), a right-continuous step function; 1 before the first time."""
        return float(self.at_times(np.array([t]))[0])

    def ci_at(self, t: float) -> tuple[float, float]:
        """95% CI of S(t) on the log(-log) scale, as lifelines computes it."""
        low, high = self.ci_at_times(np.array([t]))
        return float(low[0]), float(high[0])

    def at_times(self, t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.times, t, side="right") - 1
        return np.where(i >= 0, self.survival[np.maximum(i, 0)] if len(self.times) else 1.0, 1.0)

    def ci_at_times(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.searchsorted(self.times, t, side="right") - 1
        s = self.at_times(t)
        v = np.where(i >= 0, self.greenwood[np.maximum(i, 0)] if len(self.times) else 0.0, 0.0)
        inside = (s > 0) & (s < 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            half = np.where(inside, Z_95 * np.sqrt(v) / np.log(np.where(inside, s, 0.5)), 0.0)
        return np.where(inside, s ** np.exp(-half), s), np.where(inside, s ** np.exp(half), s)

    def rmst(self, horizon: float) -> float:
        """Restricted mean survival time: the area under S(t) from 0 to `horizon` (days)."""
        edges = np.concatenate([[0.0], self.times[self.times < horizon], [horizon]])
        levels = np.concatenate([[1.0], self.survival[self.times < horizon]])
        return float((np.diff(edges) * levels).sum())


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> KaplanMeier:
    """KM estimate at every distinct time (events and censorings)."""
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    times, inverse = np.unique(time, return_inverse=True)
    removed = np.bincount(inverse, minlength=len(times))
    deaths = np.bincount(inverse, weights=event, minlength=len(times))
    at_risk = len(time) - np.concatenate([[0], np.cumsum(removed)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1 - deaths / at_risk, 1.0)
        green = np.where(at_risk - deaths > 0, deaths / (at_risk * (at_risk - deaths)), 0.0)
    return KaplanMeier(times, np.cumprod(factor), at_risk, deaths, np.cumsum(green))


@dataclass(frozen=True, slots=True)
class TimeIndex:
    """Distinct times of a (time, event) sample, computed once and reused by KM and log-rank."""

    time: np.ndarray
    event: np.ndarray
    times: np.ndarray  # distinct times, ascending
    inverse: np.ndarray  # per account: index into `times`

    @classmethod
    def of(cls, time: np.ndarray, event: np.ndarray) -> TimeIndex:
        time = np.asarray(time, float)
        times, inverse = np.unique(time, return_inverse=True)
        return cls(time, np.asarray(event, bool), times, inverse.ravel())

    def counts(self, groups: np.ndarray, n_groups: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(accounts leaving, events) per distinct time and group code, among `rows` (default: all):
        two (T, n_groups) arrays."""
        part = np.zeros(len(groups), np.int8) if rows is None else np.asarray(rows, bool).view(np.int8) - 1
        leaving, events = self.part_counts(groups, n_groups, part, 1)
        return leaving[0], events[0]

    def part_counts(self, groups: np.ndarray, n_groups: int, part: np.ndarray, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
        """(accounts leaving, events) per part (`part` of each account, -1 for none), distinct time and
        group code, in one pass over the accounts: two (n_parts, T, n_groups) arrays."""
        return kernels.time_group_counts(self.inverse, self.event, np.asarray(groups, np.int64), part, n_parts,
                                         len(self.times), n_groups)


def km_at_masks(time: np.ndarray, event: np.ndarray, masks: np.ndarray, horizon: float, *,
                index: TimeIndex | None = None) -> np.ndarray:
    """KM survival at `horizon` within each subgroup column of the boolean `masks` (n, Q)."""
    idx = index or TimeIndex.of(time, event)
    n_t = int(np.searchsorted(idx.times, horizon, side="right"))  # distinct times <= horizon
    if n_t == 0:
        return np.ones(masks.shape[1])
    order = np.argsort(idx.inverse, kind="stable")  # the accounts by time
    starts = np.searchsorted(idx.inverse[order], np.arange(len(idx.times)))  # each distinct time's first
    m = masks[order].astype(np.float64)
    leaving = np.add.reduceat(m, starts, axis=0)
    return _km_product(leaving, np.add.reduceat(m * idx.event[order, None], starts, axis=0), n_t)


def _km_product(leaving: np.ndarray, dying: np.ndarray, n_t: int) -> np.ndarray:
    """KM survival after the first `n_t` distinct times, per column of per-time counts (T, Q)."""
    at_risk = _revcumsum(leaving, axis=0)[:n_t]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1 - dying[:n_t] / np.maximum(at_risk, 1), 1.0)
    return np.prod(factor, axis=0)


def cut_levels(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """How many of the ascending `cuts` each value reaches: value >= cuts[j] exactly when level > j."""
    return kernels.cut_levels(np.asarray(values, float), np.asarray(cuts, float))


@dataclass(frozen=True, slots=True)
class CutCounts:
    """Accounts leaving and events per distinct time of `index`, among the accounts in `rows`: in
    total and among those with value >= each cut. One pass over the accounts (`TimeIndex.counts`);
    the log-rank test and KM survival of every 'value >= cut' split then come from (times x cuts)
    tables, so a threshold scan costs O(n + times x cuts), not O(n x cuts)."""

    index: TimeIndex
    leaving: np.ndarray  # (T,)
    events: np.ndarray  # (T,)
    leaving_above: np.ndarray  # (T, Q)
    events_above: np.ndarray  # (T, Q)

    @classmethod
    def of(cls, index: TimeIndex, values: np.ndarray, cuts: np.ndarray, rows: np.ndarray | None = None) -> CutCounts:
        """`cuts` ascending."""
        return cls.of_levels(index, cut_levels(values, cuts), len(cuts), rows)

    @classmethod
    def of_levels(cls, index: TimeIndex, level: np.ndarray, q: int, rows: np.ndarray | None = None) -> CutCounts:
        """From `cut_levels`: each account's number of cuts reached (0..q)."""
        return cls.of_table(index, *index.counts(level, q + 1, rows))

    @classmethod
    def of_table(cls, index: TimeIndex, leaving: np.ndarray, events: np.ndarray) -> CutCounts:
        """From the accounts leaving and events per distinct time and level (T, q + 1), as
        `TimeIndex.counts` returns them."""
        above_l, above_e = _revcumsum(leaving), _revcumsum(events)  # level >= j, for j = 0 (all) .. q
        return cls(index, above_l[:, 0], above_e[:, 0], above_l[:, 1:], above_e[:, 1:])

    def cut(self, j: int) -> CutCounts:
        """The counts of cut j alone (a 'value >= cuts[j]' split); the same numbers as counting again
        with that one cut, since the counts are whole numbers."""
        return CutCounts(self.index, self.leaving, self.events, self.leaving_above[:, j:j + 1],
                         self.events_above[:, j:j + 1])

    def summary(self, horizon: float) -> tuple[float, float, float]:
        """For counts of one cut: KM survival at `horizon` above and below it, and the log-rank p."""
        (above,), (below,) = self.km_at(horizon)
        return float(above), float(below), float(self.logrank()[1][0])

    def logrank(self) -> tuple[np.ndarray, np.ndarray]:
        """Signed z (> 0: the 'above' group has more events than expected) and p, per cut."""
        n1 = _revcumsum(self.leaving_above, axis=0)
        n, d = _revcumsum(self.leaving, axis=0)[:, None], self.events[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # times where nobody is at risk add nothing
            expected = np.where(n > 0, n1 * d / n, 0.0).sum(axis=0)
            var = np.where(n > 1, n1 * (n - n1) * d * (n - d) / (n**2 * (n - 1)), 0.0).sum(axis=0)
            z = (self.events_above.sum(axis=0) - expected) / np.sqrt(var)
        return z, 2 * normal_sf(np.abs(z))

    def km_at(self, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        """KM survival at `horizon` above and below each cut."""
        n_t = int(np.searchsorted(self.index.times, horizon, side="right"))
        below_l, below_e = self.leaving[:, None] - self.leaving_above, self.events[:, None] - self.events_above
        return _km_product(self.leaving_above, self.events_above, n_t), _km_product(below_l, below_e, n_t)


@dataclass(frozen=True, slots=True)
class LogRank:
    statistic: float
    p_value: float
    degrees_of_freedom: int


def logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray, *, index: TimeIndex | None = None) -> LogRank:
    """Log-rank test across the groups in `group` (k >= 2 levels), chi-square with k-1 df."""
    idx = index or TimeIndex.of(time, event)
    levels, g = np.unique(np.asarray(group), return_inverse=True)
    k = len(levels)
    if k < 2:
        return LogRank(0.0, 1.0, 0)
    removed, deaths = idx.counts(g.ravel(), k)
    at_risk = removed.sum(0) - np.vstack([np.zeros((1, k)), np.cumsum(removed, 0)[:-1]])
    n_tot = at_risk.sum(1)
    d_tot = deaths.sum(1)
    ok = (n_tot > 0) & (d_tot > 0)
    at_risk, deaths, n_tot, d_tot = at_risk[ok], deaths[ok], n_tot[ok], d_tot[ok]
    expected = at_risk * (d_tot / n_tot)[:, None]
    diff = (deaths - expected).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_tot > 1, d_tot * (n_tot - d_tot) / (n_tot**2 * (n_tot - 1)), 0.0)
    cov = -np.einsum("t,tj,tl->jl", scale, at_risk, at_risk)  # scale * (n_tot diag(n_j) - n_j n_l)
    cov[np.diag_indices(k)] += np.einsum("t,t,tj->j", scale, n_tot, at_risk)
    u, v = diff[:-1], cov[:-1, :-1]
    stat = float(u @ np.linalg.pinv(v) @ u)
    return LogRank(stat, chi2_sf(stat, k - 1), k - 1)


@dataclass(frozen=True, slots=True)
class PHTest:
    """Grambsch-Therneau test of proportional hazards for a univariate Cox fit (rank time transform)."""

    statistic: float
    p_value: float
    n_accounts: int
    n_events: int


def schoenfeld_test(time: np.ndarray, event: np.ndarray, x: np.ndarray) -> PHTest:
    """Fit a univariate Cox model of x and test whether its effect changes with (ranked) time.

    Scaled Schoenfeld residuals r*_i = D * var(beta) * (x_i - weighted mean of x in the risk set,
    Efron-averaged over tied deaths) are correlated with the rank of the event times, as in
    lifelines' `proportional_hazard_test(..., time_transform="rank")`. Chi-square with 1 df.
    """
    time, event, x = np.asarray(time, float), np.asarray(event, bool), np.asarray(x, float)
    fit = cox_fit(time, event, x[None, :, None])
    beta, var = float(fit.beta[0, 0]), float(fit.variance[0, 0, 0])
    blocks = _Blocks.of(time, event)
    risk_mean = np.empty(len(x))
    risk_mean[blocks.order] = kernels.efron_means(x[blocks.order], beta, blocks.starts, blocks.deaths)
    deaths = np.flatnonzero(event)
    deaths = deaths[np.argsort(time[deaths], kind="stable")]  # by event time, ties in file order
    resid = x[deaths] - risk_mean[deaths]
    n_events = len(resid)
    scaled = n_events * var * resid
    ranks = np.arange(1, n_events + 1, dtype=float)
    g = ranks - ranks.mean()
    stat = float((g * scaled).sum() ** 2 / (n_events * var * (g**2).sum()))
    return PHTest(stat, chi2_sf(stat, 1), len(time), n_events)


def spearman_with(ranked: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column (already ranked by `rank_columns`) with y."""
    ry = pl.Series(np.asarray(y, dtype=float)).rank("average").to_numpy().astype(float)
    return _pearson_columns(ranked, ry)


def inverse_spread(a: np.ndarray) -> np.ndarray:
    """1 / sqrt(sum (a - mean a)^2) per column of a (n, k), without a centred copy (sum a^2 - n mean(a)^2);
    NaN for a constant column (what is left of it is rounding: no variation, no correlation)."""
    squares = np.einsum("ij,ij->j", a, a)
    spread = squares - len(a) * a.mean(axis=0) ** 2
    constant = spread <= 1e-12 * squares
    return np.where(constant, np.nan, 1 / np.sqrt(np.where(constant, 1.0, spread)))


def _pearson_columns(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of a (n, k) with y: with y centred, sum (a - mean a) y = a'y."""
    y = y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        return (y @ a) * inverse_spread(a) / np.sqrt(y @ y)


def spearman_matrix(ranked: np.ndarray) -> np.ndarray:
    """Spearman correlations between all columns of a ranked (n, k) matrix, by one matrix product:
    sum (a - mean a)(b - mean b) = a'b - n mean(a) mean(b). NaN for a constant column."""
    mean = ranked.mean(axis=0)
    scale = inverse_spread(ranked)
    return np.clip((ranked.T @ ranked - len(ranked) * np.outer(mean, mean)) * np.outer(scale, scale), -1.0, 1.0)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN inputs stay NaN and are not counted."""
    p = np.asarray(p, float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    values = p[ok]
    order = np.argsort(values, kind="stable")
    ranked = values[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    q[ok] = out
    return q


def retained_at(time: np.ndarray, event: np.ndarray, horizon: float) -> np.ndarray:
    """Per-account retention at `horizon`, with KM imputation for early censoring.

    1 if the account is known to be active at the horizon, 0 if it churned at or before it,
    and S(horizon) / S(censoring time) — the KM probability of staying — if it was censored
    earlier. So censored accounts are neither dropped nor counted as retained.
    """
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    km = kaplan_meier(time, event)
    s_h = km.at(horizon)
    idx = np.searchsorted(km.times, time, side="right") - 1
    s_c = np.where(idx >= 0, km.survival[np.maximum(idx, 0)], 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        imputed = np.where(s_c > 0, s_h / s_c, 0.0)
    out = np.where(time > horizon, 1.0, imputed)
    out = np.where(event & (time <= horizon), 0.0, out)
    return np.where(~event & (time >= horizon), 1.0, out)

"""Statistics per candidate for one outcome: Cox HR per SD, concordance, Spearman, q-values.

All candidates of an outcome are fitted together (one batched Newton-Raphson). A fit that
does not converge or runs off to a huge coefficient (complete separation) is refitted with a
weak ridge penalty (a N(0, 1) prior on the log hazard ratio per SD) and marked `penalized`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from nsm_cli import kernels, stats

SEPARATION_BETA = 8.0  # |log HR per SD| beyond this means the likelihood has no finite maximum
COLLINEAR_R2 = 0.9  # a candidate this well explained by the segments has no separate adjusted effect
ADJUST_Q = 0.05  # the adjusted HR is computed for candidates significant in that outcome (it can only
# change a verdict there: confounding is moot for a metric with no effect to explain)
MIN_LEVEL_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class OutcomeData:
    """Accounts usable for one outcome: `rows` index the cohort/metric matrix."""

    name: str
    rows: np.ndarray
    time: np.ndarray
    event: np.ndarray
    spearman_target: np.ndarray
    spearman_target_name: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """Arrays over candidates (same order as the metric matrix columns)."""

    n_accounts: int
    n_events: int
    concordance: np.ndarray
    log_hr: np.ndarray
    se: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    spearman: np.ndarray
    penalized: np.ndarray
    adjusted_log_hr: np.ndarray | None
    adjusted_p_value: np.ndarray | None
    segment_r2: np.ndarray | None  # share of the candidate's variance explained by the segments

    @property
    def hazard_ratio(self) -> np.ndarray:
        return np.exp(self.log_hr)

    @property
    def ci(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore"):
            return np.exp(self.log_hr - stats.Z_95 * self.se), np.exp(self.log_hr + stats.Z_95 * self.se)


def standardise(metrics: np.ndarray) -> np.ndarray:
    """Signed log1p, then centre and scale each column to sample SD 1 (ddof=1)."""
    rows = np.ascontiguousarray(np.asarray(metrics, dtype=float).T)
    out = np.empty(rows.shape)  # each core fills its share of rows
    kernels.by_rows(kernels.standardise, rows, out)
    return out.T


@dataclass(frozen=True, slots=True)
class MetricMatrix:
    """Candidate values (accounts x candidates) with what every outcome derives from them, computed
    once and shared by the outcomes that cover every account."""

    values: np.ndarray
    codes: np.ndarray  # stats.codes_and_ranks(values)
    standardised: np.ndarray  # standardise(values)
    ranks: np.ndarray  # average ranks per column

    @classmethod
    def of(cls, values: np.ndarray, codes: np.ndarray | None = None) -> MetricMatrix:
        if codes is None:
            codes, ranks = stats.codes_and_ranks(values)
        else:
            ranks = stats.average_ranks(codes)
        return cls(values, codes, standardise(values), ranks)

    def rows(self, rows: np.ndarray) -> MetricMatrix:
        if len(rows) == len(self.values) and (rows == np.arange(len(rows))).all():
            return self
        return MetricMatrix.of(self.values[rows], self.codes[rows])  # codes keep their order on a subset


@dataclass(frozen=True, slots=True)
class Segments:
    """How to adjust for segments: categorical ones as Cox strata, numeric ones as covariates.

    `strata`: one integer code per account (combinations of the categorical segments; any
    combination under 1% of accounts is pooled into one 'other' stratum). `covariates`: numeric
    segments as standardised log1p, collinear columns dropped. `dummies`: the strata as indicator
    columns, used only to measure how much of a candidate the segments explain.
    """

    strata: np.ndarray | None
    covariates: np.ndarray | None
    dummies: np.ndarray | None

    def explained_design(self) -> np.ndarray:
        parts = [p for p in (self.dummies, self.covariates) if p is not None]
        return np.hstack(parts) if parts else np.zeros((0, 0))


def segment_design(frame: pl.DataFrame, segment_columns: tuple[str, ...]) -> Segments | None:
    numeric, categorical = [], []
    for col in segment_columns:
        raw = frame[f"segment:{col}"]
        values = raw.cast(pl.Float64, strict=False)
        if raw.null_count() < raw.len() and values.null_count() == raw.null_count() and values.n_unique() > 2:
            numeric.append(standardise(values.fill_null(values.median()).to_numpy()[:, None]))
        else:
            categorical.append(raw.fill_null("(missing)").alias(col))
    strata = dummies = None
    if categorical:
        combo = pl.DataFrame(categorical).select(pl.concat_str(pl.all(), separator="\x1f").alias("s"))["s"]
        counts = combo.value_counts(name="n")
        small = counts.filter(pl.col("n") < MIN_LEVEL_SHARE * combo.len())["s"]
        combo = pl.DataFrame({"s": combo}).select(
            pl.when(pl.col("s").is_in(small.implode())).then(pl.lit("\x00other")).otherwise(pl.col("s")).alias("s"))["s"]
        n_levels = combo.n_unique()  # strata: each combination's position among them in sorted order
        strata = (combo.rank("dense") - 1).cast(pl.Int64).to_numpy()
        dummies = np.eye(n_levels)[strata][:, 1:] if n_levels > 1 else None
        strata = strata if n_levels > 1 else None
    covariates = _independent_columns(np.hstack(numeric), dummies) if numeric else None
    if strata is None and covariates is None:
        return None
    return Segments(strata, covariates, dummies)


def _independent_columns(z: np.ndarray, base: np.ndarray | None) -> np.ndarray | None:
    """Columns of z that are not linear combinations of earlier ones, of `base` and of the intercept."""
    kept = [np.ones(len(z))] + ([] if base is None else list(base.T))
    start = len(kept)
    for col in z.T:
        trial = np.column_stack([*kept, col])
        if np.linalg.matrix_rank(trial) == trial.shape[1]:
            kept.append(col)
    return np.column_stack(kept[start:]) if len(kept) > start else None


def _fit_univariate(time: np.ndarray, event: np.ndarray, x: np.ndarray) -> tuple[stats.CoxFit, np.ndarray]:
    fit = stats.cox_fit_chunked(time, event, x.T[:, :, None])
    bad = ~fit.converged | (np.abs(fit.beta[:, 0]) > SEPARATION_BETA)
    if not bad.any():
        return fit, bad
    refit = stats.cox_fit_chunked(time, event, x.T[bad][:, :, None], penalizer=1.0 / len(time))
    beta, var = fit.beta.copy(), fit.variance.copy()
    beta[bad], var[bad] = refit.beta, refit.variance
    return stats.CoxFit(beta, var, fit.log_likelihood, fit.converged | bad, 0.0), bad


def gather_evidence(outcome: OutcomeData, metrics: np.ndarray | MetricMatrix, segments: Segments | None, *,
                    direction: float) -> Evidence:
    """`direction` = +1 when longer time is good (churn), -1 when shorter is good (expansion)."""
    shared = metrics if isinstance(metrics, MetricMatrix) else MetricMatrix.of(np.asarray(metrics, float))
    m = shared.rows(outcome.rows)
    t, e = outcome.time, outcome.event
    k = m.values.shape[1]
    if len(t) < 2 or e.sum() == 0:
        nan = np.full(k, np.nan)
        return Evidence(len(t), int(e.sum()), nan, nan, nan, nan, nan, nan, np.zeros(k, bool), None, None, None)
    x = m.standardised
    fit, penalized = _fit_univariate(t, e, x)
    p = fit.p_value[:, 0]
    adjusted_beta = adjusted_p = r2 = None
    q = stats.bh_qvalues(p)
    if segments is not None:
        r2 = explained_share(x, segments.explained_design()[outcome.rows])
        adjusted_beta, adjusted_p = _adjusted(t, e, x, segments, outcome.rows, (q < ADJUST_Q) & (r2 < COLLINEAR_R2),
                                              start=fit.beta[:, 0])
    return Evidence(
        n_accounts=len(t), n_events=int(e.sum()),
        concordance=stats.concordance_of_codes(t, e, m.codes if direction > 0 else m.codes.max(axis=0) - m.codes),
        log_hr=fit.beta[:, 0], se=fit.se[:, 0], p_value=p, q_value=q,
        spearman=stats.spearman_with(m.ranks, outcome.spearman_target),
        penalized=penalized, adjusted_log_hr=adjusted_beta, adjusted_p_value=adjusted_p, segment_r2=r2,
    )


def _adjusted(t: np.ndarray, e: np.ndarray, x: np.ndarray, segments: Segments, rows: np.ndarray,
              wanted: np.ndarray, *, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment-adjusted log HR and p of the `wanted` candidates (NaN for the others): a Cox model
    stratified by the categorical segments, with the numeric segments as covariates. Newton starts
    from the unadjusted log HR `start` (and 0 for the covariates): the same maximum, fewer steps."""
    beta, p = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
    idx = np.flatnonzero(wanted)
    if len(idx) == 0:
        return beta, p
    design = x.T[idx][:, :, None]
    if segments.covariates is not None:
        z = segments.covariates[rows]
        design = np.concatenate([design, np.broadcast_to(z, (len(idx),) + z.shape)], axis=2)
    strata = None if segments.strata is None else segments.strata[rows]
    initial = np.zeros(design.shape[::2])
    initial[:, 0] = np.where(np.abs(start[idx]) < SEPARATION_BETA, start[idx], 0.0)  # NaN -> 0 as well
    fit = stats.cox_fit_chunked(t, e, design, strata=strata, start=initial)
    beta[idx] = np.where(fit.converged, fit.beta[:, 0], np.nan)
    p[idx] = np.where(fit.converged, fit.p_value[:, 0], np.nan)
    return beta, p


def explained_share(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """R^2 of each column of x (n, k) regressed (least squares, with intercept) on z (n, s).

    From the normal equations of the centred design, so that no (n, k) residuals are formed: with Zc
    and Xc centred, the explained sum of squares of column j is b_j' (Zc' Xc)_j for b solving
    (Zc' Zc) b = Zc' Xc (least squares, so collinear segment columns are harmless).
    """
    zc = z - z.mean(axis=0)
    cross = zc.T @ x  # = Zc' Xc, since the columns of Zc sum to zero
    coef = np.linalg.lstsq(zc.T @ zc, cross, rcond=None)[0]
    share = (coef * cross).sum(axis=0) * stats.inverse_spread(x) ** 2  # explained / total sum of squares
    return np.where(np.isnan(share), 0.0, np.clip(share, 0.0, 1.0))  # a constant column: nothing to explain

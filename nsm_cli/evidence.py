"""Statistics per candidate for one outcome: Cox HR per SD, concordance, Spearman, q-values.

All candidates of an outcome are fitted together (one batched Newton-Raphson). A fit that
does not converge or runs off to a huge coefficient (complete separation) is refitted with a
weak ridge penalty (a N(0, 1) prior on the log hazard ratio per SD) and marked `penalized`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from nsm_cli import stats

SEPARATION_BETA = 8.0  # |log HR per SD| beyond this means the likelihood has no finite maximum
COLLINEAR_R2 = 0.9  # a candidate this well explained by the segments has no separate adjusted effect
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
    x = np.sign(metrics) * np.log1p(np.abs(metrics))
    sd = x.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    return (x - x.mean(axis=0)) / sd


def segment_design(frame: pl.DataFrame, segment_columns: tuple[str, ...]) -> np.ndarray | None:
    """Covariates for adjustment: numeric segments as standardised log1p, others as dummies.

    Categorical levels under 1% of accounts are pooled as 'other'; the most common level
    is the reference. Missing values form their own level.
    """
    blocks = []
    for col in segment_columns:
        raw = frame[f"segment:{col}"]
        numeric = raw.cast(pl.Float64, strict=False)
        if raw.null_count() < raw.len() and numeric.null_count() == raw.null_count() and numeric.n_unique() > 2:
            values = numeric.fill_null(numeric.median()).to_numpy()[:, None]
            blocks.append(standardise(values))
            continue
        labels = raw.fill_null("(missing)")
        counts = labels.value_counts(sort=True, name="n")
        keep = counts.filter(pl.col("n") >= MIN_LEVEL_SHARE * raw.len())[raw.name].to_list()
        labels = labels.to_frame().select(
            pl.when(pl.col(raw.name).is_in(keep)).then(pl.col(raw.name)).otherwise(pl.lit("(other)"))
        ).to_series()
        levels = labels.value_counts(sort=True, name="n").sort(["n", raw.name], descending=[True, False])
        for level in levels[raw.name].to_list()[1:]:
            blocks.append((labels == level).to_numpy().astype(float)[:, None])
    return _independent_columns(np.hstack(blocks)) if blocks else None


def _independent_columns(z: np.ndarray) -> np.ndarray | None:
    """Drop columns that are linear combinations of earlier ones (and of the intercept)."""
    kept = [np.ones(len(z))]
    for col in z.T:
        trial = np.column_stack([*kept, col])
        if np.linalg.matrix_rank(trial) == trial.shape[1]:
            kept.append(col)
    return np.column_stack(kept[1:]) if len(kept) > 1 else None


def _fit_univariate(time: np.ndarray, event: np.ndarray, x: np.ndarray) -> tuple[stats.CoxFit, np.ndarray]:
    fit = stats.cox_fit_chunked(time, event, x.T[:, :, None])
    bad = ~fit.converged | (np.abs(fit.beta[:, 0]) > SEPARATION_BETA)
    if not bad.any():
        return fit, bad
    refit = stats.cox_fit_chunked(time, event, x.T[bad][:, :, None], penalizer=1.0 / len(time))
    beta, var = fit.beta.copy(), fit.variance.copy()
    beta[bad], var[bad] = refit.beta, refit.variance
    return stats.CoxFit(beta, var, fit.log_likelihood, fit.converged | bad, 0.0), bad


def gather_evidence(outcome: OutcomeData, metrics: np.ndarray, covariates: np.ndarray | None, *,
                    direction: float) -> Evidence:
    """`direction` = +1 when longer time is good (churn), -1 when shorter is good (expansion)."""
    m = metrics[outcome.rows]
    t, e = outcome.time, outcome.event
    k = m.shape[1]
    if len(t) < 2 or e.sum() == 0:
        nan = np.full(k, np.nan)
        return Evidence(len(t), int(e.sum()), nan, nan, nan, nan, nan, nan, np.zeros(k, bool), None, None, None)
    x = standardise(m)
    fit, penalized = _fit_univariate(t, e, x)
    p = fit.p_value[:, 0]
    adjusted_beta = adjusted_p = r2 = None
    if covariates is not None:
        z = covariates[outcome.rows]
        r2 = explained_share(x, z)
        design = np.concatenate([x.T[:, :, None], np.broadcast_to(z, (k,) + z.shape)], axis=2)
        adjusted = stats.cox_fit_chunked(t, e, design)
        identifiable = (r2 < COLLINEAR_R2) & adjusted.converged
        adjusted_beta = np.where(identifiable, adjusted.beta[:, 0], np.nan)
        adjusted_p = np.where(identifiable, adjusted.p_value[:, 0], np.nan)
    ranked = stats.rank_columns(m)
    return Evidence(
        n_accounts=len(t), n_events=int(e.sum()),
        concordance=stats.concordance(t, e, direction * m.T),
        log_hr=fit.beta[:, 0], se=fit.se[:, 0], p_value=p, q_value=stats.bh_qvalues(p),
        spearman=stats.spearman_with(ranked, outcome.spearman_target),
        penalized=penalized, adjusted_log_hr=adjusted_beta, adjusted_p_value=adjusted_p, segment_r2=r2,
    )


def explained_share(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """R^2 of each column of x (n, k) regressed (least squares, with intercept) on z (n, s)."""
    design = np.column_stack([np.ones(len(z)), z])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    resid = x - design @ coef
    total = ((x - x.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1 - (resid**2).sum(0) / total, 0.0)

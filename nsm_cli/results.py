"""Result objects: frozen, typed, with `to_dict()` for the versioned JSON contract."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def clean(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Threshold:
    """Best "metric >= value" split, chosen on the training half, confirmed on the holdout half.

    `retention_above/below`: Kaplan-Meier probability of being outcome-free at the horizon
    (for churn: retained; for expansion: not yet expanded), on all analysed accounts.
    """

    value: float
    share_above: float
    retention_above: float
    retention_below: float
    holdout_retention_above: float
    holdout_retention_below: float
    holdout_p_value: float
    holdout_confirmed: bool
    logrank_p_value: float

    def to_dict(self) -> dict[str, Any]:
        return clean({
            "value": self.value, "share_above": self.share_above,
            "retention_above": self.retention_above, "retention_below": self.retention_below,
            "holdout_retention_above": self.holdout_retention_above,
            "holdout_retention_below": self.holdout_retention_below,
            "holdout_p_value": self.holdout_p_value, "holdout_confirmed": self.holdout_confirmed,
            "logrank_p_value": self.logrank_p_value,
        })


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    """One candidate against one outcome (churn or expansion).

    concordance: C > 0.5 means "higher metric, longer survival" (churn) or "higher metric,
    sooner expansion" (expansion). hazard_ratio: per standard deviation of log1p(metric), of
    the outcome's hazard (churn: < 1 protects; expansion: > 1 speeds expansion).
    """

    n_accounts: int
    n_events: int
    concordance: float
    hazard_ratio: float
    hr_ci_low: float
    hr_ci_high: float
    p_value: float
    q_value: float
    spearman: float
    spearman_target: str
    fit: str  # ok | penalized (separation or no convergence: ridge fallback)
    adjusted_hazard_ratio: float | None = None
    adjusted_p_value: float | None = None
    segment_r2: float | None = None
    threshold: Threshold | None = None

    def to_dict(self) -> dict[str, Any]:
        return clean({
            "n_accounts": self.n_accounts, "n_events": self.n_events,
            "concordance": self.concordance, "hazard_ratio": self.hazard_ratio,
            "hr_ci_low": self.hr_ci_low, "hr_ci_high": self.hr_ci_high,
            "p_value": self.p_value, "q_value": self.q_value,
            "spearman": self.spearman, "spearman_target": self.spearman_target, "fit": self.fit,
            "adjusted_hazard_ratio": self.adjusted_hazard_ratio, "adjusted_p_value": self.adjusted_p_value,
            "segment_r2": self.segment_r2,
            "threshold": self.threshold.to_dict() if self.threshold else None,
        })


@dataclass(frozen=True, slots=True)
class CandidateResult:
    rank: int
    name: str
    source: str
    aggregation: str
    origin: str
    score: float
    score_components: dict[str, float]
    coverage: float
    reach: str
    flags: tuple[str, ...]
    family: str | None
    tenure_spearman: float
    churn: OutcomeStats
    expansion: OutcomeStats | None

    def to_dict(self) -> dict[str, Any]:
        return clean({
            "rank": self.rank, "name": self.name, "source": self.source, "aggregation": self.aggregation,
            "origin": self.origin, "score": self.score, "score_components": self.score_components,
            "coverage": self.coverage, "reach": self.reach, "flags": list(self.flags),
            "family": self.family, "tenure_spearman": self.tenure_spearman,
            "churn": self.churn.to_dict(),
            "expansion": self.expansion.to_dict() if self.expansion else None,
        })


@dataclass(frozen=True, slots=True)
class DataSummary:
    """What went in and what was left out, by reason. analysed + sum(excluded) == total."""

    accounts_total: int
    accounts_analysed: int
    excluded: dict[str, int]
    expansion_accounts: int
    expansion_excluded: dict[str, int]
    churn_events: int
    expansion_events: int
    usage_kind: str
    as_of: str
    first_signup: str | None
    last_signup: str | None
    warnings: tuple[dict[str, Any], ...] = ()
    skipped_candidates: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return clean({
            "accounts_total": self.accounts_total, "accounts_analysed": self.accounts_analysed,
            "accounts_excluded": dict(sorted(self.excluded.items())),
            "expansion_accounts": self.expansion_accounts,
            "expansion_excluded": dict(sorted(self.expansion_excluded.items())),
            "churn_events": self.churn_events, "expansion_events": self.expansion_events,
            "usage_kind": self.usage_kind, "first_signup": self.first_signup, "last_signup": self.last_signup,
            "warnings": list(self.warnings),
            "skipped_candidates": [{"name": n, "reason": r} for n, r in self.skipped_candidates],
        })


@dataclass(frozen=True, slots=True)
class Report:
    settings: dict[str, Any]
    data: DataSummary
    candidates: tuple[CandidateResult, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "settings": clean(self.settings),
            "data": self.data.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "meta": clean(self.meta),
        }

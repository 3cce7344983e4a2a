"""The decision policy: thresholds with holdout, score, flags, families, rank order.

Score (0-100), documented in the README and reported component by component:

    C'_o       = C_o, or 1 - C_o for a days_to_first candidate whose data say sooner is better
    power_o    = clip((C'_o - 0.5) / 0.25, 0, 1)         for o in churn, expansion
    evidence_o = power_o * (1 if q_o < 0.05 else 0.5)
    combined   = (w_churn * evidence_churn + w_exp * evidence_exp) / (w_churn + w_exp)
    coverage_f = min(1, coverage / 0.20)
    penalty    = 0 for risk_signal, tracks_tenure, too_good_to_be_true; 0.5 for confounded; else 1
    score      = 100 * combined * coverage_f * penalty
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from nsm_cli import stats
from nsm_cli.config import Weights
from nsm_cli.evidence import Evidence, OutcomeData
from nsm_cli.results import CandidateResult, OutcomeStats, Threshold

ALPHA = 0.05
FULL_POWER_C = 0.75
FULL_COVERAGE = 0.20
LOW_COVERAGE = 0.10
MIN_SIDE_SHARE = 0.10
REDUNDANT_RHO = 0.9
TENURE_RHO = 0.7
TOO_GOOD_C = 0.95
VANITY_TREND = 0.2
NO_POWER_C = 0.02
CONFOUNDED_KEEP = 0.5  # adjusted log HR keeps less than half of the raw one
COLLINEAR_R2 = 0.9  # or the segments explain >= 90% of the candidate's variance
VOLUME_AGGREGATIONS = {"count", "sum", "active_days", "active_weeks", "users", "per_user", "mean", "value",
                       "active_periods"}


def holdout_split(ids: np.ndarray | pl.Series, seed: int) -> np.ndarray:
    """Deterministic half split by a 64-bit FNV-1a hash (murmur3 finaliser) of the account id's UTF-8
    bytes; True = training."""
    raw = pl.Series(ids, dtype=pl.String).cast(pl.Binary).to_numpy().astype("S")  # polars encodes ~5x faster
    width = max(1, raw.dtype.itemsize)
    codes = np.frombuffer(raw.astype(f"S{width}").tobytes(), dtype=np.uint8).reshape(len(ids), width)
    lengths = np.char.str_len(raw)
    h = np.full(len(ids), np.uint64(0xCBF29CE484222325) ^ np.uint64(seed & 0xFFFFFFFF), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = j < lengths
            h = np.where(live, (h ^ codes[:, j].astype(np.uint64)) * prime, h)
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):  # murmur3 fmix64: spread every input bit
            h = (h ^ (h >> np.uint64(33))) * np.uint64(mult)
    h ^= h >> np.uint64(33)
    return (h & np.uint64(1)) == 0


@dataclass(frozen=True, slots=True)
class Split:
    """One outcome's accounts split into training and holdout halves, with its time index built once."""

    outcome: OutcomeData
    train: np.ndarray  # boolean over the outcome's accounts
    full: stats.TimeIndex

    @classmethod
    def of(cls, outcome: OutcomeData, train: np.ndarray) -> Split:
        return cls(outcome, train, stats.TimeIndex.of(outcome.time, outcome.event))

    def holdout(self, at_cut: np.ndarray, horizon: float) -> tuple[float, float, float]:
        """On the holdout half, for `at_cut` (1 = at or above the chosen cut, 0 = below): KM survival at
        `horizon` above and below, and the log-rank p."""
        return stats.CutCounts.of_levels(self.full, at_cut, 1, ~self.train).summary(horizon)


def threshold_grid(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Candidate cuts t (from the quantiles of `values`) that leave >= 10% of accounts on each side of
    'metric >= t'."""
    ordered = np.sort(values)
    at = np.quantile(np.arange(len(values)), quantiles, method="higher").astype(np.int64)  # numpy's own positions
    grid = np.unique(ordered[at])
    share = (len(values) - np.searchsorted(ordered, grid, side="left")) / len(values)
    return grid[(share >= MIN_SIDE_SHARE) & (share <= 1 - MIN_SIDE_SHARE)]


RANK_QUANTILES = np.linspace(0.1, 0.9, 17)


def find_threshold(values: np.ndarray, split: Split, horizon: float) -> Threshold | None:
    """Best 'metric >= t' split, confirmed on the holdout.

    The cut maximises the two-group log-rank statistic on the training half (each side >= 10% of
    accounts); it is confirmed when the holdout half shows the same direction of the difference in
    outcome-free survival at `horizon`, with log-rank p < 0.05.
    """
    train = split.train
    tv = values[train]
    if len(tv) < 20 or (~train).sum() < 20:
        return None
    grid = threshold_grid(tv, RANK_QUANTILES)
    if len(grid) == 0:
        return None
    # one pass counts both halves by time and cut level (part 0: training, 1: holdout)
    leaving, events = split.full.part_counts(stats.cut_levels(values, grid), len(grid) + 1,
                                             1 - train.astype(np.int8), 2)
    on_train = stats.CutCounts.of_table(split.full, leaving[0], events[0])
    z, _ = on_train.logrank()  # maximally selected log-rank statistic
    best = int(np.nanargmax(np.abs(z))) if np.isfinite(z).any() else 0
    train_above, train_below = (s[best] for s in on_train.km_at(horizon))
    held = stats.CutCounts.of_table(split.full, leaving[1], events[1]).cut(best)
    hold_above, hold_below, hold_p = held.summary(horizon)
    everyone = stats.CutCounts.of_table(split.full, leaving.sum(axis=0), events.sum(axis=0)).cut(best)
    above, below, everyone_p = everyone.summary(horizon)
    confirmed = bool(np.sign(hold_above - hold_below) == np.sign(train_above - train_below) and hold_p < ALPHA)
    return Threshold(
        value=float(grid[best]), share_above=float(everyone.leaving_above.sum() / len(values)), retention_above=above,
        retention_below=below, holdout_retention_above=hold_above, holdout_retention_below=hold_below,
        holdout_p_value=hold_p, holdout_confirmed=confirmed, logrank_p_value=everyone_p,
    )


def reach_label(coverage: float) -> str:
    if coverage < 0.10:
        return "rare"
    if coverage < 0.50:
        return "minority"
    if coverage <= 0.90:
        return "majority"
    return "almost all"


def outcome_stats(ev: Evidence, j: int, target: str, threshold: Threshold | None) -> OutcomeStats:
    low, high = ev.ci
    return OutcomeStats(
        n_accounts=ev.n_accounts, n_events=ev.n_events, concordance=float(ev.concordance[j]),
        hazard_ratio=float(ev.hazard_ratio[j]), hr_ci_low=float(low[j]), hr_ci_high=float(high[j]),
        p_value=float(ev.p_value[j]), q_value=float(ev.q_value[j]), spearman=float(ev.spearman[j]),
        spearman_target=target, fit="penalized" if ev.penalized[j] else "ok",
        adjusted_hazard_ratio=None if ev.adjusted_log_hr is None else float(np.exp(ev.adjusted_log_hr[j])),
        adjusted_p_value=None if ev.adjusted_p_value is None else float(ev.adjusted_p_value[j]),
        segment_r2=None if ev.segment_r2 is None else float(ev.segment_r2[j]),
        threshold=threshold,
    )


@dataclass(frozen=True, slots=True)
class CandidateFacts:
    """Everything the policy needs about one candidate besides its outcome statistics."""

    name: str
    source: str
    aggregation: str
    origin: str
    coverage: float
    tenure_spearman: float
    volume_trend: float  # Spearman with signup date: > 0 means newer accounts do more of it


def orientation(facts: CandidateFacts, churn: OutcomeStats) -> float:
    """+1 when higher is better; -1 for `days_to_first` when the data say sooner is better."""
    if facts.aggregation == "days_to_first" and np.isfinite(churn.concordance) and churn.concordance < 0.5:
        return -1.0
    return 1.0


def _oriented_c(o: OutcomeStats | None, sign: float) -> float:
    return float("nan") if o is None else 0.5 + sign * (o.concordance - 0.5)


def _power(c: float) -> float:
    return float(np.clip((c - 0.5) / (FULL_POWER_C - 0.5), 0, 1)) if np.isfinite(c) else 0.0


def _significant(o: OutcomeStats | None) -> bool:
    return o is not None and np.isfinite(o.q_value) and o.q_value < ALPHA


def _no_power(o: OutcomeStats | None) -> bool:
    return o is None or not _significant(o) or abs(o.concordance - 0.5) < NO_POWER_C


def _confounded(churn: OutcomeStats) -> bool:
    if not _significant(churn):
        return False
    if churn.segment_r2 is not None and churn.segment_r2 >= COLLINEAR_R2:
        return True
    adj = churn.adjusted_hazard_ratio
    return adj is not None and np.isfinite(adj) and abs(np.log(adj)) < CONFOUNDED_KEEP * abs(np.log(churn.hazard_ratio))


def candidate_flags(facts: CandidateFacts, churn: OutcomeStats, expansion: OutcomeStats | None) -> list[str]:
    sign = orientation(facts, churn)
    flags = []
    if _significant(churn) and _oriented_c(churn, sign) < 0.5:
        flags.append("risk_signal")
    if not _significant(churn) and not _significant(expansion):
        flags.append("not_significant")
    if facts.coverage < LOW_COVERAGE:
        flags.append("low_coverage")
    if (_no_power(churn) and _no_power(expansion) and facts.volume_trend >= VANITY_TREND
            and facts.aggregation in VOLUME_AGGREGATIONS):
        flags.append("vanity")
    if _confounded(churn):
        flags.append("confounded")
    if abs(facts.tenure_spearman) >= TENURE_RHO:
        flags.append("tracks_tenure")
    extreme = [o for o in (churn, expansion) if o is not None and np.isfinite(o.concordance)]
    if any(abs(o.concordance - 0.5) >= TOO_GOOD_C - 0.5 or o.fit == "penalized" for o in extreme):
        flags.append("too_good_to_be_true")
    return flags


def score_candidate(facts: CandidateFacts, churn: OutcomeStats, expansion: OutcomeStats | None,
                    flags: list[str], weights: Weights) -> tuple[float, dict[str, float]]:
    """The README's score formula; every intermediate value is returned for the JSON output."""
    sign = orientation(facts, churn)
    w_exp = weights.expansion if expansion is not None and np.isfinite(expansion.concordance) else 0.0
    w_churn = weights.churn if (w_exp or weights.churn) else 1.0
    parts = {"orientation": sign, "churn_power": _power(_oriented_c(churn, sign)),
             "expansion_power": _power(_oriented_c(expansion, sign))}
    parts["churn_evidence"] = parts["churn_power"] * (1.0 if _significant(churn) else 0.5)
    parts["expansion_evidence"] = parts["expansion_power"] * (1.0 if _significant(expansion) else 0.5)
    parts["weight_churn"], parts["weight_expansion"] = w_churn, w_exp
    parts["combined"] = (w_churn * parts["churn_evidence"] + w_exp * parts["expansion_evidence"]) / (w_churn + w_exp)
    parts["coverage_factor"] = min(1.0, facts.coverage / FULL_COVERAGE)
    zeroing = {"risk_signal", "tracks_tenure", "too_good_to_be_true"}
    parts["penalty"] = 0.0 if zeroing & set(flags) else (0.5 if "confounded" in flags else 1.0)
    score = 100 * parts["combined"] * parts["coverage_factor"] * parts["penalty"]
    return score, parts


def rank_candidates(facts: list[CandidateFacts], churn: list[OutcomeStats], expansion: list[OutcomeStats | None],
                    similarity: np.ndarray, weights: Weights) -> tuple[CandidateResult, ...]:
    """Score, flag, order (score desc, churn C desc, name), then group redundant families."""
    scored = []
    for j, f in enumerate(facts):
        flags = candidate_flags(f, churn[j], expansion[j])
        score, parts = score_candidate(f, churn[j], expansion[j], flags, weights)
        scored.append((j, score, parts, flags))
    c_key = [c.concordance if np.isfinite(c.concordance) else 0.0 for c in churn]
    scored.sort(key=lambda s: (-round(s[1], 9), -c_key[s[0]], facts[s[0]].name))
    results = []
    leaders: list[int] = []
    for rank, (j, score, parts, flags) in enumerate(scored, start=1):
        family = next((i for i in leaders if abs(similarity[i, j]) >= REDUNDANT_RHO), None)
        if family is None:
            leaders.append(j)
        else:
            flags = [*flags, "redundant"]
        f = facts[j]
        results.append(CandidateResult(
            rank=rank, name=f.name, source=f.source, aggregation=f.aggregation, origin=f.origin,
            score=score, score_components=parts, coverage=f.coverage, reach=reach_label(f.coverage),
            flags=tuple(flags), family=facts[family].name if family is not None else f.name,
            tenure_spearman=f.tenure_spearman, churn=churn[j], expansion=expansion[j],
        ))
    return tuple(results)

"""The decision policy: score formula by hand, flags, holdout split, thresholds, separation fallback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_cli.config import Weights
from nsm_cli.evidence import OutcomeData, gather_evidence
from nsm_cli.ranking import (
    RANK_QUANTILES,
    CandidateFacts,
    Split,
    candidate_flags,
    find_threshold,
    holdout_split,
    reach_label,
    score_candidate,
    threshold_grid,
)
from nsm_cli.results import OutcomeStats


def _o(c, q, hr=0.7, adj=None, fit="ok", r2=None):
    return OutcomeStats(n_accounts=100, n_events=50, concordance=c, hazard_ratio=hr, hr_ci_low=hr, hr_ci_high=hr,
                        p_value=q, q_value=q, spearman=0.1, spearman_target="x", fit=fit,
                        adjusted_hazard_ratio=adj, segment_r2=r2)


def _facts(coverage=0.5, tenure=0.0, trend=0.0, aggregation="count"):
    return CandidateFacts("e.count", "e", aggregation, "events", coverage, tenure, trend)


def test_score_formula_by_hand():
    churn, exp = _o(0.60, 0.001), _o(0.55, 0.2, hr=1.2)
    flags = candidate_flags(_facts(coverage=0.15), churn, exp)
    score, parts = score_candidate(_facts(coverage=0.15), churn, exp, flags, Weights(0.6, 0.4))
    # churn power (0.60-0.5)/0.25 = 0.4, significant -> 0.4; expansion power 0.2, q >= 0.05 -> 0.1
    # combined = 0.6*0.4 + 0.4*0.1 = 0.28; coverage factor 0.15/0.2 = 0.75 -> 100*0.28*0.75 = 21
    assert flags == []
    assert parts["combined"] == pytest.approx(0.28)
    assert score == pytest.approx(21.0)


def test_without_expansion_all_weight_goes_to_churn():
    score, parts = score_candidate(_facts(), _o(0.65, 0.001), None, [], Weights(0.6, 0.4))
    assert parts["weight_expansion"] == 0 and score == pytest.approx(60.0)


@pytest.mark.parametrize("churn,facts,expected", [
    (_o(0.40, 0.001, hr=1.5), _facts(), "risk_signal"),
    (_o(0.52, 0.30), _facts(), "not_significant"),
    (_o(0.60, 0.001), _facts(coverage=0.05), "low_coverage"),
    (_o(0.505, 0.40), _facts(trend=0.4), "vanity"),
    (_o(0.60, 0.001, hr=0.7, adj=0.95), _facts(), "confounded"),
    (_o(0.60, 0.001, hr=0.7, adj=0.70, r2=0.95), _facts(), "confounded"),
    (_o(0.60, 0.001), _facts(tenure=0.8), "tracks_tenure"),
    (_o(0.97, 1e-9), _facts(), "too_good_to_be_true"),
    (_o(0.70, 1e-9, fit="penalized"), _facts(), "too_good_to_be_true"),
])
def test_each_flag(churn, facts, expected):
    flags = candidate_flags(facts, churn, None)
    assert expected in flags
    score, _ = score_candidate(facts, churn, None, flags, Weights())
    if expected in ("risk_signal", "tracks_tenure", "too_good_to_be_true"):
        assert score == 0


def test_days_to_first_direction_is_read_from_the_data():
    churn = _o(0.40, 0.001, hr=1.4)  # later first use -> more churn: sooner is better
    facts = _facts(aggregation="days_to_first")
    flags = candidate_flags(facts, churn, None)
    score, parts = score_candidate(facts, churn, None, flags, Weights())
    assert "risk_signal" not in flags and parts["orientation"] == -1 and score == pytest.approx(40.0)


def test_reach_labels():
    assert [reach_label(x) for x in (0.05, 0.3, 0.9, 0.95)] == ["rare", "minority", "majority", "almost all"]


def test_holdout_split_is_deterministic_balanced_and_seeded():
    ids = np.array([f"acct_{i}" for i in range(4000)] + ["é-ü", ""])
    a, b = holdout_split(ids, 0), holdout_split(ids, 0)
    assert (a == b).all()
    assert 0.45 < a.mean() < 0.55
    assert (a != holdout_split(ids, 1)).any()
    shuffled = np.random.default_rng(0).permutation(len(ids))
    assert (holdout_split(ids[shuffled], 0) == a[shuffled]).all()
    assert (a == [_fnv_murmur_bit(i, 0) for i in ids]).all()  # the documented hash, bit for bit
    assert (holdout_split(ids, 7) == [_fnv_murmur_bit(i, 7) for i in ids]).all()


def _fnv_murmur_bit(account_id: str, seed: int) -> bool:
    """holdout_split's hash written out in plain Python: FNV-1a over the UTF-8 bytes, murmur3's fmix64."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325 ^ (seed & 0xFFFFFFFF)
    for byte in account_id.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & mask
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * mult) & mask
    h ^= h >> 33
    return h & 1 == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=300), st.sampled_from([RANK_QUANTILES, np.linspace(0.05, 0.95, 19)]))
def test_threshold_grid_is_numpys_quantiles_with_both_sides_large_enough(values, quantiles):
    """Sizes such as 21 or 41 put (n - 1) q on integers, where a rounding slip would pick the next value."""
    v = np.array(values, float)
    grid = np.unique(np.quantile(v, quantiles, method="higher"))
    share = np.array([(v >= g).mean() for g in grid])
    np.testing.assert_array_equal(threshold_grid(v, quantiles), grid[(share >= 0.1) & (share <= 0.9)])


def test_threshold_found_on_train_and_confirmed_on_holdout():
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.poisson(2.0, n).astype(float)
    hazard = np.where(x >= 3, 0.3, 1.0) / 200
    t = np.minimum(rng.exponential(1 / hazard), 365)
    e = t < 365
    out = OutcomeData("churn", np.arange(n), t, e, np.zeros(n), "x")
    train = holdout_split(np.array([f"a{i}" for i in range(n)]), 0)
    thr = find_threshold(x, Split.of(out, train), 90)
    assert thr.value == 3 and thr.holdout_confirmed
    assert thr.retention_above > thr.retention_below
    noise = find_threshold(rng.poisson(2.0, n).astype(float), Split.of(out, train), 90)
    assert not noise.holdout_confirmed


def test_separated_candidate_falls_back_to_penalized_fit():
    rng = np.random.default_rng(1)
    n = 300
    t = rng.exponential(100, n)
    e = np.ones(n, bool)
    separated = (t < np.median(t)).astype(float) * 5  # perfectly predicts who churns first
    normal = rng.poisson(3, n).astype(float)
    out = OutcomeData("churn", np.arange(n), t, e, np.zeros(n), "x")
    ev = gather_evidence(out, np.column_stack([separated, normal]), None, direction=1.0)
    assert ev.penalized.tolist() == [True, False]
    assert np.isfinite(ev.log_hr).all() and np.isfinite(ev.se).all()

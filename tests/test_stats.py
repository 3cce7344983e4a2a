"""Statistics checked against lifelines and scipy on the same arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import concordance_index
from scipy import stats as sps

from nsm_cli import kernels, stats

TOL = 1e-6


def _data(seed: int, n: int = 300, *, ties: bool = True, censor: float = 0.4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(scale=np.exp(-0.5 * x)) * 100
    if ties:
        t = np.ceil(t / 7)  # weekly times: many ties
    e = rng.random(n) > censor
    return t, e, (x - x.mean()) / x.std(ddof=1)


def _lifelines_cox(t, e, X, penalizer=0.0):
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]).assign(T=t, E=e)
    # lifelines' default stopping rule (relative log-likelihood change < 1e-9) can stop ~1e-4
    # short of the optimum on flat, penalised likelihoods; tighten it so the reference is exact.
    tight = {"precision": 1e-12, "r_precision": 1e-15}
    return CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", fit_options=tight)


@pytest.mark.parametrize("seed,ties,censor", [(0, True, 0.4), (1, False, 0.1), (2, True, 0.9), (3, True, 0.0)])
def test_univariate_cox_matches_lifelines(seed, ties, censor):
    t, e, x = _data(seed, ties=ties, censor=censor)
    fit = stats.cox_fit(t, e, x[None, :, None])
    ref = _lifelines_cox(t, e, x[:, None])
    assert fit.converged[0]
    assert fit.beta[0, 0] == pytest.approx(ref.params_.iloc[0], abs=TOL)
    assert fit.se[0, 0] == pytest.approx(ref.standard_errors_.iloc[0], abs=TOL)
    assert fit.p_value[0, 0] == pytest.approx(ref.summary["p"].iloc[0], abs=TOL)
    assert fit.log_likelihood[0] == pytest.approx(ref.log_likelihood_, abs=1e-5)


def test_batched_cox_equals_one_at_a_time_and_multivariate_matches_lifelines():
    t, e, x = _data(5)
    rng = np.random.default_rng(9)
    z = rng.normal(size=len(t))
    X = np.stack([x, z], axis=1)
    batch = stats.cox_fit(t, e, np.stack([X, X[:, ::-1]]))
    ref = _lifelines_cox(t, e, X)
    np.testing.assert_allclose(batch.beta[0], ref.params_.values, atol=TOL)
    np.testing.assert_allclose(batch.beta[1], ref.params_.values[::-1], atol=TOL)
    np.testing.assert_allclose(batch.se[0], ref.standard_errors_.values, atol=TOL)


def test_penalized_cox_matches_lifelines_on_separated_data():
    t = np.arange(1, 41, dtype=float)
    e = np.ones(40, bool)
    x = np.where(t > 20, 1.0, -1.0)  # complete separation
    x = (x - x.mean()) / x.std(ddof=1)
    plain = stats.cox_fit(t, e, x[None, :, None])
    assert abs(plain.beta[0, 0]) > 5 or not plain.converged[0]
    fit = stats.cox_fit(t, e, x[None, :, None], penalizer=0.1)
    ref = _lifelines_cox(t, e, x[:, None], penalizer=0.1)
    assert fit.beta[0, 0] == pytest.approx(ref.params_.iloc[0], abs=TOL)
    assert fit.se[0, 0] == pytest.approx(ref.standard_errors_.iloc[0], abs=TOL)


@pytest.mark.parametrize("workers", [1, 3])
def test_concordance_matches_lifelines_with_ties_and_censoring(monkeypatch, workers):
    """Continuous, rounded (many ties), reversed and constant scores; the columns split over 1 or 3 threads."""
    monkeypatch.setattr(kernels, "workers", lambda: workers)
    t, e, x = _data(11, n=500)
    scores = np.stack([x, np.round(x), -x, np.zeros_like(x), np.round(x * 40)])
    got = stats.concordance(t, e, scores)
    for row, s in enumerate(scores):
        assert got[row] == pytest.approx(concordance_index(t, s, e), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40))
def test_concordance_property_equals_lifelines(rows):
    _check_concordance(rows)


def _check_concordance(rows):
    t = np.array([r[0] for r in rows], float)
    e = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows], float)
    got = stats.concordance(t, e, s[None])[0]
    try:
        ref = concordance_index(t, s, e)
    except ZeroDivisionError:
        assert np.isnan(got)
        return
    assert got == pytest.approx(ref, abs=1e-12)


def test_kaplan_meier_matches_lifelines():
    t, e, _ = _data(4, n=400)
    km = stats.kaplan_meier(t, e)
    ref = KaplanMeierFitter().fit(t, e)
    for h in (0.5, 3, 7, 10, 25):
        assert km.at(h) == pytest.approx(float(ref.survival_function_at_times(h).iloc[0]), abs=1e-12)
    ci = ref.confidence_interval_survival_function_
    i = np.searchsorted(ci.index.values, 7, side="right") - 1
    lo, hi = km.ci_at(7)
    assert lo == pytest.approx(ci.iloc[i, 0], abs=TOL)
    assert hi == pytest.approx(ci.iloc[i, 1], abs=TOL)


def test_km_at_masks_equals_separate_fits():
    t, e, x = _data(6, n=300)
    masks = np.stack([x >= q for q in (-1, 0, 0.5, 1)], axis=1)
    got = stats.km_at_masks(t, e, masks, 9)
    for j in range(masks.shape[1]):
        m = masks[:, j]
        ref = KaplanMeierFitter().fit(t[m], e[m]).survival_function_at_times(9).iloc[0]
        assert got[j] == pytest.approx(ref, abs=1e-12)


def test_logrank_matches_lifelines_two_and_many_groups():
    t, e, x = _data(7, n=300)
    g = x > 0
    got = stats.logrank(t, e, g)
    ref = logrank_test(t[g], t[~g], e[g], e[~g])
    assert got.statistic == pytest.approx(ref.test_statistic, abs=TOL)
    assert got.p_value == pytest.approx(ref.p_value, abs=TOL)
    q = np.digitize(x, np.quantile(x, [0.25, 0.5, 0.75]))
    got4 = stats.logrank(t, e, q)
    ref4 = multivariate_logrank_test(t, q, e)
    assert got4.statistic == pytest.approx(ref4.test_statistic, abs=TOL)
    assert got4.degrees_of_freedom == 3


def test_cut_counts_equal_one_lifelines_test_per_cut_within_rows():
    t, e, x = _data(9, n=300)
    t = np.round(t)  # ties between times
    cuts = np.array([-1.0, 0.0, 0.7])
    rows = np.random.default_rng(3).random(len(t)) < 0.6
    for subset in (None, rows):
        keep = np.ones(len(t), bool) if subset is None else subset
        counts = stats.CutCounts.of(stats.TimeIndex.of(t, e), x, cuts, subset)
        z, p = counts.logrank()
        above, below = counts.km_at(9)
        for j, cut in enumerate(cuts):
            m = keep & (x >= cut)
            rest = keep & (x < cut)
            ref = logrank_test(t[m], t[rest], e[m], e[rest])
            assert z[j] ** 2 == pytest.approx(ref.test_statistic, abs=TOL)
            assert p[j] == pytest.approx(ref.p_value, abs=TOL)
            assert above[j] == pytest.approx(KaplanMeierFitter().fit(t[m], e[m]).predict(9), abs=1e-12)
            assert below[j] == pytest.approx(KaplanMeierFitter().fit(t[rest], e[rest]).predict(9), abs=1e-12)
        assert z[1] > 0  # in _data higher x means shorter times: more events than expected


def test_counts_of_both_halves_in_one_pass_equal_counting_each_cut_again():
    """The threshold scan counts training and holdout halves by cut level in one pass, then takes the
    chosen cut's columns: exactly (whole numbers) what counting each half again with that cut gives."""
    t, e, x = _data(4, n=400)
    t = np.round(t)
    cuts = np.array([-0.5, 0.0, 0.4, 1.1])
    train = np.random.default_rng(5).random(len(t)) < 0.5
    index = stats.TimeIndex.of(t, e)
    level = stats.cut_levels(x, cuts)
    leaving, events = index.part_counts(level, len(cuts) + 1, 1 - train.astype(np.int8), 2)
    for part, rows in ((0, train), (1, ~train)):
        ref_leaving, ref_events = index.counts(level, len(cuts) + 1, rows)
        assert np.array_equal(leaving[part], ref_leaving) and np.array_equal(events[part], ref_events)
    for j in range(len(cuts)):
        for table, rows in (((leaving[1], events[1]), ~train), ((leaving.sum(0), events.sum(0)), None)):
            one = stats.CutCounts.of_table(index, *table).cut(j)
            ref = stats.CutCounts.of_levels(index, (level > j).astype(np.int64), 1, rows)
            assert one.leaving_above.shape == (len(index.times), 1)
            for got, want in zip((one.leaving, one.events, one.leaving_above, one.events_above, *one.logrank(),
                                  *one.km_at(9)),
                                 (ref.leaving, ref.events, ref.leaving_above, ref.events_above, *ref.logrank(),
                                  *ref.km_at(9)), strict=True):
                assert np.array_equal(got, want, equal_nan=True)


def test_spearman_and_bh_match_scipy():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=(200, 3)).astype(float)
    y = a[:, 0] + rng.normal(size=200)
    got = stats.spearman_with(stats.rank_columns(a), y)
    for j in range(3):
        assert got[j] == pytest.approx(sps.spearmanr(a[:, j], y).statistic, abs=1e-12)
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan, 0.001])
    q = stats.bh_qvalues(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(q[ok], sps.false_discovery_control(p[ok], method="bh"), atol=1e-12)
    assert np.isnan(q[4])


def test_ranks_codes_and_constant_columns_match_scipy():
    rng = np.random.default_rng(4)
    a = np.column_stack([rng.normal(size=300), rng.integers(0, 4, 300), np.full(300, 2.5),
                         np.where(rng.random(300) < 0.1, np.nan, rng.integers(0, 3, 300))]).astype(float)
    codes, ranks = stats.codes_and_ranks(a)
    for j in range(a.shape[1]):  # NaNs share the last code
        np.testing.assert_array_equal(codes[:, j], np.unique(a[:, j], return_inverse=True, equal_nan=True)[1])
    np.testing.assert_allclose(ranks[:, :3], sps.rankdata(a[:, :3], axis=0), atol=1e-12)
    y = a[:, 0] + rng.normal(size=300)
    got = stats.spearman_with(ranks, y)
    for j in (0, 1):
        assert got[j] == pytest.approx(sps.spearmanr(a[:, j], y).statistic, abs=1e-12)
    assert np.isnan(got[2])  # a constant column has no correlation (scipy: nan too)


def test_standardise_and_explained_share_match_direct_formulas():
    from nsm_cli.evidence import explained_share, standardise

    rng = np.random.default_rng(5)
    n = 2000
    m = np.column_stack([rng.exponential(5, n), -rng.exponential(2, n), np.zeros(n)])
    x = np.sign(m) * np.log1p(np.abs(m))
    sd = x.std(axis=0, ddof=1)
    np.testing.assert_allclose(standardise(m), (x - x.mean(0)) / np.where(sd > 0, sd, 1.0), atol=1e-12)
    z = np.column_stack([rng.integers(0, 2, n), rng.normal(size=n)]).astype(float)
    z = np.column_stack([z, 2 * z[:, 0]])  # a collinear segment column changes nothing
    y = np.column_stack([3 * z[:, 0] + rng.normal(size=n), rng.normal(size=n), np.ones(n)])
    design = np.column_stack([np.ones(n), z])
    resid = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    total = ((y - y.mean(0)) ** 2).sum(0)
    want = np.where(total > 0, 1 - (resid**2).sum(0) / np.where(total > 0, total, 1), 0.0)
    np.testing.assert_allclose(explained_share(y, z), want, atol=1e-10)
    assert want[0] > 0.5 and explained_share(y, z)[2] == 0.0



def test_segment_strata_are_the_sorted_combinations_with_rare_ones_pooled():
    """Strata: each combination of the categorical segments, numbered in sorted order (numpy's
    unique), those under 1% of accounts pooled first as 'other'; a numeric segment is a covariate."""
    import polars as pl

    from nsm_cli.evidence import segment_design

    rng = np.random.default_rng(2)
    n = 3000
    plan = rng.choice(["pro", "Basic", "élite", None], n, p=[0.5, 0.3, 0.195, 0.005])
    region = rng.choice(["eu", "us"], n)
    seats = rng.integers(1, 50, n).astype(float)
    frame = pl.DataFrame({"segment:plan": plan, "segment:region": region, "segment:seats": seats})
    seg = segment_design(frame, ("plan", "region", "seats"))
    combo = np.array([f"{'(missing)' if p is None else p}\x1f{r}" for p, r in zip(plan, region, strict=True)])
    values, counts = np.unique(combo, return_counts=True)
    rare = set(values[counts < 0.01 * n])
    assert rare  # the missing plan's combinations
    pooled = np.array(["\x00other" if c in rare else c for c in combo])
    levels, want = np.unique(pooled, return_inverse=True)
    np.testing.assert_array_equal(seg.strata, want)
    np.testing.assert_array_equal(seg.dummies, np.eye(len(levels))[want][:, 1:])
    x = np.log1p(seats)
    np.testing.assert_allclose(seg.covariates[:, 0], (x - x.mean()) / x.std(ddof=1), atol=1e-12)

def test_retained_at_by_hand():
    # times 1..4, churn at 2 and 4, censored at 1 and 3. KM: S(2) = 1 - 1/3 = 2/3, S(4) = 0.
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([False, True, False, True])
    got = stats.retained_at(t, e, 2.5)
    # account 0 censored at 1 (S=1): P(stay to 2.5) = S(2.5)/S(1) = 2/3
    np.testing.assert_allclose(got, [2 / 3, 0.0, 1.0, 1.0], atol=1e-12)


def test_stratified_cox_matches_lifelines():
    t, e, x = _data(8, n=400)
    rng = np.random.default_rng(2)
    plan = rng.integers(0, 3, len(t))
    seats = rng.normal(size=len(t))
    X = np.stack([x, seats], axis=1)
    fit = stats.cox_fit(t, e, X[None], strata=plan)
    df = pd.DataFrame({"x": x, "seats": seats, "plan": plan, "T": t, "E": e})
    ref = CoxPHFitter(strata=["plan"]).fit(df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15})
    np.testing.assert_allclose(fit.beta[0], ref.params_[["x", "seats"]].values, atol=TOL)
    np.testing.assert_allclose(fit.se[0], ref.standard_errors_[["x", "seats"]].values, atol=TOL)
    for start in ([[0.4, 0.0]], [[-2.0, 3.0]]):  # nsm starts adjusted fits from the unadjusted estimate
        warm = stats.cox_fit(t, e, X[None], strata=plan, start=np.array(start))
        np.testing.assert_allclose(warm.beta[0], ref.params_[["x", "seats"]].values, atol=TOL)
        np.testing.assert_allclose(warm.se[0], ref.standard_errors_[["x", "seats"]].values, atol=TOL)


def test_stratified_univariate_cox_matches_lifelines():
    """One covariate takes the scalar kernel; with strata it must reset its risk sets per stratum too."""
    t, e, x = _data(15, n=400)
    plan = np.random.default_rng(3).integers(0, 4, len(t))
    fit = stats.cox_fit(t, e, x[None, :, None], strata=plan)
    df = pd.DataFrame({"x": x, "plan": plan, "T": t, "E": e})
    ref = CoxPHFitter(strata=["plan"]).fit(df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15})
    assert fit.beta[0, 0] == pytest.approx(ref.params_["x"], abs=TOL)
    assert fit.se[0, 0] == pytest.approx(ref.standard_errors_["x"], abs=TOL)
    assert fit.log_likelihood[0] == pytest.approx(ref.log_likelihood_, abs=1e-5)


def test_rmst_matches_lifelines():
    from lifelines.utils import restricted_mean_survival_time

    t, e, _ = _data(12, n=300)
    km = stats.kaplan_meier(t, e)
    ref = restricted_mean_survival_time(KaplanMeierFitter().fit(t, e), t=20)
    assert km.rmst(20) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("seed,tied", [(0, False), (1, False), (0, True)])
def test_schoenfeld_test_matches_lifelines(seed, tied):
    """Tied: 49 distinct times for 400 accounts, so the Efron-averaged risk-set means matter."""
    from lifelines.statistics import proportional_hazard_test

    rng = np.random.default_rng(seed)
    n = 400
    x = rng.normal(size=n)
    t = rng.weibull(0.7 + 0.6 * (x > 0), n) * 50  # non-proportional when seed shapes differ
    t = np.ceil(t / 5) if tied else t
    e = rng.random(n) < 0.7
    x = (x - x.mean()) / x.std(ddof=1)
    got = stats.schoenfeld_test(t, e, x)
    df = pd.DataFrame({"x": x, "T": t, "E": e})
    cph = CoxPHFitter().fit(df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15})
    ref = proportional_hazard_test(cph, df, time_transform="rank")
    assert got.statistic == pytest.approx(float(np.asarray(ref.test_statistic)[0]), rel=1e-5)
    assert got.p_value == pytest.approx(float(np.asarray(ref.p_value)[0]), abs=1e-6)


def test_zero_variance_column_has_no_evidence_and_does_not_disturb_the_batch():
    t, e, x = _data(13, n=200)
    X = np.stack([np.zeros_like(x), x])[:, :, None]
    fit = stats.cox_fit(t, e, X)
    assert fit.beta[0, 0] == 0 and np.isinf(fit.se[0, 0]) and fit.p_value[0, 0] == 1.0
    ref = _lifelines_cox(t, e, x[:, None])
    assert fit.beta[1, 0] == pytest.approx(ref.params_.iloc[0], abs=TOL)


@pytest.mark.parametrize("effect", [0.3, 3.0])
def test_cox_with_large_tie_groups_matches_lifelines(effect):
    """Hundreds of deaths per distinct time (Efron's correction runs over every tied death)."""
    rng = np.random.default_rng(21)
    n = 2000
    x = rng.normal(size=n)
    t = np.ceil(rng.exponential(scale=np.exp(-effect * x)) * 3).clip(max=6)  # six distinct times
    e = rng.random(n) > 0.2
    x = (x - x.mean()) / x.std(ddof=1)
    fit = stats.cox_fit(t, e, x[None, :, None])
    ref = _lifelines_cox(t, e, x[:, None])
    assert fit.beta[0, 0] == pytest.approx(ref.params_.iloc[0], abs=TOL)
    assert fit.se[0, 0] == pytest.approx(ref.standard_errors_.iloc[0], abs=TOL)
    assert fit.log_likelihood[0] == pytest.approx(ref.log_likelihood_, rel=1e-9)


def test_covariate_without_information_in_any_risk_set_has_no_evidence():
    t, e, x = _data(14, n=300)
    early = np.arange(len(t)) < 10
    t[early], e[early] = t.min() / 2, False  # censored before the first death: never at risk of one
    z = np.where(early, np.arange(len(t)) % 5, 0.0)
    fit = stats.cox_fit(t, e, np.stack([z, x])[:, :, None])
    assert fit.beta[0, 0] == 0 and np.isinf(fit.se[0, 0]) and fit.p_value[0, 0] == 1.0
    ref = _lifelines_cox(t, e, x[:, None])
    assert fit.beta[1, 0] == pytest.approx(ref.params_.iloc[0], abs=TOL)


def test_kernels_compile_where_no_cache_can_be_written(monkeypatch):
    """numba refuses `cache=True` (RuntimeError) when it finds no writable place for the cache; the
    kernels then compile in memory instead of failing to import."""
    import importlib.util

    import numba

    import nsm_cli.kernels

    real = numba.njit

    def refusing(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'kernels.py'")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", refusing)
    spec = importlib.util.spec_from_file_location("kernels_uncached", nsm_cli.kernels.__file__)
    uncached = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uncached)
    values = np.array([[0.0, 3.0, -2.0, 3.0]])
    fresh, cached = np.empty_like(values), np.empty_like(values)
    uncached.standardise(values, fresh)
    nsm_cli.kernels.standardise(values, cached)
    np.testing.assert_allclose(fresh, cached, atol=1e-15)
    assert np.abs(cached).max() > 0


def test_normal_tail_and_quantile_match_scipy():
    from scipy import special

    z = np.concatenate([np.linspace(-8, 8, 1601), [20.0, 30.0, 37.5]])
    # rtol 1e-12: at z = 30 (p ~ 5e-198) rounding z / sqrt(2) alone moves erfc by ~2 x^2 eps ~ 1e-13
    np.testing.assert_allclose(stats.normal_sf(z), special.ndtr(-z), rtol=1e-12, atol=0)
    assert stats.normal_sf(np.array([[1.0, 2.0]])).shape == (1, 2)
    assert stats.Z_95 == pytest.approx(special.ndtri(0.975), rel=1e-15)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-5, 5) | st.just(float("nan")), max_size=50), st.lists(st.floats(-5, 5), max_size=17))
def test_cut_levels_equal_numpys_searchsorted(values, cuts):
    v, c = np.array(values, float), np.sort(np.array(cuts, float))
    np.testing.assert_array_equal(stats.cut_levels(v, c), np.searchsorted(c, v, side="right"))


def test_spearman_matrix_matches_scipy():
    rng = np.random.default_rng(6)
    a = np.column_stack([rng.integers(0, 5, 400), rng.normal(size=400), np.full(400, 1.0)]).astype(float)
    a[:, 1] += a[:, 0]
    got = stats.spearman_matrix(stats.rank_columns(a))
    ref = sps.spearmanr(a[:, :2]).statistic
    np.testing.assert_allclose(got[:2, :2], [[1.0, ref], [ref, 1.0]], atol=1e-12)
    assert np.isnan(got[2]).all() and np.isnan(got[:, 2]).all()  # a constant column correlates with nothing

"""Landmarks, exclusions and outcome clocks on tiny hand-worked frames."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from nsm_cli.config import Settings
from nsm_cli.outcomes import build_cohort

D = datetime


def _accounts(rows):
    return pl.DataFrame(rows, schema={"account_id": pl.String, "signup": pl.Datetime("us"),
                                      "churn": pl.Datetime("us"), "expansion": pl.Datetime("us")}, orient="row")


def test_signup_landmark_times_and_exclusions():
    acc = _accounts([
        ("a", D(2025, 1, 1), None, None),  # censored at as_of: 150 - 30 = 120 days
        ("b", D(2025, 1, 1), D(2025, 1, 20), None),  # churned inside the window -> excluded
        ("c", D(2025, 1, 1), D(2025, 3, 2), D(2025, 2, 15)),  # churn 30 days after landmark, expanded 15 days after the landmark
        ("d", D(2025, 5, 15), None, None),  # landmark after as_of -> too young
        ("e", D(2025, 1, 1), D(2025, 5, 31), None),  # churn exactly on as_of is a churn
        ("f", D(2025, 1, 1), D(2025, 1, 31), None),  # churn exactly at the landmark: time 0, kept
    ])
    s = Settings(accounts="x", window_days=30)
    cohort = build_cohort(acc, None, s, D(2025, 5, 31), has_churn_column=True, has_expansion_column=True)
    assert dict(cohort.excluded) == {"churned_in_window": 1, "too_young": 1}
    f = cohort.frame.sort("account_id")
    assert f["account_id"].to_list() == ["a", "c", "e", "f"]
    assert f["churn_time"].to_list() == pytest.approx([120.0, 30.0, 120.0, 0.0])
    assert f["churn_event"].to_list() == [False, True, True, True]
    assert f["exp_time"].to_list() == pytest.approx([120.0, 15.0, 120.0, 0.0])
    assert f["exp_event"].to_list() == [False, True, False, False]


def test_calendar_landmark_and_expansion_in_window():
    acc = _accounts([
        ("a", D(2024, 6, 1), None, D(2024, 12, 20)),  # expanded inside the window: unknown afterwards
        ("b", D(2024, 6, 1), D(2024, 12, 1), None),  # churned before the landmark
        ("c", D(2025, 2, 1), None, None),  # signed up after the landmark
        ("d", D(2024, 12, 15), None, None),  # only part of the window as a customer
        ("e", D(2024, 6, 1), None, D(2025, 1, 11)),
    ])
    s = Settings(accounts="x", window_days=30, landmark=D(2025, 1, 1))
    cohort = build_cohort(acc, None, s, D(2025, 3, 1), has_churn_column=True, has_expansion_column=True)
    assert dict(cohort.excluded) == {"churned_before_landmark": 1, "signed_up_after_landmark": 1,
                                     "partial_window": 1}
    assert dict(cohort.expansion_excluded) == {"expanded_in_window": 1}
    f = cohort.frame.sort("account_id")
    assert f["churn_time"].to_list() == pytest.approx([59.0, 59.0])
    assert f["exp_time"].to_list()[0] is None
    assert f["exp_time"].to_list()[1] == pytest.approx(10.0)


def test_churn_and_expansion_derived_from_mrr():
    acc = _accounts([
        ("a", D(2025, 1, 1), None, None),
        ("b", D(2025, 1, 1), None, None),
    ])
    mrr = pl.DataFrame({
        "account_id": ["a", "a", "a", "a", "b", "b", "b", "b"],
        "ts": [D(2025, 1, 1), D(2025, 2, 1), D(2025, 3, 1), D(2025, 4, 1),
               D(2025, 1, 1), D(2025, 2, 1), D(2025, 3, 1), D(2025, 4, 1)],
        "mrr": [100.0, 100.0, 105.0, 130.0, 50.0, 0.0, 50.0, 0.0],
    })
    s = Settings(accounts="x", window_days=30, expansion_min=0.1)
    cohort = build_cohort(acc, mrr, s, D(2025, 5, 1), has_churn_column=False, has_expansion_column=False)
    f = cohort.frame.sort("account_id")
    # a: MRR at landmark (Jan 31) is 100; +10% first reached on Apr 1 (130) -> 60 days after landmark
    assert f.row(0, named=True)["exp_event"] is True
    assert f.row(0, named=True)["exp_time"] == pytest.approx(60.0)
    assert f.row(0, named=True)["exp_amount"] == pytest.approx(30.0)
    assert f.row(0, named=True)["churn_event"] is False
    # b: MRR back to 0 on Apr 1 and stays -> churn 60 days after the landmark (the Feb 0 was not final)
    assert f.row(1, named=True)["churn_event"] is True
    assert f.row(1, named=True)["churn_time"] == pytest.approx(60.0)

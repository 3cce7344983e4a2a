"""A realistic synthetic SaaS dataset with a documented ground truth (`nsm sample`).

Ground truth (per account, measured over the first 30 days after signup):

- `report_shared`  : THE DRIVER. Accounts that share >= 3 reports in their first 30 days churn
  at 0.3x the hazard of the rest (a threshold effect, "aha moment" at 3).
- `integration_connected` : drives EXPANSION: accounts that connect >= 1 integration in their
  first 30 days expand at 2x the rate. No effect on churn.
- `page_viewed`    : VANITY. Big volume that grows over calendar time; no effect on anything.
- `api_call`       : PLAN-CONFOUNDED. Volume depends on the plan (enterprise >> starter) and the
  plan drives churn; api_call itself has no effect once the plan is known.
- `cancel_page_viewed` : appears only in the 7 days before a churn (a lagging signal).
- `login`, `project_created` : noise, no effect.

Plans: starter / pro / enterprise with churn hazard ratios 1 / 0.6 / 0.3. Churn is exponential
in time since signup; expansion (MRR up 20-60%) starts at day 30 at the earliest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

AS_OF = datetime(2025, 6, 30)
PLANS = np.array(["starter", "pro", "enterprise"])
PLAN_SHARE = (0.55, 0.35, 0.10)
PLAN_CHURN_HR = np.array([1.0, 0.6, 0.3])
PLAN_API_RATE = np.array([4.0, 20.0, 90.0])
PLAN_PRICE = np.array([29.0, 99.0, 900.0])
BASE_CHURN_PER_DAY = 1 / 220
BASE_EXPANSION_PER_DAY = 1 / 700
DRIVER_THRESHOLD = 3
DRIVER_HR = 0.3
EXPANSION_HR = 2.0
POST_WINDOW_RATE = 0.08  # events per day after the window, relative to the window's daily rate


@dataclass(frozen=True, slots=True)
class GroundTruth:
    seed: int
    n_accounts: int
    as_of: str
    window_days: int
    churn_driver: str = "report_shared"
    churn_driver_threshold: int = DRIVER_THRESHOLD
    churn_driver_hazard_ratio: float = DRIVER_HR
    expansion_driver: str = "integration_connected"
    expansion_driver_rate_ratio: float = EXPANSION_HR
    vanity: str = "page_viewed"
    plan_confounded: str = "api_call"
    pre_churn_signal: str = "cancel_page_viewed"
    noise: tuple[str, ...] = ("login", "project_created")
    tenure_leak_column: str = "lifetime_sessions"


def generate(n_accounts: int, *, seed: int = 0, mean_events: float = 100.0,
             first_id: int = 0) -> dict[str, pl.DataFrame]:
    """accounts, events, mrr and a per-account snapshot, all deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    n = n_accounts
    signup_day = -rng.uniform(10, 720, n)  # days relative to AS_OF
    plan = rng.choice(3, size=n, p=PLAN_SHARE)
    seats = np.ceil(np.exp(rng.normal(np.array([1.0, 2.3, 4.0])[plan], 0.6))).astype(int)
    scale = mean_events / 150.0  # calibrated: about `mean_events` rows per account over its life
    window_rates = {
        "report_shared": rng.gamma(0.8, 3.0, n),
        "integration_connected": rng.gamma(1.0, 0.6, n),
        "page_viewed": 30 * scale * (1 + 2.0 * (signup_day + 720) / 720) * rng.lognormal(0, 0.4, n),
        "api_call": PLAN_API_RATE[plan] * scale * rng.lognormal(0, 0.6, n),
        "login": 10 * scale * rng.lognormal(0, 0.5, n),
        "project_created": 2.5 * rng.lognormal(0, 0.5, n),
    }
    window_counts = {ev: rng.poisson(rate) for ev, rate in window_rates.items()}
    shares = window_counts["report_shared"]
    integrations = window_counts["integration_connected"]
    hazard = BASE_CHURN_PER_DAY * PLAN_CHURN_HR[plan] * np.where(shares >= DRIVER_THRESHOLD, DRIVER_HR, 1.0)
    churn_after = rng.exponential(1 / hazard)
    exp_hazard = BASE_EXPANSION_PER_DAY * np.where(integrations >= 1, EXPANSION_HR, 1.0)
    expand_after = 30 + rng.exponential(1 / exp_hazard)
    end_day = np.minimum(signup_day + churn_after, 0.0)  # last day of activity (AS_OF = 0)
    churned = signup_day + churn_after <= 0
    expanded = (expand_after < churn_after) & (signup_day + expand_after <= 0)
    ids = pl.select(pl.format("acct_{}", pl.int_range(first_id, first_id + n).cast(pl.String).str.zfill(6))
                    ).to_series().to_numpy()
    events = _events(rng, ids, seats, signup_day, end_day, window_counts, window_rates, churned)
    accounts = pl.DataFrame({
        "account_id": ids,
        "signup_date": _dates(signup_day),
        "churn_date": _dates(np.where(churned, signup_day + churn_after, np.nan)),
        "plan": PLANS[plan],
        "seats": seats,
    })
    mrr = _mrr(rng, ids, plan, seats, signup_day, end_day, churned, np.where(expanded, signup_day + expand_after,
                                                                             np.nan))
    tenure = end_day - signup_day  # a lifetime total grows with tenure: the classic leak
    snapshot = accounts.select("account_id", "seats").with_columns(
        lifetime_sessions=pl.Series(rng.poisson(1.5 * rng.lognormal(0, 0.3, n) * tenure)))
    return {"accounts": accounts, "events": events, "mrr": mrr, "account_snapshot": snapshot}


def _dates(days: np.ndarray) -> pl.Series:
    """Days relative to AS_OF (NaN = none) -> ISO date strings."""
    whole = pl.Series(np.floor(days)).fill_nan(None).cast(pl.Int64)
    return pl.select((pl.lit(AS_OF) + pl.duration(days=whole)).dt.strftime("%Y-%m-%d")).to_series()


def _events(rng, ids, seats, signup_day, end_day, window_counts, window_rates, churned) -> pl.DataFrame:
    acct_parts, day_parts, name_parts = [], [], []
    window_end = np.minimum(signup_day + 30, end_day)
    for name, counts in window_counts.items():
        span = np.maximum(window_end - signup_day, 0)
        counts = np.where(span > 0, counts, 0)
        idx = np.repeat(np.arange(len(ids)), counts)
        acct_parts.append(idx)
        day_parts.append(signup_day[idx] + rng.uniform(0, 1, len(idx)) * span[idx])
        name_parts.append(np.full(len(idx), name))
        post_span = np.maximum(end_day - (signup_day + 30), 0)
        post = rng.poisson(window_rates[name] / 30 * POST_WINDOW_RATE * post_span)
        idx = np.repeat(np.arange(len(ids)), post)
        acct_parts.append(idx)
        day_parts.append(signup_day[idx] + 30 + rng.uniform(0, 1, len(idx)) * post_span[idx])
        name_parts.append(np.full(len(idx), name))
    cancel = np.where(churned, rng.integers(1, 4, len(ids)), 0)
    idx = np.repeat(np.arange(len(ids)), cancel)
    acct_parts.append(idx)
    day_parts.append(np.maximum(end_day[idx] - rng.uniform(0, 7, len(idx)), signup_day[idx]))
    name_parts.append(np.full(len(idx), "cancel_page_viewed"))
    idx = np.concatenate(acct_parts)
    day = np.concatenate(day_parts)
    users = np.minimum(seats[idx], 20)
    user = np.floor(rng.uniform(0, 1, len(idx)) * users).astype(int)
    seconds = np.floor(day * 86400).astype(np.int64)
    frame = pl.DataFrame({"account_id": ids[idx], "user": user, "seconds": seconds,
                          "event": np.concatenate(name_parts)}).select(
        "account_id",
        (pl.col("account_id").str.replace("acct_", "u_") + "_" + pl.col("user").cast(pl.String)).alias("user_id"),
        (pl.lit(AS_OF) + pl.duration(seconds=pl.col("seconds"))).alias("timestamp"),
        "event",
    )
    return frame.sort("timestamp", "account_id", "event", "user_id").with_columns(
        pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _mrr(rng, ids, plan, seats, signup_day, end_day, churned, expansion_day) -> pl.DataFrame:
    months = np.floor((end_day - signup_day) / 30).astype(int) + 1
    idx = np.repeat(np.arange(len(ids)), months)
    k = np.arange(len(idx)) - np.repeat(np.cumsum(months) - months, months)
    day = signup_day[idx] + 30 * k
    base = PLAN_PRICE[plan] + 8.0 * seats
    uplift = rng.uniform(1.2, 1.6, len(ids))
    value = base[idx] * np.where(day >= expansion_day[idx], uplift[idx], 1.0)
    zero_idx = np.flatnonzero(churned)
    day = np.concatenate([day, end_day[zero_idx]])
    value = np.concatenate([value, np.zeros(len(zero_idx))])
    acct = np.concatenate([idx, zero_idx])
    frame = pl.DataFrame({"account_id": ids[acct], "date": _dates(day), "mrr": np.round(value, 2)})
    return frame.unique(["account_id", "date"], keep="last", maintain_order=True).sort("account_id", "date")


CHUNK = 100_000  # accounts generated at a time, so a million-account sample fits in memory


def write_sample(out_dir: Path, n_accounts: int, *, seed: int = 0, mean_events: float = 100.0,
                 parquet: bool = False) -> GroundTruth:
    """Write accounts.csv, events.csv (or .parquet), mrr.csv, account_snapshot.csv, ground_truth.json.

    Up to CHUNK accounts are generated in one go (seed `seed`); larger samples are written in
    chunks of CHUNK accounts with seeds derived from `seed`, appended file by file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, n_accounts, CHUNK)
    parts: dict[str, list[pl.DataFrame]] = {}
    for i, start in enumerate(starts):
        size = min(CHUNK, n_accounts - start)
        chunk_seed = seed if len(starts) == 1 else seed * 100_003 + i
        frames = generate(size, seed=chunk_seed, mean_events=mean_events, first_id=start)
        for name, frame in frames.items():
            if name == "events" and not parquet:
                with open(out_dir / "events.csv", "wb" if i == 0 else "ab") as handle:
                    frame.write_csv(handle, include_header=i == 0)
            else:
                parts.setdefault(name, []).append(frame)
    for name, frames_of in parts.items():
        frame = pl.concat(frames_of)
        if name == "events":
            frame.write_parquet(out_dir / "events.parquet")
        else:
            frame.write_csv(out_dir / f"{name}.csv")
    truth = GroundTruth(seed=seed, n_accounts=n_accounts, as_of=AS_OF.date().isoformat(), window_days=30)
    (out_dir / "ground_truth.json").write_text(json.dumps(asdict(truth), indent=2) + "\n", encoding="utf-8")
    return truth

"""The peer: the same analysis as an analyst would write it with pandas + lifelines.

One CoxPHFitter fit, one concordance_index, one Kaplan-Meier split and one log-rank test per
candidate and outcome, on the same landmark design and the same candidates as nsm's defaults.
With --limit N only the first N candidates are fitted and the total is extrapolated from the
measured per-candidate time (plus the data preparation, measured in full).

    python benchmarks/peer.py DATA_FOLDER [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index

warnings.filterwarnings("ignore")
WINDOW, HORIZON = pd.Timedelta(days=30), 90


def prepare(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    acc = pd.read_csv(folder / "accounts.csv", parse_dates=["signup_date", "churn_date"])
    events_path = folder / "events.parquet"
    ev = pd.read_parquet(events_path) if events_path.exists() else pd.read_csv(folder / "events.csv")
    ev["timestamp"] = pd.to_datetime(ev["timestamp"], utc=True).dt.tz_localize(None)
    mrr = pd.read_csv(folder / "mrr.csv", parse_dates=["date"])
    as_of = max(ev["timestamp"].max(), acc["signup_date"].max(), mrr["date"].max())
    acc["landmark"] = acc["signup_date"] + WINDOW
    acc = acc[~(acc["churn_date"] < acc["landmark"]) & (acc["landmark"] <= as_of)].copy()
    acc["end"] = acc["churn_date"].where(acc["churn_date"] <= as_of, as_of).fillna(as_of)
    acc["T"] = (acc["end"] - acc["landmark"]).dt.total_seconds() / 86400
    acc["E"] = acc["churn_date"].notna() & (acc["churn_date"] <= as_of)
    base = mrr.merge(acc[["account_id", "landmark"]], on="account_id")
    before = base[base["date"] <= base["landmark"]].groupby("account_id")["mrr"].last().rename("base")
    after = base[base["date"] > base["landmark"]].merge(before, on="account_id")
    up = after[after["mrr"] >= 1.1 * after["base"]].groupby("account_id")["date"].min().rename("expansion")
    acc = acc.merge(up, on="account_id", how="left")
    acc["EE"] = acc["expansion"].notna() & (acc["expansion"] <= acc["end"])
    exp_end = acc["expansion"].where(acc["EE"], acc["end"])
    acc["TE"] = (exp_end - acc["landmark"]).dt.total_seconds() / 86400
    w = ev.merge(acc[["account_id", "signup_date", "landmark"]], on="account_id")
    w = w[(w["timestamp"] >= w["signup_date"]) & (w["timestamp"] < w["landmark"])].copy()
    w["day"] = ((w["timestamp"] - w["signup_date"]).dt.total_seconds() // 86400).astype(int)
    w["week"] = w["day"] // 7
    w["offset"] = (w["timestamp"] - w["signup_date"]).dt.total_seconds() / 86400
    frames = []
    for source, g in [*w.groupby("event"), ("any", w)]:
        by = g.groupby("account_id")
        f = pd.DataFrame({"count": by.size(), "active_days": by["day"].nunique(), "active_weeks": by["week"].nunique(),
                          "users": by["user_id"].nunique(), "days_to_first": by["offset"].min()})
        f["per_user"] = f["count"] / f["users"]
        f.columns = [f"{source}.{c}" for c in f.columns]
        frames.append(f)
    metrics = acc[["account_id"]].merge(pd.concat(frames, axis=1), left_on="account_id", right_index=True, how="left")
    for c in metrics.columns[1:]:
        metrics[c] = metrics[c].fillna(31.0 if c.endswith("days_to_first") else 0.0)
    return acc, metrics


def assess(acc: pd.DataFrame, x: pd.Series) -> None:
    z = np.log1p(x)
    z = (z - z.mean()) / z.std()
    for t, e, sign in (("T", "E", 1), ("TE", "EE", -1)):
        df = pd.DataFrame({"z": z.values, "T": acc[t].values, "E": acc[e].values})
        CoxPHFitter().fit(df, "T", "E")
        concordance_index(df["T"], sign * x.values, df["E"])
        above = (x > x.median()).values
        if not 0 < above.sum() < len(above):
            above = (x > x.min()).values
        if not 0 < above.sum() < len(above):
            continue
        for m in (above, ~above):
            KaplanMeierFitter().fit(df["T"][m], df["E"][m]).survival_function_at_times(HORIZON)
        logrank_test(df["T"][above], df["T"][~above], df["E"][above], df["E"][~above])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    acc, metrics = prepare(args.folder)
    prep = time.perf_counter() - start
    names = [c for c in metrics.columns[1:] if metrics[c].nunique() > 1]
    chosen = names[: args.limit] if args.limit else names
    fit_start = time.perf_counter()
    for c in chosen:
        assess(acc, metrics[c])
    per = (time.perf_counter() - fit_start) / max(1, len(chosen))
    print(json.dumps({"prepare_s": prep, "per_candidate_s": per, "candidates": len(names), "fitted": len(chosen),
                      "estimated_total_s": prep + per * len(names)}))


if __name__ == "__main__":
    main()

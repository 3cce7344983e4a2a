"""`nsm validate METRIC`: the deep dive on one candidate.

Dose-response (KM by quartile, RMST), the aha threshold over thresholds x windows with holdout and
bootstrap, stability across signup cohorts and segments (with a trend test), confounding (segments
and the other top candidates), leading-vs-lagging, the proportional-hazards check, a verdict and
the CI gates. Every number is computed on the churn outcome from the landmark.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from nsm_cli import kernels, stats
from nsm_cli.config import Settings
from nsm_cli.errors import UsageError
from nsm_cli.evidence import OutcomeData, segment_design, standardise
from nsm_cli.pipeline import Inputs, Prepared, build_candidates, load_inputs, prepare, rank_prepared
from nsm_cli.ranking import ALPHA, Split, holdout_split, threshold_grid
from nsm_cli.results import CandidateResult, clean

RETENTION_DAYS = (30, 90, 180, 365)
RMST_DAYS = 365.0
MIN_GROUP_ACCOUNTS, MIN_GROUP_EVENTS = 30, 10
PH_SUBSAMPLE = 20_000
LEADING_WINDOWS = (7.0, 14.0, 30.0, 60.0)  # signup landmark: windows of increasing length
LEADING_LEADS = (0.0, 30.0, 60.0)  # calendar landmark: windows ending this many days before it
BOOTSTRAP = 200


@dataclass(frozen=True, slots=True)
class Gates:
    min_concordance: float | None = None
    max_q: float | None = None
    min_lift: float | None = None
    require_stable: bool = False


@dataclass(frozen=True, slots=True)
class ValidationReport:
    metric: str
    settings: dict[str, Any]
    candidate: CandidateResult
    dose_response: dict[str, Any]
    aha: dict[str, Any]
    stability: dict[str, Any]
    confounding: dict[str, Any]
    leading: dict[str, Any]
    proportional_hazards: dict[str, Any]
    verdict: str
    reasons: tuple[str, ...]
    gate_failures: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return clean({
            "schema_version": 1, "metric": self.metric, "settings": self.settings, "verdict": self.verdict,
            "reasons": list(self.reasons), "gate_failures": list(self.gate_failures),
            "candidate": self.candidate.to_dict(), "dose_response": self.dose_response, "aha": self.aha,
            "stability": self.stability, "confounding": self.confounding, "leading": self.leading,
            "proportional_hazards": self.proportional_hazards,
        })


def validate_metric(settings: Settings, metric: str, *, windows: tuple[float, ...] = (7.0, 14.0, 30.0),
                    gates: Gates = Gates(), progress=None) -> ValidationReport:
    say = progress or (lambda _msg: None)
    say("loading inputs")
    inputs = load_inputs(settings, windows=_windows_read(settings, windows))
    base = prepare(inputs, settings)
    _require_metric(base, metric)
    say("ranking every candidate")
    ranking = rank_prepared(base)
    candidate = next(c for c in ranking.candidates if c.name == metric)
    sign = candidate.score_components.get("orientation", 1.0)
    x = base.metric(metric)
    say("dose-response")
    dose = dose_response(x, base.churn, sign=sign)
    say("threshold scan")
    by_window = {settings.window_days: base}
    churn_inputs = _for_churn(inputs)
    for w in windows:
        if w not in by_window:
            by_window[w] = prepare(churn_inputs, dataclasses.replace(settings, window_days=w), only=metric)
    aha = aha_scan(metric, by_window, settings, sign=sign)
    say("stability")
    stability = stability_check(x, base, settings, sign=sign)
    confounding = confounding_check(metric, x, base, ranking.candidates)
    leading = leading_check(metric, churn_inputs, settings, base, by_window)
    ph = ph_check(x, base.churn, settings.seed)
    verdict, reasons = decide(candidate, aha, stability, confounding, sign)
    report = ValidationReport(metric, ranking.settings, candidate, dose, aha, stability, confounding, leading, ph,
                              verdict, tuple(reasons))
    return dataclasses.replace(report, gate_failures=tuple(check_gates(report, gates, sign)))


def _for_churn(inputs: Inputs) -> Inputs:
    """The inputs the deep dive's other windows need: it measures churn only, so the MRR history goes
    when the accounts date their churn (it would only derive each window's expansion, ~0.1 s each at
    100k accounts)."""
    return dataclasses.replace(inputs, mrr=None) if inputs.has_churn_column else inputs


def _windows_read(settings: Settings, windows: tuple[float, ...]) -> tuple[Settings, ...]:
    """Every window setting the deep dive measures candidates over (threshold scan, leading check): their
    events are taken in the one scan of the event log."""
    scans = [dataclasses.replace(settings, window_days=w) for w in windows]
    if settings.landmark is None:
        leading = [dataclasses.replace(settings, window_days=w) for w in LEADING_WINDOWS]
    else:
        leading = [dataclasses.replace(settings, landmark=settings.landmark - timedelta(days=lead)) for lead in LEADING_LEADS]
    return (settings, *scans, *leading)


def _require_metric(prepared: Prepared, metric: str) -> None:
    names = [c.name for c in prepared.candidates.candidates]
    if metric in names:
        return
    skipped = dict(prepared.candidates.skipped)
    if metric in skipped:
        raise UsageError(f"candidate {metric} was skipped: {skipped[metric]}")
    close = difflib.get_close_matches(metric, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; candidates include {', '.join(names[:8])}, …"
    raise UsageError(f"no candidate named {metric!r}{hint} (run `nsm rank` to list them)")


# ---- dose-response ---------------------------------------------------------------------------

def _groups(x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Quartile groups (ties merge them); zero vs non-zero when at least 25% of accounts have 0."""
    if (x == 0).mean() >= 0.25 and (x > 0).sum() >= MIN_GROUP_ACCOUNTS:
        positive = x[x > 0]
        edges = np.unique(np.quantile(positive, [1 / 3, 2 / 3], method="higher"))
        g = np.where(x > 0, 1 + np.searchsorted(edges, x, side="right"), 0)
    else:
        edges = np.unique(np.quantile(x, [0.25, 0.5, 0.75], method="higher"))
        g = np.searchsorted(edges, x, side="right")
    levels = np.unique(g)
    g = np.searchsorted(levels, g)
    labels = [_range_label(x[g == i]) for i in range(len(levels))]
    return g, labels


def _range_label(values: np.ndarray) -> str:
    lo, hi = float(values.min()), float(values.max())
    fmt = (lambda v: f"{v:.0f}") if float(lo).is_integer() and float(hi).is_integer() else (lambda v: f"{v:.3g}")
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def dose_response(x: np.ndarray, outcome: OutcomeData, *, sign: float) -> dict[str, Any]:
    g, labels = _groups(x)
    groups = []
    for i, label in enumerate(labels):
        m = g == i
        km = stats.kaplan_meier(outcome.time[m], outcome.event[m])
        retention = {str(d): {"retention": km.at(d), "ci_low": km.ci_at(d)[0], "ci_high": km.ci_at(d)[1]}
                     for d in RETENTION_DAYS}
        groups.append({"label": label, "accounts": int(m.sum()), "churned": int(outcome.event[m].sum()),
                       "retention": retention, "rmst_365": km.rmst(RMST_DAYS), "curve": _curve(km)})
    test = stats.logrank(outcome.time, outcome.event, g)
    best, worst = (groups[-1], groups[0]) if sign > 0 else (groups[0], groups[-1])
    return {"groups": groups, "logrank_statistic": test.statistic, "logrank_df": test.degrees_of_freedom,
            "logrank_p_value": test.p_value, "rmst_days": RMST_DAYS,
            "rmst_difference": best["rmst_365"] - worst["rmst_365"], "best_group": best["label"],
            "worst_group": worst["label"]}


def _curve(km: stats.KaplanMeier, points: int = 60) -> list[list[float]]:
    grid = np.linspace(0, RMST_DAYS, points)
    return np.column_stack([grid, km.at_times(grid)]).tolist()


# ---- aha threshold ---------------------------------------------------------------------------

SCAN_QUANTILES = np.linspace(0.05, 0.95, 19)


def _cells(values: np.ndarray, index: stats.TimeIndex, grid: np.ndarray, horizon: float) -> dict[str, np.ndarray]:
    counts = stats.CutCounts.of(index, values, grid)
    ret_above, ret_below = counts.km_at(horizon)
    _, p = counts.logrank()
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = ret_above / ret_below
    return {"reach": counts.leaving_above.sum(axis=0) / len(values), "retention_above": ret_above,
            "retention_below": ret_below, "ppv": ret_above, "npv": 1 - ret_below, "lift": lift, "p_value": p}


def _best(values: np.ndarray, outcome: OutcomeData, rows: np.ndarray, sign: float) -> float | None:
    """The cut with the largest log-rank statistic in the expected direction, on `rows` only."""
    v = values[rows]
    grid = threshold_grid(v, SCAN_QUANTILES)
    if len(grid) == 0:
        return None
    z, _ = stats.CutCounts.of(stats.TimeIndex.of(outcome.time[rows], outcome.event[rows]), v, grid).logrank()
    return float(grid[int(np.nanargmax(-sign * z))]) if np.isfinite(z).any() else None


def aha_scan(metric: str, by_window: dict[float, Prepared], settings: Settings, *, sign: float) -> dict[str, Any]:
    """Grid of (window, threshold) cells; the winner chosen on the training half, confirmed on the holdout."""
    horizon = settings.horizon_days
    rows, choices = [], []
    for window, prep in sorted(by_window.items()):
        if metric not in prep.candidates.metrics.columns:
            continue
        values = prep.metric(metric)
        split = Split.of(prep.churn, holdout_split(prep.cohort.frame["account_id"], settings.seed))
        grid = threshold_grid(values[split.train], SCAN_QUANTILES)
        if len(grid) == 0:
            continue
        cells = _cells(values, split.full, grid, horizon)
        train_z, _ = stats.CutCounts.of(split.full, values, grid, split.train).logrank()
        for j, t in enumerate(grid):
            rows.append({"window_days": window, "threshold": float(t), **{k: float(v[j]) for k, v in cells.items()}})
            choices.append((float(np.nan_to_num(-sign * train_z[j], nan=-np.inf)), len(rows) - 1, values, split))
    if not rows:
        return {"grid": [], "best": None, "sentence": "no threshold splits the accounts into two groups of >= 10%"}
    q = stats.bh_qvalues(np.array([r["p_value"] for r in rows]))
    for r, qv in zip(rows, q, strict=True):
        r["q_value"] = float(qv)
    _, best_i, values, split = max(choices, key=lambda c: (c[0], -c[1]))
    best = dict(rows[best_i])
    hold_above, hold_below, hold_p = split.holdout((values >= best["threshold"]).astype(np.int64), horizon)
    best.update(holdout_retention_above=hold_above, holdout_retention_below=hold_below, holdout_p_value=hold_p,
                holdout_confirmed=bool(sign * (hold_above - hold_below) > 0 and hold_p < ALPHA))
    best["ci_low"], best["ci_high"] = _bootstrap_threshold(values, split.outcome, split.train, sign, settings.seed)
    return {"grid": rows, "best": best, "sentence": _sentence(metric, best, horizon, sign)}


def _bootstrap_threshold(values, outcome, train, sign, seed) -> tuple[float | None, float | None]:
    """95% percentile interval of the chosen cut over bootstrap resamples of the training half (seeded).
    The resamples are drawn in order and scanned a few at a time on every core."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(train)
    batch = 4 * kernels.workers()  # a few resamples in memory at a time
    picks = []
    for start in range(0, BOOTSTRAP, batch):
        drawn = np.array([rng.choice(rows, size=len(rows), replace=True) for _ in range(min(batch, BOOTSTRAP - start))])
        for part in kernels.by_rows(lambda resamples: [_best(values, outcome, r, sign) for r in resamples], drawn):
            picks += part
    picks = np.array([p for p in picks if p is not None])
    if len(picks) == 0:
        return None, None
    return float(np.quantile(picks, 0.025)), float(np.quantile(picks, 0.975))


def _sentence(metric: str, best: dict[str, Any], horizon: float, sign: float) -> str:
    t = best["threshold"]
    t_words = f"{t:.0f}" if float(t).is_integer() else f"{t:.3g}"
    side = f">= {t_words}" if sign > 0 else f"< {t_words}"
    good, rest = (best["retention_above"], best["retention_below"]) if sign > 0 else (
        best["retention_below"], best["retention_above"])
    share = best["reach"] if sign > 0 else 1 - best["reach"]
    check = "confirmed on the holdout half" if best["holdout_confirmed"] else "NOT confirmed on the holdout half"
    return (f"Accounts with {metric} {side} in their first {best['window_days']:g} days ({share:.0%} of accounts) "
            f"keep {good:.0%} at day {horizon:g}, against {rest:.0%} for the rest ({check}).")


# ---- stability -------------------------------------------------------------------------------

def _fit_one(time: np.ndarray, event: np.ndarray, z: np.ndarray, x: np.ndarray, sign: float) -> dict[str, Any]:
    fit = stats.cox_fit(time, event, z[None, :, None])
    beta, se = float(fit.beta[0, 0]), float(fit.se[0, 0])
    c = float(stats.concordance(time, event, x[None])[0])
    return {"accounts": len(time), "churned": int(event.sum()), "log_hr": beta, "se": se,
            "hazard_ratio": float(np.exp(beta)), "hr_ci_low": float(np.exp(beta - stats.Z_95 * se)),
            "hr_ci_high": float(np.exp(beta + stats.Z_95 * se)), "p_value": float(fit.p_value[0, 0]),
            "concordance": 0.5 + sign * (c - 0.5)}


def _status(row: dict[str, Any], overall: float | None) -> str:
    """holds / weakens / vanishes / flips, judged only when the group differs from the overall effect
    by more than its own noise (z test at 5%); a small, noisy group is 'inconclusive', not unstable."""
    if overall is None:
        return "n/a"  # no overall effect to hold, weaken or flip
    differs = abs(row["log_hr"] - overall) / row["se"] > stats.Z_95
    if np.sign(row["log_hr"]) != np.sign(overall) and row["p_value"] < ALPHA:
        return "flips"
    if differs and abs(row["log_hr"]) < 0.5 * abs(overall):
        return "vanishes" if row["p_value"] >= ALPHA else "weakens"
    return "holds" if row["p_value"] < ALPHA else "inconclusive"


def _groups_by(labels: np.ndarray, time, event, z, x, sign, overall: float | None) -> list[dict[str, Any]]:
    rows = []
    for label in sorted(set(labels.tolist())):
        m = labels == label
        if m.sum() < MIN_GROUP_ACCOUNTS or event[m].sum() < MIN_GROUP_EVENTS or (~event[m]).sum() < 1:
            continue
        row = {"group": str(label), **_fit_one(time[m], event[m], z[m], x[m], sign)}
        row["status"] = _status(row, overall)
        rows.append(row)
    return rows


def _trend(rows: list[dict[str, Any]], overall: float) -> dict[str, Any]:
    """Inverse-variance weighted regression of log HR on cohort order; decaying = moving toward 1."""
    if len(rows) < 3:
        return {"slope_log_hr_per_cohort": None, "p_value": None, "decaying": False}
    y = np.array([r["log_hr"] for r in rows])
    w = 1 / np.array([r["se"] for r in rows]) ** 2
    xi = np.arange(len(rows), dtype=float)
    xm, ym = (w * xi).sum() / w.sum(), (w * y).sum() / w.sum()
    sxx = (w * (xi - xm) ** 2).sum()
    slope = float((w * (xi - xm) * (y - ym)).sum() / sxx)
    p = float(2 * stats.normal_sf(abs(slope) * np.sqrt(sxx)))
    return {"slope_log_hr_per_cohort": slope, "p_value": p, "decaying": bool(slope * overall < 0 and p < ALPHA)}


def stability_check(x: np.ndarray, base: Prepared, settings: Settings, *, sign: float) -> dict[str, Any]:
    """Effect per signup quarter and per segment level, on a common follow-up: every account is
    censored at the horizon, and quarters whose accounts mostly cannot reach it are left out, so a
    young cohort's short follow-up is not mistaken for a weaker effect."""
    horizon = settings.horizon_days
    reach = (base.churn.time >= horizon) | base.churn.event  # followed to the horizon, or churned first
    t = np.minimum(base.churn.time, horizon)
    e = base.churn.event & (base.churn.time <= horizon)
    z = standardise(x[:, None])[:, 0]
    overall = _fit_one(t, e, z, x, sign)
    reference = overall["log_hr"] if overall["p_value"] < ALPHA else None
    frame = base.cohort.frame
    quarters = frame.select(pl.format("{}Q{}", pl.col("signup").dt.year(), pl.col("signup").dt.quarter()))
    quarters = quarters.to_series().to_numpy()
    mature = {q for q in set(quarters.tolist()) if reach[quarters == q].mean() >= 0.5}
    quarters = np.where(np.isin(quarters, list(mature)), quarters, "(too recent)")
    cohorts = [r for r in _groups_by(quarters, t, e, z, x, sign, reference) if r["group"] != "(too recent)"]
    segments = {}
    for col in base.inputs.segments:
        labels = frame[f"segment:{col}"].fill_null("(missing)").cast(pl.String).to_numpy()
        if len(set(labels.tolist())) <= 12:
            segments[col] = _groups_by(labels, t, e, z, x, sign, reference)
    trend = _trend(cohorts, reference or 0.0)
    unstable = [r for r in cohorts + [r for rows in segments.values() for r in rows]
                if r["status"] in ("flips", "vanishes")]
    return {"overall": overall, "cohorts": cohorts, "segments": segments, "trend": trend,
            "stable": not unstable and not trend["decaying"],
            "problems": [f"{r['group']}: {r['status']}" for r in unstable]
            + (["effect decaying over signup cohorts: revisit it"] if trend["decaying"] else [])}


# ---- confounding, leading, proportional hazards ----------------------------------------------

def confounding_check(metric: str, x: np.ndarray, base: Prepared, ranked: tuple[CandidateResult, ...]) -> dict:
    t, e = base.churn.time, base.churn.event
    z = standardise(x[:, None])
    me = next(c for c in ranked if c.name == metric)
    others = [c.name for c in ranked if c.source != me.source and c.family == c.name
              and not {"risk_signal", "tracks_tenure", "too_good_to_be_true"} & set(c.flags)][:3]
    segments = segment_design(base.cohort.frame, base.inputs.segments) if base.inputs.segments else None
    strata = segments.strata if segments else None
    numeric = segments.covariates if segments and segments.covariates is not None else np.zeros((len(t), 0))
    other_z = standardise(np.column_stack([base.metric(o) for o in others])) if others else np.zeros((len(t), 0))

    def fit(design: np.ndarray, use_strata: bool) -> dict[str, float]:
        f = stats.cox_fit(t, e, design[None], strata=strata if use_strata else None)
        return {"hazard_ratio": float(np.exp(f.beta[0, 0])), "p_value": float(f.p_value[0, 0])}

    raw = fit(z, False)
    out = {"raw": raw, "adjusted_for": {"segments": list(base.inputs.segments), "candidates": others}}
    out["segments"] = fit(np.hstack([z, numeric]), True) if segments else None
    out["candidates"] = fit(np.hstack([z, other_z]), False) if others else None
    out["both"] = fit(np.hstack([z, numeric, other_z]), segments is not None) if segments and others else None
    adjusted = out["both"] or out["segments"] or out["candidates"]
    out["keeps_effect"] = bool(adjusted is None or abs(np.log(adjusted["hazard_ratio"]))
                               >= 0.5 * abs(np.log(raw["hazard_ratio"])))
    out["adds_information"] = bool(out["candidates"] is None or out["candidates"]["p_value"] < ALPHA)
    return out


def leading_check(metric: str, inputs, settings: Settings, base: Prepared,
                  prepared: dict[float, Prepared] | None = None) -> dict[str, Any]:
    """Signup landmark: windows of increasing length. Calendar landmark: windows ending 0/30/60 days early.
    `prepared`: windows already prepared for `metric` (the threshold scan's), by length."""
    rows = []
    if settings.landmark is None:
        for w in LEADING_WINDOWS:
            try:
                prep = base if w == settings.window_days else (prepared or {}).get(w) or prepare(
                    inputs, dataclasses.replace(settings, window_days=w), only=metric)
            except Exception as exc:  # noqa: BLE001 - a window with too little data is reported, not fatal
                rows.append({"window_days": w, "note": str(exc)})
                continue
            if metric in prep.candidates.metrics.columns:
                x = prep.metric(metric)
                rows.append({"window_days": w, **_effect(x, prep.churn)})
        mode = "windows of increasing length after signup"
    else:
        for lead in LEADING_LEADS:
            frame = base.cohort.frame.with_columns(
                window_start=pl.col("landmark") - pl.duration(days=lead + settings.window_days),
                landmark=pl.col("landmark") - pl.duration(days=lead))
            cands = build_candidates(inputs, dataclasses.replace(base.cohort, frame=frame), settings, only=metric)
            if metric in cands.metrics.columns:
                rows.append({"lead_days": lead, **_effect(cands.metrics[metric].to_numpy().astype(float), base.churn)})
        mode = "metric windows ending 0, 30 and 60 days before the landmark"
    usable = [r for r in rows if "concordance" in r]
    earliest = None
    if usable:
        earliest = usable[0] if settings.landmark is None else usable[-1]
    peak = max((abs(r["concordance"] - 0.5) for r in usable), default=0.0)
    # leading: the earliest view already carries at least a third of the strongest effect, significantly
    leading = bool(earliest and earliest["p_value"] < ALPHA and peak > 0
                   and abs(earliest["concordance"] - 0.5) >= peak / 3)
    return {"mode": mode, "rows": rows, "leading": leading}


def _effect(x: np.ndarray, outcome: OutcomeData) -> dict[str, float]:
    if np.unique(x).size < 2:
        return {"note": "constant in this window"}
    z = standardise(x[:, None])[:, 0]
    return {k: v for k, v in _fit_one(outcome.time, outcome.event, z, x, 1.0).items()
            if k in ("accounts", "concordance", "hazard_ratio", "p_value")}


def ph_check(x: np.ndarray, outcome: OutcomeData, seed: int) -> dict[str, Any]:
    rows = np.arange(len(x))
    if len(rows) > PH_SUBSAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(rows, PH_SUBSAMPLE, replace=False))
    z = standardise(x[rows][:, None])[:, 0]
    test = stats.schoenfeld_test(outcome.time[rows], outcome.event[rows], z)
    violated = test.p_value < ALPHA
    return {"statistic": test.statistic, "p_value": test.p_value, "accounts": test.n_accounts,
            "subsampled": len(rows) < len(x), "violated": violated,
            "advice": ("the hazard ratio is an average over time: the effect is stronger at some times than others; "
                       "read the Kaplan-Meier curves and the retention table rather than the single HR")
            if violated else "no evidence against proportional hazards"}


# ---- verdict and gates -----------------------------------------------------------------------

def decide(candidate: CandidateResult, aha: dict, stability: dict, confounding: dict, sign: float):
    c = 0.5 + sign * (candidate.churn.concordance - 0.5)
    q = candidate.churn.q_value
    confirmed = bool(aha.get("best") and aha["best"]["holdout_confirmed"])
    reasons = [f"concordance {c:.2f}, " + ("q < 1e-300" if q == 0 else f"q = {q:.2g}"),  # 0: below double precision
               "threshold confirmed on the holdout" if confirmed else "threshold not confirmed on the holdout",
               "stable across cohorts and segments" if stability["stable"] else
               "unstable: " + "; ".join(stability["problems"][:3]),
               "keeps its effect after adjustment" if confounding["keeps_effect"] else
               "most of the effect disappears after adjustment (confounded)"]
    if "risk_signal" in candidate.flags or not q < ALPHA or c <= 0.5:
        return "no evidence", reasons
    if c >= 0.6 and confirmed and stability["stable"] and confounding["keeps_effect"]:
        return "strong", reasons
    if c >= 0.55 and confounding["keeps_effect"] and (confirmed or stability["stable"]):
        return "moderate", reasons
    return "weak", reasons


def check_gates(report: ValidationReport, gates: Gates, sign: float) -> list[str]:
    c = 0.5 + sign * (report.candidate.churn.concordance - 0.5)
    failures = []
    if gates.min_concordance is not None and not c >= gates.min_concordance:
        failures.append(f"concordance {c:.3f} < --min-concordance {gates.min_concordance:g}")
    q = report.candidate.churn.q_value
    if gates.max_q is not None and not q <= gates.max_q:
        failures.append(f"q-value {q:.3g} > --max-q {gates.max_q:g}")
    best = report.aha.get("best")
    lift = None if not best else (best["lift"] if sign > 0 else 1 / best["lift"])
    if gates.min_lift is not None and not (lift is not None and lift >= gates.min_lift):
        failures.append(f"lift {lift if lift is not None else float('nan'):.3f} < --min-lift {gates.min_lift:g}")
    if gates.require_stable and not report.stability["stable"]:
        failures.append("effect is not stable: " + "; ".join(report.stability["problems"][:3]))
    return failures

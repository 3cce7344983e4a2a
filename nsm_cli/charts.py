"""PNG charts for `nsm report` (matplotlib, Agg backend): sized for a slide, colour-blind-safe.

Every function returns PNG bytes; nothing is written here. PNGs carry no timestamp, so the same
data gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Okabe-Ito: distinguishable with every common colour-vision deficiency
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, GREY = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")
FLAG_COLOURS = {"ok": BLUE, "risk_signal": VERMILLION, "confounded": ORANGE, "vanity": PURPLE,
                "tracks_tenure": YELLOW, "too_good_to_be_true": SKY, "not_significant": GREY, "redundant": GREEN,
                "low_coverage": GREY}
SIZE = (10, 5.6)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=14, loc="left")
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)


def km_chart(title: str, curves: list[dict[str, Any]], horizon: float) -> bytes:
    """Retention curves with 95% bands. curves: label, times, survival, low, high (lists)."""
    fig, ax = plt.subplots(figsize=SIZE)
    for curve, colour in zip(curves, (BLUE, VERMILLION, GREEN, ORANGE), strict=False):
        ax.step(curve["times"], curve["survival"], where="post", color=colour, lw=2.2, label=curve["label"])
        ax.fill_between(curve["times"], curve["low"], curve["high"], step="post", color=colour, alpha=0.15)
    ax.axvline(horizon, color=GREY, ls="--", lw=1)
    ax.text(horizon, 0.97, f" day {horizon:g}", color=GREY, fontsize=9, va="top")
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    _style(ax, title, "days after the end of the observation window", "share of accounts still customers")
    ax.legend(frameon=False, fontsize=10, loc="lower left")
    return _png(fig)


def score_chart(rows: list[dict[str, Any]]) -> bytes:
    """Horizontal bars of score, coloured by each candidate's main flag. rows: name, score, flag."""
    fig, ax = plt.subplots(figsize=(SIZE[0], max(3.0, 0.32 * len(rows) + 1.2)))
    names = [r["name"] for r in rows][::-1]
    ax.barh(names, [r["score"] for r in rows][::-1], color=[FLAG_COLOURS.get(r["flag"], BLUE) for r in rows][::-1])
    used = []
    for r in rows:
        if r["flag"] not in used:
            used.append(r["flag"])
    handles = [matplotlib.patches.Patch(color=FLAG_COLOURS.get(f, BLUE), label=f.replace("_", " ")) for f in used]
    ax.legend(handles=handles, frameon=False, fontsize=9, loc="lower right")
    ax.set_xlim(0, max(100.0, max((r["score"] for r in rows), default=0)))
    _style(ax, "North Star score of every candidate (0-100; colour = main flag)", "score", "")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=9)
    return _png(fig)


def aha_chart(metric: str, points: list[dict[str, Any]], threshold: float | None, horizon: float) -> bytes:
    """Retention at the horizon by metric value (bars) with the chosen threshold marked."""
    fig, ax = plt.subplots(figsize=SIZE)
    labels = [p["label"] for p in points]
    colours = [GREEN if threshold is not None and p["low"] >= threshold else GREY for p in points]
    ax.bar(labels, [p["retention"] for p in points], color=colours)
    for i, p in enumerate(points):
        ax.text(i, p["retention"] + 0.01, f"{p['retention']:.0%}", ha="center", fontsize=9)
        ax.text(i, 0.02, f"n={p['accounts']}", ha="center", fontsize=8, color="white")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    title = f"Retention at day {horizon:g} by {metric}" + (
        f" — green: at or above the threshold {threshold:g}" if threshold is not None else "")
    _style(ax, title, f"{metric} in the observation window", f"retained at day {horizon:g}")
    return _png(fig)


def stability_chart(metric: str, rows: list[dict[str, Any]]) -> bytes:
    """Hazard ratio per SD by signup quarter with 95% CIs; below 1 = fewer churns."""
    fig, ax = plt.subplots(figsize=SIZE)
    xs = range(len(rows))
    hr = [r["hazard_ratio"] for r in rows]
    low = [r["hazard_ratio"] - r["hr_ci_low"] for r in rows]
    high = [r["hr_ci_high"] - r["hazard_ratio"] for r in rows]
    ax.errorbar(xs, hr, yerr=[low, high], fmt="o", color=BLUE, capsize=4, lw=2)
    ax.axhline(1.0, color=GREY, ls="--", lw=1)
    ax.set_xticks(list(xs), [r["group"] for r in rows])
    _style(ax, f"Does {metric} predict churn in every signup cohort? (below 1 = protects)",
           "signup quarter", "hazard ratio of churn per SD")
    return _png(fig)

"""Renderers: Report -> text (terminal table, plain text, JSON, CSV, Markdown). No printing here."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import textwrap
from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nsm_cli.results import CandidateResult, OutcomeStats, Report

FLAG_LEGEND = {
    "risk_signal": "higher values go with MORE churn: a warning sign, not a North Star",
    "not_significant": "no significant link to churn or expansion after multiple-testing correction (q >= 0.05)",
    "low_coverage": "fewer than 10% of accounts do it",
    "vanity": "volume grows (newer accounts do more of it) but it predicts nothing",
    "redundant": "measures the same thing as a better-ranked candidate (|Spearman| >= 0.9); see its family",
    "confounded": "most of the effect disappears after adjusting for plan/segment",
    "tracks_tenure": "mostly follows account age (|Spearman| >= 0.7): a lifetime total leaks the outcome",
    "too_good_to_be_true": "near-perfect separation: usually part of the outcome's own definition, or a leak",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    """A p- or q-value for people: 3 significant digits, '<0.0001' below that."""
    if value is None or value != value:
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.2g}"


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.0f}%"


def _value(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


def threshold_words(c: CandidateResult, horizon: float) -> str:
    """'>= 3 (31%): 78% vs 55% ✓': share of accounts at or above, retained at the horizon above vs below,
    and whether the holdout half confirmed it."""
    t = c.churn.threshold
    if t is None:
        return "-"
    check = "✓" if t.holdout_confirmed else "✗"
    if c.score_components.get("orientation", 1.0) < 0:
        return (f"< {_value(t.value)} ({_pct(1 - t.share_above)}): {_pct(t.retention_below)} vs "
                f"{_pct(t.retention_above)} {check}")
    return f">= {_value(t.value)} ({_pct(t.share_above)}): {_pct(t.retention_above)} vs {_pct(t.retention_below)} {check}"


def _summary_lines(report: Report) -> list[str]:
    d, s = report.data, report.settings
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(d.excluded.items())) or "none"
    lines = [
        f"Accounts: {d.accounts_total} in file, {d.accounts_analysed} analysed; excluded: {excluded}.",
        f"Churn events: {d.churn_events}; " + (
            f"expansion events: {d.expansion_events} ({d.expansion_accounts} accounts with known expansion status)."
            if d.expansion_accounts else "expansion: not available (no expansion_date column or MRR history)."),
        f"Window {s['window_days']:g}d ({s['landmark_mode']} landmark), horizon {s['horizon_days']:g}d, "
        f"as of {d.as_of[:10]}; usage: {d.usage_kind}.",
    ]
    if d.skipped_candidates:
        lines.append(f"Skipped candidates: {len(d.skipped_candidates)} (constant or nearly empty).")
    if d.warnings:
        lines.append(f"Data warnings: {len(d.warnings)} (see --format json or nsm inspect).")
    lines.append(f"Threshold: metric >= t (share of accounts): retained at day {s['horizon_days']:g} above vs below; "
                 "✓ confirmed on the holdout half, ✗ not.")
    return lines


def _expansion_cells(o: OutcomeStats | None) -> tuple[str, str]:
    return ("-", "-") if o is None else (_num(o.concordance), _num(o.hazard_ratio))


def _row(c: CandidateResult, horizon: float) -> list[str]:
    ec, ehr = _expansion_cells(c.expansion)
    return [str(c.rank), c.name, f"{c.score:.1f}", _num(c.churn.concordance), _num(c.churn.hazard_ratio), ec, ehr,
            threshold_words(c, horizon), f"{c.reach} ({_pct(c.coverage)})", ", ".join(c.flags) or "-"]


HEADERS = ["#", "candidate", "score", "churn C", "churn HR", "exp C", "exp HR", "threshold", "reach", "flags"]


def render_rich(report: Report, *, top: int | None) -> Group:
    """Terminal table (rich) with the summary lines under it."""
    table = Table(box=box.SIMPLE_HEAVY, title="North Star candidates", title_justify="left")
    for h in HEADERS:
        table.add_column(h, overflow="fold", no_wrap=h == "candidate",
                         justify="right" if h in ("#", "score") or " " in h else "left")
    horizon = report.settings["horizon_days"]
    for c in report.candidates[:top]:
        style = "bold green" if c.rank == 1 and c.score > 0 else ("dim" if c.score == 0 else None)
        table.add_row(*[Text(cell) for cell in _row(c, horizon)], style=style)
    notes = Text("\n".join(_summary_lines(report)) + "\nC: concordance (> 0.5 = higher metric, longer stay / "
                 "sooner expansion). HR: hazard ratio per SD of log1p(metric).", style="dim")
    return Group(table, notes)


def render_text(report: Report, *, top: int | None) -> str:
    """Plain, stable fixed-width text for pipes and logs."""
    horizon = report.settings["horizon_days"]
    rows = [HEADERS] + [_row(c, horizon) for c in report.candidates[:top]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + [""] + _summary_lines(report)) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def safe_cell(value: Any) -> Any:
    """Neutralise text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


CSV_OUTCOME_FIELDS = ("concordance", "hazard_ratio", "hr_ci_low", "hr_ci_high", "p_value", "q_value", "spearman",
                      "adjusted_hazard_ratio")
CSV_THRESHOLD_FIELDS = ("value", "share_above", "retention_above", "retention_below", "holdout_confirmed")


def render_csv(report: Report) -> str:
    head = ["rank", "name", "source", "aggregation", "score", "coverage", "reach", "flags", "family"]
    for o in ("churn", "expansion"):
        head += [f"{o}_{f}" for f in CSV_OUTCOME_FIELDS] + [f"{o}_threshold_{f}" for f in CSV_THRESHOLD_FIELDS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for c in report.candidates:
        d = c.to_dict()
        row = [d["rank"], d["name"], d["source"], d["aggregation"], d["score"], d["coverage"], d["reach"],
               ";".join(d["flags"]), d["family"]]
        for o in ("churn", "expansion"):
            od = d[o] or {}
            th = od.get("threshold") or {}
            row += [od.get(f) for f in CSV_OUTCOME_FIELDS] + [th.get(f) for f in CSV_THRESHOLD_FIELDS]
        writer.writerow([safe_cell("" if v is None else v) for v in row])
    return out.getvalue()


def md_escape(text: str) -> str:
    """Escape user-supplied text for a GitHub-flavoured Markdown table cell."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return re.sub(r"([`*_\[\]<>#!~])", r"\\\1", text)


def render_markdown(report: Report, *, top: int | None) -> str:
    horizon = report.settings["horizon_days"]
    lines = ["# North Star candidates", ""]
    lines += [f"- {line}" for line in _summary_lines(report)] + [""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join("---:" if h in ("#", "score") or " " in h else "---" for h in HEADERS) + "|")
    for c in report.candidates[:top]:
        lines.append("| " + " | ".join(md_escape(cell) for cell in _row(c, horizon)) + " |")
    used = sorted({f for c in report.candidates[:top] for f in c.flags})
    if used:
        lines += ["", "Flags:", ""] + [f"- `{f}`: {FLAG_LEGEND[f]}" for f in used]
    lines += ["", "C: concordance (> 0.5 = higher metric, longer stay / sooner expansion). "
              "HR: hazard ratio per standard deviation of log1p(metric)."]
    return "\n".join(lines) + "\n"


def render_inspect_text(report: Any) -> str:
    """Plain-text profile for `nsm inspect`."""
    lines: list[str] = []
    for f in report.files:
        mapping = ", ".join(f"{role}={col}" for role, col in f["columns"].items())
        span = f" {f['first_date'][:10]} .. {f['last_date'][:10]}" if f["first_date"] else ""
        lines.append(f"{f['role']}: {f['path']} — {f['shape']}, {f['rows']} rows{span}")
        lines.append(f"  columns: {mapping}" + (f"; other: {', '.join(f['other_columns'])}" if f["other_columns"]
                                                else ""))
    a = report.accounts
    if a:
        rate = _pct(a["churn_rate"])
        excluded = ", ".join(f"{k} {v}" for k, v in a["excluded"].items()) or "none"
        lines += ["", f"accounts: {a['in_file']} in file, {a['analysable']} analysable (excluded: {excluded})",
                  f"  churned after the landmark: {a['churned_after_landmark']} ({rate}); expanded: "
                  f"{a['expanded_after_landmark']} of {a['expansion_known']} with known status; as of {a['as_of'][:10]}"]
    e = report.events
    if e:
        span = f", {e['first'][:10]} .. {e['last'][:10]}" if e["first"] else ""
        lines += ["", f"events: {e['rows']} rows, {e['event_types']} types{span}; "
                  f"{e['accounts_without_events']} account(s) without events"]
        lines += [f"  {t['event']}: {t['rows']} rows, {t['accounts']} accounts" for t in e["top"]]
        if e["other_types"]:
            lines.append(f"  … {e['other_types']} more types, {e['other_rows']} rows")
    lines += ["", f"problems: {len(report.problems)}" if report.problems else "problems: none found"]
    for p in report.problems:
        where = ", ".join(x for x in (p["file"] or "", f"column {p['column']}" if p["column"] else "",
                                       f"e.g. line {p['example_row']}" if p["example_row"] else "") if x)
        lines.append(f"  - [{p['code']}] {p['message']}" + (f" ({where})" if where else "")
                     + (f" → {p['advice']}" if p["advice"] else ""))
    if report.fatal:
        lines += ["", f"cannot analyse: {report.fatal}"]
    return "\n".join(lines) + "\n"


# ---- nsm validate ------------------------------------------------------------------------------

KM_MARKS = "1234567"


def render_km_text(groups: list[dict[str, Any]], *, width: int = 72, height: int = 14) -> str:
    """Kaplan-Meier retention curves as a text plot (one digit per group), days on x, retention on y."""
    grid = [[" "] * width for _ in range(height)]
    lo = min(min(p[1] for p in g["curve"]) for g in groups)
    lo = max(0.0, min(lo, 0.9) - 0.05)
    days = groups[0]["curve"][-1][0]
    for gi, g in enumerate(groups):
        xs = np.array([p[0] for p in g["curve"]])
        ys = np.array([p[1] for p in g["curve"]])
        for col in range(width):
            t = days * col / (width - 1)
            s = ys[np.searchsorted(xs, t, side="right") - 1]
            row = int(round((1 - (s - lo) / (1 - lo)) * (height - 1)))
            grid[min(max(row, 0), height - 1)][col] = KM_MARKS[gi % len(KM_MARKS)]
    lines = []
    for r, cells in enumerate(grid):
        level = 1 - (1 - lo) * r / (height - 1)
        label = f"{level:4.0%} |" if r % 3 == 0 or r == height - 1 else "     |"
        lines.append(label + "".join(cells))
    lines.append("     +" + "-" * width)
    lines.append(f"      0{'days after the landmark':^{width - 8}}{days:.0f}")
    lines += [f"      {KM_MARKS[i % len(KM_MARKS)]} = {g['label']} ({g['accounts']} accounts)" for i, g in enumerate(groups)]
    return "\n".join(lines)


def render_validation_text(v: Any) -> str:
    d = v.to_dict()
    c = d["candidate"]["churn"]
    lines = [f"nsm validate {d['metric']}: {d['verdict'].upper()}", ""]
    lines += [f"  - {r}" for r in d["reasons"]]
    lines += [""] + textwrap.wrap(d["aha"]["sentence"], 100)
    best = d["aha"].get("best")
    if best:
        lines.append(f"  threshold 95% bootstrap interval: {_num(best['ci_low'], 3)} .. {_num(best['ci_high'], 3)}; "
                     f"lift {_num(best['lift'])}; holdout {_pct(best['holdout_retention_above'])} vs "
                     f"{_pct(best['holdout_retention_below'])} (p {_p(best['holdout_p_value'])})")
    lines += ["", f"Churn: C {_num(c['concordance'])}, HR per SD {_num(c['hazard_ratio'])} "
              f"[{_num(c['hr_ci_low'])}, {_num(c['hr_ci_high'])}], q {_p(c['q_value'])}", ""]
    lines += _dose_lines(d["dose_response"])
    lines += _stability_lines(d["stability"])
    lines += _confounding_lines(d["confounding"])
    lines += _leading_lines(d["leading"])
    ph = d["proportional_hazards"]
    lines += [""] + textwrap.wrap(f"Proportional hazards (Schoenfeld, {ph['accounts']} accounts): "
                                  f"p {_p(ph['p_value'])} — {ph['advice']}", 100)
    if d["gate_failures"]:
        lines += ["", "Gates failed:"] + [f"  - {g}" for g in d["gate_failures"]]
    return "\n".join(lines) + "\n"


def _dose_lines(dose: dict[str, Any]) -> list[str]:
    head = f"{'group':<14}{'accounts':>9}" + "".join(f"{'day ' + k:>18}" for k in dose["groups"][0]["retention"])
    lines = ["Retention by metric group (95% CI):", head]
    for g in dose["groups"]:
        cells = "".join(f"{_pct(r['retention']):>6} [{_pct(r['ci_low'])}-{_pct(r['ci_high'])}]".rjust(18)
                        for r in g["retention"].values())
        lines.append(f"{g['label']:<14}{g['accounts']:>9}{cells}")
    lines += textwrap.wrap(
        f"log-rank across groups: p {_p(dose['logrank_p_value'])} ({dose['logrank_df']} df). Accounts in "
        f"{dose['best_group']} stay on average {dose['rmst_difference']:.0f} more days in their first year than "
        f"accounts in {dose['worst_group']} (RMST).", 100)
    lines += ["", render_km_text(dose["groups"]), ""]
    return lines


def _stability_lines(st: dict[str, Any]) -> list[str]:
    lines = ["Stability (HR per SD and C by signup quarter and segment):"]
    rows = [("cohort", r) for r in st["cohorts"]] + [(k, r) for k, rows in st["segments"].items() for r in rows]
    for kind, r in rows:
        lines.append(f"  {kind:<8} {r['group']:<12} n {r['accounts']:>7}  HR {_num(r['hazard_ratio'])}  "
                     f"C {_num(r['concordance'])}  {r['status']}")
    tr = st["trend"]
    if tr["slope_log_hr_per_cohort"] is not None:
        lines.append(f"  trend of log HR over cohorts: {tr['slope_log_hr_per_cohort']:+.3f} per quarter, p "
                     f"{_p(tr['p_value'])}" + (" — DECAYING: revisit this metric" if tr["decaying"] else ""))
    return lines + [""]


def _confounding_lines(cf: dict[str, Any]) -> list[str]:
    lines = ["Confounding (HR per SD):", f"  {'raw':<30} {_num(cf['raw']['hazard_ratio'])}"]
    labels = {"segments": "adjusted for segments", "candidates": "adjusted for other candidates",
              "both": "adjusted for both"}
    for key, label in labels.items():
        if cf.get(key):
            lines.append(f"  {label:<30} {_num(cf[key]['hazard_ratio'])} (p {_p(cf[key]['p_value'])})")
    for kind in ("segments", "candidates"):
        if cf["adjusted_for"][kind]:
            lines += textwrap.wrap(f"{kind}: {', '.join(cf['adjusted_for'][kind])}", 96, initial_indent="    ",
                                   subsequent_indent="      ")
    return lines + [""]


def _leading_lines(ld: dict[str, Any]) -> list[str]:
    lines = [f"Leading or lagging ({ld['mode']}):"]
    for r in ld["rows"]:
        key = f"window {r['window_days']:g}d" if "window_days" in r else f"lead {r['lead_days']:g}d"
        lines.append(f"  {key:<12} " + (f"C {_num(r['concordance'])}  HR {_num(r['hazard_ratio'])}" if "concordance"
                                         in r else r.get("note", "")))
    lines.append("  leading: it predicts early" if ld["leading"] else "  lagging: it only predicts late")
    return lines


# ---- nsm report --------------------------------------------------------------------------------

def render_document_markdown(doc: Any, image_dir: str) -> str:
    """GitHub-flavoured Markdown; images referenced as `image_dir/NAME.png` (relative paths)."""
    out: list[str] = []
    for b in doc.blocks:
        if b.kind == "h1":
            out += [f"# {b.text}", ""]
        elif b.kind == "h2":
            out += [f"## {b.text}", ""]
        elif b.kind in ("p", "small"):
            out += [b.text if b.kind == "p" else f"<sub>{b.text}</sub>", ""]
        elif b.kind == "list":
            out += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            out.append("| " + " | ".join(md_escape(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(md_escape(cell) for cell in row) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "image":
            out += [f"![{md_escape(b.text)}]({image_dir}/{b.image})", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


HTML_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.5}h1{font-size:2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f4f4f4}img{max-width:100%;height:auto}code{background:#f2f2f2;padding:1px 4px;border-radius:3px}
small{color:#666}
"""


def render_document_html(doc: Any) -> str:
    """One self-contained HTML file: the same blocks, charts embedded as data URIs."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title><style>{HTML_STYLE}</style></head><body>"]
    for b in doc.blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "small":
            out.append(f"<p><small>{_inline_html(b.text)}</small></p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "image":
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}"></figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"

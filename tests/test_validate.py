"""nsm validate: the documented ground truth at several seeds, and the CI gates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nsm_cli import Settings
from nsm_cli.cli import app
from nsm_cli.deepdive import validate_metric

from .conftest import SAMPLE

RUNNER = CliRunner()
ARGS = ["--accounts", str(SAMPLE / "accounts.csv"), "--usage", str(SAMPLE / "events.csv"),
        "--mrr", str(SAMPLE / "mrr.csv")]


def _settings(folder):
    return Settings(accounts=str(folder / "accounts.csv"), usage=str(folder / "events.csv"),
                    mrr=str(folder / "mrr.csv"))


@pytest.mark.parametrize("key", [(1, 2500), (2, 2500)])
def test_driver_is_strong_with_threshold_near_three(sample_dirs, key):
    report = validate_metric(_settings(sample_dirs[key]), "report_shared.count")
    assert report.verdict == "strong"
    best = report.aha["best"]
    assert 2 <= best["threshold"] <= 4 and best["holdout_confirmed"]
    assert best["ci_low"] <= 3 <= best["ci_high"]
    groups = report.dose_response["groups"]
    assert groups[-1]["retention"]["90"]["retention"] > groups[0]["retention"]["90"]["retention"]
    assert report.dose_response["rmst_difference"] > 30 and report.dose_response["logrank_p_value"] < 1e-6
    assert report.stability["stable"] and report.leading["leading"]
    assert report.aha["sentence"].startswith("Accounts with report_shared.count >= ")


@pytest.mark.parametrize("key", [(1, 2500), (2, 2500)])
def test_vanity_has_no_evidence_and_confounded_moves_toward_one(sample_dirs, key):
    vanity = validate_metric(_settings(sample_dirs[key]), "page_viewed.count", windows=(30.0,))
    assert vanity.verdict == "no evidence"
    confounded = validate_metric(_settings(sample_dirs[key]), "api_call.count", windows=(30.0,))
    raw = confounded.confounding["raw"]["hazard_ratio"]
    adjusted = confounded.confounding["segments"]["hazard_ratio"]
    assert raw < 0.85 and abs(np.log(adjusted)) < abs(np.log(raw)) / 2
    assert not confounded.confounding["keeps_effect"]
    assert "confounded" in confounded.candidate.flags
    assert confounded.verdict in ("weak", "no evidence")


def test_gates_pass_and_fail_with_exit_codes():
    ok = RUNNER.invoke(app, ["validate", "report_shared.count", *ARGS, "--min-concordance", "0.55", "--max-q", "0.05",
                             "--min-lift", "1.05", "--require-stable", "--windows", "30d", "-q"])
    assert ok.exit_code == 0, ok.stderr
    assert "STRONG" in ok.stdout and "days after the landmark" in ok.stdout
    assert max(len(line) for line in ok.stdout.splitlines()) <= 100
    bad = RUNNER.invoke(app, ["validate", "page_viewed.count", *ARGS, "--min-concordance", "0.6", "--windows", "30d",
                              "-q"])
    assert bad.exit_code == 1 and "--min-concordance 0.6" in bad.stderr


def test_json_output_and_unknown_metric():
    result = RUNNER.invoke(app, ["validate", "report_shared.count", *ARGS, "-f", "json", "--windows", "14d,30d", "-q"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["verdict"] == "strong"
    assert {r["window_days"] for r in data["aha"]["grid"]} == {14, 30}
    qs = [r["q_value"] for r in data["aha"]["grid"]]
    assert all(q >= p for q, p in zip(qs, [r["p_value"] for r in data["aha"]["grid"]], strict=True))
    missing = RUNNER.invoke(app, ["validate", "report_shared.cnt", *ARGS])
    assert missing.exit_code == 2 and "report_shared.count" in missing.stderr


def test_calendar_landmark_measures_lead_times():
    from datetime import datetime

    settings = Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "events.csv"),
                        landmark=datetime(2024, 10, 1))
    report = validate_metric(settings, "report_shared.count", windows=(30.0,))
    rows = report.leading["rows"]
    assert [r["lead_days"] for r in rows] == [0.0, 30.0, 60.0]
    assert all(0 <= r["concordance"] <= 1 for r in rows)
    assert report.stability["overall"]["accounts"] == report.candidate.churn.n_accounts


def test_verdict_names_a_q_value_below_double_precision_instead_of_zero():
    from types import SimpleNamespace

    from nsm_cli.deepdive import decide

    evidence = ({"best": {"holdout_confirmed": True}}, {"stable": True, "problems": []}, {"keeps_effect": True}, 1.0)
    for q, text in ((0.0, "q < 1e-300"), (5.6e-23, "q = 5.6e-23")):
        candidate = SimpleNamespace(churn=SimpleNamespace(concordance=0.7, q_value=q), flags=[])
        verdict, reasons = decide(candidate, *evidence)
        assert verdict == "strong" and reasons[0] == f"concordance 0.70, {text}"


def test_other_windows_without_the_mrr_history_give_the_same_deep_dive(monkeypatch):
    """The deep dive measures churn only, so its other windows drop the MRR history when the accounts
    date their churn (deriving each window's expansion from it cost ~0.1 s at 100k accounts): the report
    must be the one computed with it. Without a churn column, the MRR dates the churn and stays."""
    import dataclasses

    from nsm_cli import deepdive

    settings = Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "events.csv"),
                        mrr=str(SAMPLE / "mrr.csv"))
    kept = []
    real = deepdive._for_churn
    monkeypatch.setattr(deepdive, "_for_churn", lambda inputs: kept.append(real(inputs).mrr is None) or real(inputs))
    lean = validate_metric(settings, "report_shared.count").to_dict()
    assert kept == [True]
    monkeypatch.setattr(deepdive, "_for_churn", lambda inputs: inputs)
    assert validate_metric(settings, "report_shared.count").to_dict() == lean
    inputs = deepdive.load_inputs(settings, windows=())
    assert real(dataclasses.replace(inputs, has_churn_column=False)).mrr is inputs.mrr

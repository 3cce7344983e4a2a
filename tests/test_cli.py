"""The command line: exit codes, formats, gates, outputs. stdout and stderr kept apart."""

from __future__ import annotations

import csv
import errno
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from nsm_cli import scratch
from nsm_cli.cli import app
from nsm_cli.config import Settings
from nsm_cli.pipeline import analyze
from nsm_cli.render import md_escape, render_json, safe_cell

from .conftest import SAMPLE, write

ARGS = ["--accounts", str(SAMPLE / "accounts.csv"), "--usage", str(SAMPLE / "events.csv"),
        "--mrr", str(SAMPLE / "mrr.csv"), "--as-of", "2025-06-30"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def json_out(runner):
    result = runner.invoke(app, ["rank", *ARGS, "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_json_contract_equals_library(json_out):
    data = json.loads(json_out)
    lib = analyze(Settings(accounts=ARGS[1], usage=ARGS[3], mrr=ARGS[5],
                           as_of=__import__("datetime").datetime(2025, 6, 30)))
    assert json_out == render_json(lib)
    assert data["schema_version"] == 1
    assert {"window_days", "horizon_days", "as_of", "landmark"} <= set(data["settings"])
    assert {"accounts_total", "accounts_analysed", "accounts_excluded", "churn_events", "expansion_events"} <= set(
        data["data"])
    first = data["candidates"][0]
    for key in ("rank", "name", "source", "aggregation", "score", "coverage", "flags", "churn", "expansion"):
        assert key in first
    for key in ("concordance", "hazard_ratio", "hr_ci_low", "hr_ci_high", "p_value", "q_value", "spearman"):
        assert key in first["churn"] and key in first["expansion"]
    assert set(first["churn"]["threshold"]) >= {"value", "share_above", "retention_above", "retention_below",
                                                  "holdout_confirmed"}
    assert [c["rank"] for c in data["candidates"]] == list(range(1, len(data["candidates"]) + 1))


def test_plain_text_when_piped_and_top(runner):
    result = runner.invoke(app, ["rank", *ARGS, "--top", "3", "-q"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("#") and "candidate" in lines[0]
    assert lines[1].startswith("1 ") and "report_shared." in lines[1]
    assert lines[4] == ""  # header + 3 rows, then the summary
    assert "\x1b[" not in result.stdout


def test_gates_exit_one_with_reason(runner, json_out):
    top = json.loads(json_out)["candidates"][0]
    ok = runner.invoke(app, ["rank", *ARGS, "-q", "--expect-top", top["family"], "--fail-under", "5"])
    assert ok.exit_code == 0
    bad = runner.invoke(app, ["rank", *ARGS, "-q", "--expect-top", "page_viewed.count"])
    assert bad.exit_code == 1 and "expected page_viewed.count" in bad.stderr
    low = runner.invoke(app, ["rank", *ARGS, "-q", "--fail-under", "99"])
    assert low.exit_code == 1 and "--fail-under" in low.stderr


def test_bad_flags_exit_two(runner):
    assert runner.invoke(app, ["rank", *ARGS, "--format", "yaml"]).exit_code == 2
    result = runner.invoke(app, ["rank", *ARGS, "--window", "thirty"])
    assert result.exit_code == 2 and "duration" in result.stderr
    assert runner.invoke(app, ["rank", *ARGS, "--weights", "churn=x"]).exit_code == 2


def test_missing_file_exits_three_without_traceback(runner, tmp_path):
    result = runner.invoke(app, ["rank", "--accounts", str(tmp_path / "nope.csv"), "--usage", ARGS[3]])
    assert result.exit_code == 3
    assert "nope.csv" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_output_is_written_and_never_over_an_input(runner, tmp_path):
    out = tmp_path / "deep" / "rank.csv"
    result = runner.invoke(app, ["rank", *ARGS, "-q", "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[0]["rank"] == "1" and rows[0]["name"].startswith("report_shared.")
    accounts = tmp_path / "accounts.csv"
    accounts.write_bytes((SAMPLE / "accounts.csv").read_bytes())
    before = accounts.read_bytes()
    args = ["rank", "--accounts", str(accounts), "--usage", ARGS[3], "-q", "--output", str(accounts)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "refusing" in result.stderr
    assert accounts.read_bytes() == before


def test_unwritable_output_exits_four_naming_the_path(runner, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["rank", *ARGS, "-q", "--output", str(blocker / "rank.txt")])
    assert result.exit_code == 4
    assert f"cannot write {blocker / 'rank.txt'}: " in result.stderr and "internal error" not in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    result = runner.invoke(app, ["sample", "--output-dir", str(blocker / "s"), "--accounts", "60"])
    assert result.exit_code == 4 and "cannot write the sample into" in result.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_disk_exits_four():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "nsm_cli", "rank", *ARGS, "-q"], stdout=full,
                              stderr=subprocess.PIPE, text=True)
    assert done.returncode == 4
    assert "cannot write standard output: No space left on device" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("error", "is_scratch"), [
    (OSError("No space left on device (os error 28)"), True),  # as polars raises it
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (OSError("Input/output error (os error 5)"), False),  # reading can fail so: not the scratch file's
])
def test_scratch_file_failures_say_where_and_what_to_do(runner, monkeypatch, error, is_scratch):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(pl, "collect_all", failing)  # the scan that writes the scratch file
    monkeypatch.setattr(scratch, "memory_headroom", lambda: 0)  # the file in TMPDIR, not in memory
    result = runner.invoke(app, ["rank", *ARGS, "-q"])
    assert result.exit_code == 4 and "Traceback" not in result.stderr + result.stdout
    if is_scratch:
        assert f"cannot write nsm's scratch file in {tempfile.gettempdir()}: " in result.stderr
        assert "TMPDIR" in result.stderr and "internal error" not in result.stderr
    else:
        assert "internal error (OSError: Input/output error (os error 5))" in result.stderr


def test_markdown_output(runner):
    result = runner.invoke(app, ["rank", *ARGS, "-q", "--format", "markdown", "--top", "5"])
    assert result.exit_code == 0
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 7
    assert len({line.count(" | ") for line in table[2:]}) == 1


def test_safe_cells_and_escaping():
    assert safe_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert safe_cell("@sum") == "'@sum"
    assert safe_cell("report.count") == "report.count"
    assert md_escape("a|b<script>") == "a\\|b\\<script\\>"


def test_every_command_has_help(runner):
    commands = typer_commands()
    assert {"rank", "sample"} <= set(commands)
    for name, command in commands.items():
        assert command.help, name
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


def typer_commands():
    from typer.main import get_command

    return get_command(app).commands


def test_sample_command_writes_dataset(runner, tmp_path):
    result = runner.invoke(app, ["sample", "--output-dir", str(tmp_path), "--accounts", "200", "--seed", "3"])
    assert result.exit_code == 0
    for name in ("accounts.csv", "events.csv", "mrr.csv", "account_snapshot.csv", "ground_truth.json"):
        assert (tmp_path / name).stat().st_size > 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["churn_driver"] == "report_shared" and truth["seed"] == 3


def test_nsm_toml_config_and_unknown_keys(runner, tmp_path):
    cfg = write(tmp_path / "nsm.toml", f'accounts = "{ARGS[1]}"\nusage = "{ARGS[3]}"\nhorizon = "60d"\n'
                '[[candidate]]\nname = "collab.count"\nevents = ["report_shared", "integration_connected"]\n'
                '[[candidate]]\nname = "share_rate"\nratio = ["report_shared.count", "any.count"]\n')
    result = runner.invoke(app, ["rank", "--config", cfg, "-q", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["horizon_days"] == 60
    names = {c["name"]: c for c in data["candidates"]}
    assert names["collab.count"]["origin"] == "config" and names["share_rate"]["aggregation"] == "ratio"
    bad = write(tmp_path / "bad.toml", 'accounts = "x"\nwindw = "7d"\n')
    result = runner.invoke(app, ["rank", "--config", bad])
    assert result.exit_code == 2 and "windw" in result.stderr

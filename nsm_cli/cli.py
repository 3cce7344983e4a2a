"""Command line: flags -> Settings -> library call -> renderer -> exit code. Only file that knows typer."""
# ruff: noqa: E402 (the process is configured before the imports that load numpy)

from __future__ import annotations

import os

# nsm runs its own threads (a chunk of candidates per core); OpenBLAS's threads on top of them only spin
# between the small matrix products and take ~0.5 s of CPU from a 100k run. Set before numpy loads it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# numpy asks the kernel for 2 MB pages for its large arrays; each first touch then zeroes a whole 2 MB
# page, most of them for arrays that live a moment (0.3-0.4 s of system CPU at 100k). numpy reads this
# when it loads.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
# polars' allocator (jemalloc) keeps 4 arenas per core by default; memory one thread frees is reused
# only by threads of the same arena, so the next allocation elsewhere faults in fresh pages. An arena
# per core: 0.06-0.16 s less system CPU at 100k. polars reads this when it loads.
os.environ.setdefault("_RJEM_MALLOC_CONF", f"narenas:{os.cpu_count() or 1}")

import ctypes
import gc
import json
import sys
import tempfile
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nsm_cli import __version__
from nsm_cli.config import Settings, build_settings, parse_date, parse_duration, parse_weights
from nsm_cli.errors import InputError, NsmError, UsageError, WriteError
from nsm_cli.pipeline import analyze
from nsm_cli.render import render_csv, render_inspect_text, render_json, render_markdown, render_rich, render_text

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3, 4

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="nsm: find the usage metric that best predicts that your customers stay and grow (your North Star).",
)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


Accounts = Annotated[str | None, typer.Option("--accounts", "-a", help="Accounts CSV (plain, .gz or .zst)/Parquet (or glob): account_id, signup_date, churn_date, ...")]
UsageOpt = Annotated[str | None, typer.Option("--usage", "-u", help="Usage CSV (plain, .gz or .zst)/Parquet (or glob): event log, periodic table or per-account table.")]
Mrr = Annotated[str | None, typer.Option("--mrr", help="Optional MRR history, CSV or Parquet: account_id, date, mrr.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings file (default: ./nsm.toml when present).")]
Column = Annotated[list[str] | None, typer.Option("--column", help="Column mapping ROLE=NAME, e.g. --column account_id=org (repeatable).")]
Window = Annotated[str | None, typer.Option("--window", help="Observation window after signup (default 30d).")]
Horizon = Annotated[str | None, typer.Option("--horizon", help="Retention horizon after the landmark (default 90d).")]
AsOf = Annotated[str | None, typer.Option("--as-of", help="Export date; default: the latest date in the inputs.")]
Landmark = Annotated[str | None, typer.Option("--landmark", help="Calendar landmark DATE (metrics over the window before it).")]
ExpMin = Annotated[float | None, typer.Option("--expansion-min", help="MRR rise that counts as expansion (default 0.10).")]
Segments = Annotated[str | None, typer.Option("--segments", help="Comma-separated segment columns to adjust for (default: plan, seats, segment... when present).")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Score weights, e.g. churn=0.6,expansion=0.4.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed of the holdout split (default 0).")]
MaxEvents = Annotated[int | None, typer.Option("--max-events", help="Analyse at most this many event types, by volume (default 100).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or warnings on stderr.")]


def _settings(config: Path | None, column: list[str] | None, **flags) -> Settings:
    columns = {}
    for item in column or []:
        role, sep, name = item.partition("=")
        if not sep:
            raise UsageError(f"--column expects ROLE=NAME, got {item!r}")
        columns[role.strip()] = name.strip()
    if config is None and Path("nsm.toml").is_file():
        config = Path("nsm.toml")
    conv = {
        "window_days": lambda v: parse_duration(v, name="--window"),
        "horizon_days": lambda v: parse_duration(v, name="--horizon"),
        "as_of": lambda v: parse_date(v, name="--as-of"),
        "landmark": lambda v: parse_date(v, name="--landmark"),
        "weights": parse_weights,
        "segments": lambda v: tuple(s.strip() for s in v.split(",") if s.strip()),
    }
    values = {k: (conv[k](v) if k in conv and v is not None else v) for k, v in flags.items()}
    return build_settings(config, columns=columns, **values)


_FLAG_SETTINGS = {"accounts": "accounts", "usage": "usage", "mrr": "mrr", "window": "window_days",
                  "horizon": "horizon_days", "as_of": "as_of", "landmark": "landmark",
                  "expansion_min": "expansion_min", "segments": "segments", "weights": "weights", "seed": "seed",
                  "max_events": "max_events"}


def _settings_from(flags: dict) -> Settings:
    """Settings from a command's parameters (the shared input and method flags it has)."""
    values = {setting: flags.get(flag) for flag, setting in _FLAG_SETTINGS.items()}
    return _settings(flags.get("config"), flags.get("column"), **values)


def _fail(err: Console, code: int, message: str) -> typer.Exit:
    err.print(f"nsm: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _write_output(text: str | bytes, output: Path | None, inputs: list[str | None]) -> None:
    """stdout, or an atomic write (temp file + rename) that refuses to overwrite an input."""
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout redirected to a full disk, say
            raise WriteError.of("standard output", exc) from None
        return
    target = output.resolve()
    for src in inputs:
        if src and Path(src).exists() and Path(src).resolve() == target:
            raise UsageError(f"--output {output} is one of the input files; refusing to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError.of(str(output), exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError.of(str(output), exc) from None
        raise


def _run(err: Console, debug: bool, body) -> None:
    """Run a command body, mapping library errors to exit codes (no traceback unless --debug)."""
    try:
        code = body()
    except typer.Exit:
        raise
    except UsageError as exc:
        raise _fail(err, EXIT_USAGE, str(exc)) from None
    except WriteError as exc:
        raise _fail(err, EXIT_INTERNAL, str(exc)) from None
    except (InputError, NsmError) as exc:
        raise _fail(err, EXIT_INPUT, str(exc)) from None
    except BrokenPipeError:
        raise typer.Exit(EXIT_OK) from None
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit code 4
        if debug:
            traceback.print_exc()
        raise _fail(err, EXIT_INTERNAL, f"internal error ({exc.__class__.__name__}: {exc}); rerun with --debug "
                    "and report it") from None
    raise typer.Exit(code)


class _Progress:
    """A spinner on stderr naming the current stage; silent when stderr is not a terminal or --quiet."""

    def __init__(self, err: Console, quiet: bool) -> None:
        self._status = None if quiet or not err.is_terminal else err.status("nsm: starting…")

    def __enter__(self) -> _Progress:
        if self._status:
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._status:
            self._status.__exit__(*exc)

    def __call__(self, stage: str) -> None:
        if self._status:
            self._status.update(f"nsm: {stage}…")


@app.command()
def rank(
    accounts: Accounts = None, usage: UsageOpt = None, mrr: Mrr = None, config: ConfigOpt = None,
    column: Column = None, window: Window = None, horizon: Horizon = None, as_of: AsOf = None,
    landmark: Landmark = None, expansion_min: ExpMin = None, segments: Segments = None,
    weights: WeightsOpt = None, seed: Seed = None, max_events: MaxEvents = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table (terminal), json, csv or markdown.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE (atomically) instead of stdout.")] = None,
    top: Annotated[int | None, typer.Option("--top", "-n", min=1, help="Show only the N best candidates.")] = None,
    fail_under: Annotated[float | None, typer.Option("--fail-under", help="Exit 1 if the best score is below SCORE.")] = None,
    expect_top: Annotated[str | None, typer.Option("--expect-top", help="Exit 1 unless NAME (or its family) ranks first.")] = None,
    debug: Debug = False, quiet: Quiet = False,
) -> None:
    """Rank every candidate metric by how well it predicts retention and expansion."""
    flags = dict(locals())
    err = Console(stderr=True)

    def body() -> int:
        settings = _settings_from(flags)
        with _Progress(err, quiet) as progress:
            report = analyze(settings, progress=progress)
        if not quiet:
            for w in report.data.warnings:
                err.print(f"nsm: warning: {w['message']}", markup=False, highlight=False, soft_wrap=True)
        if format is Format.table and output is None and Console().is_terminal:
            Console().print(render_rich(report, top=top))
        else:
            text = {Format.json: lambda: render_json(report), Format.csv: lambda: render_csv(report),
                    Format.markdown: lambda: render_markdown(report, top=top),
                    Format.table: lambda: render_text(report, top=top)}[format]()
            _write_output(text, output, [settings.accounts, settings.usage, settings.mrr])
        return _gates(err, report, fail_under, expect_top)

    _run(err, debug, body)


def _gates(err: Console, report, fail_under: float | None, expect_top: str | None) -> int:
    best = report.candidates[0] if report.candidates else None
    if fail_under is not None and (best is None or best.score < fail_under):
        err.print(f"nsm: gate failed: best score {best.score if best else 0:.1f} < --fail-under {fail_under:g}",
                  markup=False, highlight=False, soft_wrap=True)
        return EXIT_GATE
    if expect_top is not None and (best is None or expect_top not in (best.name, best.family)):
        err.print(f"nsm: gate failed: top candidate is {best.name if best else 'none'}, expected {expect_top}",
                  markup=False, highlight=False, soft_wrap=True)
        return EXIT_GATE
    return EXIT_OK


@app.command()
def validate(
    metric: Annotated[str, typer.Argument(help="Candidate name as `nsm rank` shows it, e.g. report_shared.count.")],
    accounts: Accounts = None, usage: UsageOpt = None, mrr: Mrr = None, config: ConfigOpt = None,
    column: Column = None, window: Window = None, horizon: Horizon = None, as_of: AsOf = None,
    landmark: Landmark = None, expansion_min: ExpMin = None, segments: Segments = None,
    weights: WeightsOpt = None, seed: Seed = None, max_events: MaxEvents = None,
    windows: Annotated[str, typer.Option("--windows", help="Observation windows for the threshold scan.")] = "7d,14d,30d",
    min_concordance: Annotated[float | None, typer.Option("--min-concordance", help="Gate: exit 1 if churn C is below.")] = None,
    max_q: Annotated[float | None, typer.Option("--max-q", help="Gate: exit 1 if the churn q-value is above.")] = None,
    min_lift: Annotated[float | None, typer.Option("--min-lift", help="Gate: exit 1 if the threshold's retention lift is below.")] = None,
    require_stable: Annotated[bool, typer.Option("--require-stable", help="Gate: exit 1 unless the effect holds in every cohort and segment.")] = False,
    format: Annotated[Format, typer.Option("--format", "-f", help="table (text) or json.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")] = None,
    debug: Debug = False, quiet: Quiet = False,
) -> None:
    """Deep dive on one candidate: dose-response, aha threshold, stability, confounding, leading, PH check."""
    from nsm_cli.deepdive import Gates, validate_metric
    from nsm_cli.render import render_validation_text

    flags = dict(locals())
    err = Console(stderr=True)

    def body() -> int:
        settings = _settings_from(flags)
        scan = tuple(parse_duration(w, name="--windows") for w in windows.split(",") if w.strip())
        gates = Gates(min_concordance, max_q, min_lift, require_stable)
        with _Progress(err, quiet) as progress:
            report = validate_metric(settings, metric, windows=scan, gates=gates, progress=progress)
        text = json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n" \
            if format is Format.json else render_validation_text(report)
        _write_output(text, output, [settings.accounts, settings.usage, settings.mrr])
        if report.gate_failures:
            err.print(f"nsm: gate failed: {report.gate_failures[0]}", markup=False, highlight=False, soft_wrap=True)
            return EXIT_GATE
        return EXIT_OK

    _run(err, debug, body)


class ReportFormat(StrEnum):
    markdown = "markdown"
    html = "html"


@app.command()
def report(
    accounts: Accounts = None, usage: UsageOpt = None, mrr: Mrr = None, config: ConfigOpt = None,
    column: Column = None, window: Window = None, horizon: Horizon = None, as_of: AsOf = None,
    landmark: Landmark = None, expansion_min: ExpMin = None, segments: Segments = None,
    weights: WeightsOpt = None, seed: Seed = None, max_events: MaxEvents = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report file; charts go in a folder beside it.")] = Path("report.md"),
    format: Annotated[ReportFormat, typer.Option("--format", "-f", help="markdown (+ PNG charts) or html (one file, charts embedded).")] = ReportFormat.markdown,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Rows in the ranking table.")] = 10,
    debug: Debug = False, quiet: Quiet = False,
) -> None:
    """Write a North Star report for leadership: headline, charts, ranking, rejected metrics, method notes."""
    from nsm_cli.briefing import build_briefing
    from nsm_cli.render import render_document_html, render_document_markdown

    flags = dict(locals())
    err = Console(stderr=True)

    def body() -> int:
        settings = _settings_from(flags)
        with _Progress(err, quiet) as progress:
            doc = build_briefing(settings, top=top, progress=progress)
        inputs = [settings.accounts, settings.usage, settings.mrr]
        if format is ReportFormat.html:
            _write_output(render_document_html(doc), output, inputs)
        else:
            folder = output.parent / f"{output.stem}_files"
            for block in doc.blocks:
                if block.png:
                    _write_output(block.png, folder / block.image, inputs)
            _write_output(render_document_markdown(doc, folder.name), output, inputs)
        if not quiet:
            err.print(f"nsm: wrote {output}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_OK

    _run(err, debug, body)


@app.command()
def inspect(
    accounts: Accounts = None, usage: UsageOpt = None, mrr: Mrr = None, config: ConfigOpt = None,
    column: Column = None, window: Window = None, horizon: Horizon = None, as_of: AsOf = None,
    landmark: Landmark = None, expansion_min: ExpMin = None, segments: Segments = None,
    max_events: MaxEvents = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table (text) or json.")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")] = None,
    debug: Debug = False,
) -> None:
    """Profile and check the inputs: shapes, columns, date ranges, rates, and every problem found."""
    from nsm_cli.inspect import inspect_inputs

    flags = dict(locals())
    err = Console(stderr=True)

    def body() -> int:
        settings = _settings_from(flags)
        report = inspect_inputs(settings)
        text = json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n" \
            if format is Format.json else render_inspect_text(report)
        _write_output(text, output, [settings.accounts, settings.usage, settings.mrr])
        if report.fatal:
            err.print(f"nsm: error: {report.fatal}", markup=False, highlight=False, soft_wrap=True)
            return EXIT_INPUT
        return EXIT_OK

    _run(err, debug, body)


@app.command()
def sample(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder to write the dataset into.")] = Path("nsm_sample"),
    n_accounts: Annotated[int, typer.Option("--accounts", "-n", min=50, help="Number of accounts.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    events_per_account: Annotated[float, typer.Option("--events-per-account", min=10, help="Mean events per account (roughly).")] = 100.0,
    parquet: Annotated[bool, typer.Option("--parquet", help="Write the event log as Parquet.")] = False,
    debug: Debug = False,
) -> None:
    """Write a realistic synthetic dataset with a documented ground truth."""
    from nsm_cli.sample import write_sample

    err = Console(stderr=True)

    def body() -> int:
        try:
            truth = write_sample(output_dir, n_accounts, seed=seed, mean_events=events_per_account, parquet=parquet)
        except OSError as exc:
            raise WriteError.of(f"the sample into {output_dir}/", exc) from None
        sys.stdout.write(f"wrote {n_accounts} accounts to {output_dir}/ (seed {truth.seed}); ground truth in "
                         f"{output_dir}/ground_truth.json\n")
        return EXIT_OK

    _run(err, debug, body)


def version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"nsm {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                 help="Show the version and exit.")] = False) -> None:
    """nsm: find the usage metric that best predicts that your customers stay and grow."""


def keep_freed_memory() -> None:
    """glibc gives a freed block above its mmap threshold (dynamic, from 128 KB) back to the kernel at
    once, so the next large numpy array faults in freshly zeroed pages. With the largest threshold glibc
    allows (32 MB), a high trim threshold and a 64 MB top pad, such blocks are kept for reuse: 0.1-0.2 s
    less system CPU at 100k, the same peak memory. Only where the C library has a `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt (macOS), or no C library by name (Windows)
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


def main() -> None:
    keep_freed_memory()
    # The garbage collector skips frozen objects. Frozen here, the modules' objects (they live as long as
    # the process) are not walked by every collection of the run (~0.1 s); frozen at the end, the objects
    # numba, polars and numpy created are not walked by the collections of the interpreter's exit
    # (~0.25 s). Cyclic garbage made during the run is still collected.
    gc.freeze()
    try:
        app()
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    finally:
        gc.freeze()

"""Settings: defaults < nsm.toml < command-line flags. Frozen, validated once."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from nsm_cli.errors import UsageError

AGGREGATIONS = ("count", "active_days", "active_weeks", "users", "per_user", "sum", "days_to_first")

COLUMN_ROLES = (
    "account_id",
    "signup_date",
    "churn_date",
    "expansion_date",
    "timestamp",
    "event",
    "user_id",
    "value",
    "date",
    "mrr",
)


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    """A user-defined candidate from a `[[candidate]]` table of nsm.toml.

    Either `events` + `aggregation` (with an optional SQL `filter` over the event columns),
    or `ratio` = (numerator candidate name, denominator candidate name).
    """

    name: str
    events: tuple[str, ...] = ()
    aggregation: str = "count"
    filter: str | None = None
    ratio: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative weight of churn and expansion power in the score (normalised to sum 1)."""

    churn: float = 0.6
    expansion: float = 0.4


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything that decides an analysis. Same Settings + same inputs = same report."""

    accounts: str
    usage: str | None = None
    mrr: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    window_days: float = 30.0
    horizon_days: float = 90.0
    as_of: datetime | None = None
    landmark: datetime | None = None
    expansion_min: float = 0.10
    segments: tuple[str, ...] | None = None
    weights: Weights = Weights()
    seed: int = 0
    max_events: int = 100
    candidates: tuple[CandidateSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.window_days <= 0:
            raise UsageError(f"--window must be positive, got {self.window_days:g} days")
        if self.horizon_days <= 0:
            raise UsageError(f"--horizon must be positive, got {self.horizon_days:g} days")
        if self.expansion_min < 0:
            raise UsageError("--expansion-min must be >= 0")
        if self.max_events < 1:
            raise UsageError("--max-events must be at least 1")
        if self.weights.churn < 0 or self.weights.expansion < 0 or (
            self.weights.churn + self.weights.expansion
        ) <= 0:
            raise UsageError("--weights must be non-negative and not both zero")
        unknown = sorted(set(self.columns) - set(COLUMN_ROLES))
        if unknown:
            raise UsageError(
                f"unknown column role(s) {unknown}; known roles: {', '.join(COLUMN_ROLES)}"
            )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dwmy]?)\s*$", re.IGNORECASE)
_UNIT_DAYS = {"": 1.0, "d": 1.0, "w": 7.0, "m": 30.0, "y": 365.0}


def parse_duration(text: str | float | int, *, name: str) -> float:
    """'30d' -> 30.0, '4w' -> 28.0, '3m' -> 90.0, '1y' -> 365.0, 45 -> 45.0 (days)."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"{name}: expected a duration like 30d, 4w, 3m or 1y, got {text!r}")
    return float(match.group(1)) * _UNIT_DAYS[match.group(2).lower()]


def parse_date(text: str | date | datetime | None, *, name: str) -> datetime | None:
    """ISO date or datetime -> naive UTC datetime."""
    if text is None or isinstance(text, datetime):
        return text
    if isinstance(text, date):
        return datetime(text.year, text.month, text.day)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name}: expected an ISO date like 2025-01-31, got {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_weights(text: str) -> Weights:
    """'churn=0.7,expansion=0.3' -> Weights(0.7, 0.3)."""
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, number = part.partition("=")
        key = key.strip()
        if not sep or key not in ("churn", "expansion"):
            raise UsageError(f"--weights: expected churn=W,expansion=W, got {text!r}")
        try:
            values[key] = float(number)
        except ValueError:
            raise UsageError(f"--weights: {number!r} is not a number") from None
    return Weights(**{**dataclasses.asdict(Weights()), **values})


_TOML_KEYS = {
    "accounts", "usage", "mrr", "columns", "window", "horizon", "as_of", "landmark",
    "expansion_min", "segments", "weights", "seed", "max_events", "candidate",
}


_TOML_CONVERTERS: dict[str, tuple[str, Any]] = {
    "accounts": ("accounts", str),
    "usage": ("usage", str),
    "mrr": ("mrr", str),
    "seed": ("seed", int),
    "max_events": ("max_events", int),
    "expansion_min": ("expansion_min", float),
    "columns": ("columns", lambda v: {str(k): str(x) for k, x in v.items()}),
    "window": ("window_days", lambda v: parse_duration(v, name="window")),
    "horizon": ("horizon_days", lambda v: parse_duration(v, name="horizon")),
    "as_of": ("as_of", lambda v: parse_date(v, name="as_of")),
    "landmark": ("landmark", lambda v: parse_date(v, name="landmark")),
    "segments": ("segments", tuple),
    "weights": ("weights", lambda v: Weights(**{**dataclasses.asdict(Weights()), **v})),
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read nsm.toml into Settings keyword arguments; unknown keys are rejected."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config: {exc}") from None
    unknown = sorted(set(raw) - _TOML_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {unknown}; known: {sorted(_TOML_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "candidate":
            out["candidates"] = tuple(_candidate_spec(path, entry) for entry in value)
            continue
        name, convert = _TOML_CONVERTERS[key]
        try:
            out[name] = convert(value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{path}: {key}: {exc}") from None
    return out


def _candidate_spec(path: Path, entry: dict[str, Any]) -> CandidateSpec:
    allowed = {"name", "events", "event", "aggregation", "filter", "ratio"}
    unknown = sorted(set(entry) - allowed)
    if unknown or "name" not in entry:
        raise UsageError(
            f"{path}: [[candidate]] needs a name and only {sorted(allowed)}; got {sorted(entry)}"
        )
    events = entry.get("events", entry.get("event", ()))
    events = (events,) if isinstance(events, str) else tuple(events)
    ratio = entry.get("ratio")
    if ratio is not None and (len(ratio) != 2 or not all(isinstance(r, str) for r in ratio)):
        raise UsageError(f"{path}: candidate {entry['name']}: ratio must be two candidate names")
    aggregation = entry.get("aggregation", "count")
    if ratio is None and (not events or aggregation not in AGGREGATIONS):
        raise UsageError(
            f"{path}: candidate {entry['name']}: needs events and an aggregation among "
            f"{', '.join(AGGREGATIONS)}"
        )
    return CandidateSpec(
        name=str(entry["name"]),
        events=events,
        aggregation=aggregation,
        filter=entry.get("filter"),
        ratio=tuple(ratio) if ratio else None,
    )


def build_settings(config_path: Path | None, **flags: Any) -> Settings:
    """Merge defaults < nsm.toml (if any) < flags that were given (not None)."""
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged.update(read_toml(config_path))
    columns = {**merged.get("columns", {}), **(flags.pop("columns", None) or {})}
    merged.update({k: v for k, v in flags.items() if v is not None})
    merged["columns"] = columns
    if not merged.get("accounts"):
        raise UsageError("no accounts file: pass --accounts FILE or set accounts in nsm.toml")
    return Settings(**merged)

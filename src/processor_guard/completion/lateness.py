"""Scraper lateness: how long after its expected time a scheduled job first ran."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..dates import UTC, parse_instant
from ..errors import ConfigError

__all__ = ["DEFAULT_LATENESS_HOURS", "Lateness", "hours_late", "scraper_lateness"]

DEFAULT_LATENESS_HOURS = 4.0


@dataclass(frozen=True)
class Lateness:
    """How late a scheduled job's first run was (or is so far, when it has not run)."""

    expected_at: dt.datetime
    first_run_at: dt.datetime | None
    hours_late: float
    threshold_hours: float

    @property
    def ran(self) -> bool:
        return self.first_run_at is not None

    @property
    def alert(self) -> bool:
        """True past the threshold, whether it ran late or has not run yet."""
        return self.hours_late > self.threshold_hours


def hours_late(
    expected_at: dt.datetime, first_run_at: dt.datetime | None, *, now: dt.datetime | None = None
) -> float:
    """Hours between the expected time and the first run (or ``now`` if it has not run);
    0 when on time or early. Naive datetimes are taken as UTC."""
    expected = _instant(expected_at, "expected_at")
    if first_run_at is None:
        end = dt.datetime.now(UTC) if now is None else _instant(now, "now")
    else:
        end = _instant(first_run_at, "first_run_at")
    return max(0.0, (end - expected).total_seconds() / 3600.0)


def scraper_lateness(
    expected_at: dt.datetime,
    first_run_at: dt.datetime | None,
    *,
    threshold_hours: float = DEFAULT_LATENESS_HOURS,
    now: dt.datetime | None = None,
) -> Lateness:
    """Lateness of a scraper's first run against its expected time; alerts past the threshold."""
    if not isinstance(threshold_hours, (int, float)) or not threshold_hours >= 0:
        raise ConfigError(f"threshold_hours must be a number >= 0, got {threshold_hours!r}")
    late = hours_late(expected_at, first_run_at, now=now)
    return Lateness(
        _instant(expected_at, "expected_at"),
        None if first_run_at is None else _instant(first_run_at, "first_run_at"),
        late,
        float(threshold_hours),
    )


def _instant(value: object, argument: str) -> dt.datetime:
    # Datetimes only: the shared parser also reads ISO strings, which these functions
    # have always rejected (a bare date would silently mean midnight UTC).
    if not isinstance(value, dt.datetime):
        raise ConfigError(f"{argument} must be a datetime, got {value!r}")
    return parse_instant(value, argument=argument)

"""The one parser of game dates and of instants used across the library.

A game date is a ``datetime.date`` or a ``YYYY-MM-DD`` string (Pub/Sub messages carry
strings, backfills and tests carry dates); an instant is an aware UTC ``datetime``.
"""

from __future__ import annotations

import datetime as dt
import re

from .errors import ConfigError

__all__ = ["UTC", "date_range", "parse_game_date", "parse_instant"]

UTC = dt.timezone.utc
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_game_date(value: object, *, argument: str = "game_date") -> dt.date:
    """A ``datetime.date`` or ``YYYY-MM-DD`` string as a date; anything else is ConfigError."""
    if isinstance(value, dt.datetime):
        raise ConfigError(f"{argument} must be a date or 'YYYY-MM-DD', not a datetime: {value!r}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_RE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"{argument} must be a date or 'YYYY-MM-DD', got {value!r}")


def date_range(start: object, end: object) -> list[dt.date]:
    """Every date from ``start`` to ``end`` inclusive, validated, in ascending order."""
    first = parse_game_date(start, argument="start_date")
    last = parse_game_date(end, argument="end_date")
    if last < first:
        raise ConfigError(f"end_date {last} is before start_date {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def parse_instant(value: object, *, argument: str = "timestamp") -> dt.datetime:
    """An aware UTC datetime from a datetime or an ISO 8601 string; naive values are UTC.

    A trailing ``Z`` is accepted (Python 3.10's ``fromisoformat`` does not take it).
    Anything else is a ConfigError naming ``argument``.
    """
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"{argument} must be an ISO date-time such as 2026-02-04T11:00:00+00:00, "
                f"got {value!r}"
            ) from None
    else:
        raise ConfigError(
            f"{argument} must be a datetime or an ISO date-time string, got {value!r}"
        )
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)

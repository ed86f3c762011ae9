"""The daily health check of one game date, against the team's alert thresholds.

Thresholds (pipeline-facts.md): any duplicate key is critical; completion accuracy
(document vs data) below 95% is critical; a trigger more than 30 minutes after the
last completion is a warning (critical while it is still unpublished); a scraper's
first run more than 4 hours after its expected time is a warning (critical while it
has not run at all). A signal without data is reported as ``unknown``, never as ok.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..dates import UTC, parse_game_date
from ..tables import TABLES, TableSpec, resolve_table
from ..writes.inspect import WarehouseSource, as_source, count_rows, find_duplicates, jsonable
from .lateness import DEFAULT_LATENESS_HOURS, scraper_lateness

if TYPE_CHECKING:
    from .reconcile import ReconcileReport
    from .tracker import CompletionTracker

__all__ = [
    "CRITICAL",
    "OK",
    "UNKNOWN",
    "WARNING",
    "Check",
    "HealthReport",
    "Thresholds",
    "run_health",
]

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
_RANK = {OK: 0, UNKNOWN: 0, WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds of pipeline-facts.md."""

    max_duplicate_keys: int = 0
    min_accuracy: float = 0.95
    max_trigger_delay_minutes: float = 30.0
    max_scraper_late_hours: float = DEFAULT_LATENESS_HOURS


@dataclass(frozen=True)
class Check:
    """One signal: its name, status (ok/warning/critical/unknown), value and a short detail."""

    name: str
    status: str
    value: Any
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "value": jsonable(self.value),
            "detail": self.detail,
        }


@dataclass
class HealthReport:
    """Every check for a date; ``exit_code`` is 0 ok, 1 warning, 2 critical."""

    game_date: str
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        worst = max((_RANK[c.status] for c in self.checks), default=0)
        return {0: OK, 1: WARNING, 2: CRITICAL}[worst]

    @property
    def exit_code(self) -> int:
        return _RANK[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "game_date": self.game_date,
            "status": self.status,
            "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
        }


def run_health(
    game_date: object,
    *,
    tracker: CompletionTracker | None = None,
    warehouse: Any = None,
    tables: Sequence[TableSpec] | Mapping[str, TableSpec] | None = None,
    scraper_expected: dt.datetime | None = None,
    scraper_first_run: dt.datetime | None = None,
    thresholds: Thresholds | None = None,
    now: dt.datetime | None = None,
) -> HealthReport:
    """Check one date: duplicates per table, completion accuracy, trigger delay, lateness.

    Reads only; nothing is written or published. Without a tracker the completion
    signals are ``unknown``; without a warehouse the data signals are; without an
    expected scraper time the lateness is.
    """
    day = parse_game_date(game_date)
    limits = thresholds or Thresholds()
    moment = now or dt.datetime.now(UTC)
    report = HealthReport(day.isoformat())
    specs = _specs_to_check(tables, tracker)
    source = as_source(warehouse) if warehouse is not None else None
    recon: ReconcileReport | None = None
    if tracker is not None and source is not None:
        recon = tracker.reconcile(day, source, dry_run=True, tables=specs)

    for processor, spec in specs.items():
        report.checks.append(_duplicates_check(processor, spec, source, recon, day, limits))
    if recon is None:
        missing = "no completion store" if tracker is None else "no warehouse"
        report.checks.append(Check("completion_accuracy", UNKNOWN, None, f"{missing} given"))
    else:
        report.checks.append(_accuracy_check(recon, limits))
    if tracker is None:
        report.checks.append(Check("trigger_delay", UNKNOWN, None, "no completion store given"))
    else:
        report.checks.append(_trigger_check(tracker, day, limits, moment))
    if scraper_expected is None:
        report.checks.append(
            Check("scraper_lateness", UNKNOWN, None, "no expected scraper time given")
        )
    else:
        report.checks.append(_lateness_check(scraper_expected, scraper_first_run, limits, moment))
    return report


def _specs_to_check(
    tables: Sequence[TableSpec] | Mapping[str, TableSpec] | None,
    tracker: CompletionTracker | None,
) -> dict[str, TableSpec]:
    """The tables to check, by processor: those given, else the tracker's expected ones,
    else every known table."""
    if tables is None:
        names = tracker.expected if tracker is not None else tuple(TABLES)
        return {n: resolve_table(n) for n in names}
    if isinstance(tables, Mapping):
        return dict(tables)
    return {s.name: s for s in tables}


def _duplicates_check(
    processor: str,
    spec: TableSpec,
    source: WarehouseSource | None,
    recon: ReconcileReport | None,
    day: dt.date,
    limits: Thresholds,
) -> Check:
    """Duplicate keys and rows of one table for the date (reusing reconcile's counts)."""
    name = f"duplicates:{spec.name}"
    if source is None:
        return Check(name, UNKNOWN, None, "no warehouse given")
    if not source.warehouse.table_exists(source.table(spec)):
        return Check(name, CRITICAL, None, "table does not exist")
    found = next((t for t in recon.tables if t.processor == processor), None) if recon else None
    if found is not None:
        dup_keys, dup_rows, rows = found.duplicate_keys, found.duplicate_rows, found.rows
    else:
        dups = find_duplicates(source, spec, day)
        dup_keys, dup_rows = len(dups), sum(d.count - 1 for d in dups)
        rows = count_rows(source, spec, day)
    status = CRITICAL if dup_keys > limits.max_duplicate_keys else OK
    detail = f"{rows} rows, {dup_keys} duplicate key(s), {dup_rows} extra row(s)"
    if rows == 0 and status == OK:
        detail = "no rows for this date"
    return Check(name, status, dup_keys, detail)


def _accuracy_check(recon: ReconcileReport, limits: Thresholds) -> Check:
    """How many expected processors' document status matches the data."""
    acc = recon.accuracy
    wrong = [t.processor for t in recon.tables if t.doc_complete != t.data_present]
    status = OK if acc >= 1.0 else (WARNING if acc >= limits.min_accuracy else CRITICAL)
    detail = (
        f"document {recon.count_before}/{len(recon.tables)} complete, data "
        f"{sum(t.data_present for t in recon.tables)}/{len(recon.tables)}"
    )
    if wrong:
        detail += f"; disagree: {', '.join(wrong)}"
    if recon.stored_count is not None and recon.stored_count != recon.count_before:
        status = CRITICAL
        detail += f"; stored count {recon.stored_count} != derived {recon.count_before}"
    return Check("completion_accuracy", status, round(acc, 4), detail)


def _lateness_check(
    expected: dt.datetime, first_run: dt.datetime | None, limits: Thresholds, now: dt.datetime
) -> Check:
    """How late the scraper's first run was, or is so far."""
    late = scraper_lateness(
        expected, first_run, threshold_hours=limits.max_scraper_late_hours, now=now
    )
    status = OK if not late.alert else (WARNING if late.ran else CRITICAL)
    ran = "first run" if late.ran else "not run yet"
    detail = f"{ran}, {late.hours_late:.1f} h after expected {late.expected_at.isoformat()}"
    return Check("scraper_lateness", status, round(late.hours_late, 2), detail)


def _trigger_check(
    tracker: CompletionTracker, day: dt.date, limits: Thresholds, now: dt.datetime
) -> Check:
    state = tracker.state(day)
    limit_s = limits.max_trigger_delay_minutes * 60
    name = "trigger_delay"
    if not state.exists:
        return Check(name, UNKNOWN, None, "no completion document for this date")
    if state.triggered and not state.message_id:
        return Check(name, CRITICAL, None, "_triggered is set but nothing was published")
    since = state.last_completion_at or state.satisfied_at
    if state.triggered:
        if since is None or state.triggered_at is None:
            return Check(name, UNKNOWN, None, "triggered; completion times not recorded")
        delay = max(0.0, (state.triggered_at - since).total_seconds())
        status = WARNING if delay > limit_s else OK
        return Check(name, status, round(delay / 60, 2), f"triggered {_minutes(delay)} after")
    if not state.should_trigger:
        return Check(name, OK, None, f"not due: {state.count}/{len(state.expected)} complete")
    if since is None:
        return Check(name, CRITICAL, None, "due but not triggered; completion time unknown")
    waiting = max(0.0, (now - since).total_seconds())
    status = CRITICAL if waiting > limit_s else WARNING
    why = f": {state.publish_error}" if state.publish_error else ""
    return Check(
        name,
        status,
        round(waiting / 60, 2),
        f"due {_minutes(waiting)} ago, not published{why}",
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"

"""The daily health check of one game date, against the team's alert thresholds.

Thresholds (pipeline-facts.md): any duplicate key is critical; completion accuracy
(document vs data) below 95% is critical; a trigger more than 30 minutes after the
last completion is a warning (critical while it is still unpublished); a scraper's
first run more than 4 hours after its expected time is a warning (critical while it
has not run at all). A completion deadline, counted in hours from the end of the game
date (00:00 UTC the next day) like dbt's ``warn_after``/``error_after``, makes a date
that is still incomplete a warning, then critical, naming the missing processors.

A signal that was asked for but cannot be determined is ``unknown``, which is not ok
(exit 1); a signal nobody asked for (no scraper time given) is ``skipped``; a report
where nothing was checked is ``unknown``. Every threshold is a field of ``Thresholds``
and is written into the JSON report, with its generation time and schema version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..dates import UTC, parse_game_date
from ..errors import ConfigError
from ..tables import TABLES, TableSpec, resolve_table
from ..writes.inspect import WarehouseSource, as_source, count_rows, find_duplicates, jsonable
from .lateness import DEFAULT_LATENESS_HOURS, scraper_lateness

if TYPE_CHECKING:
    from .reconcile import ReconcileReport
    from .state import CompletionState
    from .tracker import CompletionTracker

__all__ = [
    "CRITICAL",
    "OK",
    "SCHEMA_VERSION",
    "SKIPPED",
    "UNKNOWN",
    "WARNING",
    "Check",
    "HealthReport",
    "Thresholds",
    "run_health",
]

OK, WARNING, CRITICAL, UNKNOWN, SKIPPED = "ok", "warning", "critical", "unknown", "skipped"
# Exit code per status: unknown is not ok.
_RANK = {OK: 0, SKIPPED: 0, UNKNOWN: 1, WARNING: 1, CRITICAL: 2}
#: Version of the JSON report's layout; bumped when a field changes meaning.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds of pipeline-facts.md, plus the completion deadline."""

    max_duplicate_keys: int = 0
    min_accuracy: float = 0.95
    max_trigger_delay_minutes: float = 30.0
    max_scraper_late_hours: float = DEFAULT_LATENESS_HOURS
    # Hours after the end of the game date (00:00 UTC the next day) by which the phase
    # should be complete: warning past the first, critical past the second.
    completion_warn_after_hours: float = 12.0
    completion_error_after_hours: float = 18.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"threshold {f.name} must be a number >= 0, got {value!r}")
        if self.min_accuracy > 1:
            raise ConfigError(f"threshold min_accuracy must be <= 1, got {self.min_accuracy!r}")
        if self.completion_error_after_hours < self.completion_warn_after_hours:
            raise ConfigError(
                "threshold completion_error_after_hours must be >= completion_warn_after_hours"
            )

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


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
    """Every check for a date; ``exit_code`` is 0 ok, 1 warning or unknown, 2 critical."""

    game_date: str
    checks: list[Check] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(UTC))

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        if CRITICAL in statuses:
            return CRITICAL
        if WARNING in statuses:
            return WARNING
        if UNKNOWN in statuses or not statuses - {SKIPPED}:
            return UNKNOWN
        return OK

    @property
    def exit_code(self) -> int:
        return _RANK[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": self.generated_at.isoformat(),
            "game_date": self.game_date,
            "status": self.status,
            "exit_code": self.exit_code,
            "thresholds": self.thresholds.to_dict(),
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
    """Check one date: rows and duplicates per table, completion against its deadline,
    accuracy and row counts of the document against the data, trigger delay, lateness.

    Reads only; nothing is written or published. Signals whose source is not given
    are ``skipped``; with no source at all the report is ``unknown``.
    """
    day = parse_game_date(game_date)
    limits = thresholds or Thresholds()
    moment = now or dt.datetime.now(UTC)
    report = HealthReport(day.isoformat(), thresholds=limits, generated_at=moment)
    specs = _specs_to_check(tables, tracker)
    source = as_source(warehouse) if warehouse is not None else None
    recon: ReconcileReport | None = None
    if tracker is not None and source is not None:
        # Reconcile needs every expected processor's table, checked here or not.
        known = {p: TABLES[p] for p in tracker.expected if p in TABLES}
        recon = tracker.reconcile(day, source, dry_run=True, tables={**known, **specs})

    hours_past = _hours_past_deadline(day, moment)
    for processor, spec in specs.items():
        report.checks.append(
            _duplicates_check(processor, spec, source, recon, day, limits, hours_past)
        )
    if recon is None:
        missing = "no completion store" if tracker is None else "no warehouse"
        report.checks.append(Check("completion_accuracy", SKIPPED, None, f"{missing} given"))
    else:
        report.checks.append(_accuracy_check(recon, limits))
    if tracker is None:
        for name in ("completion", "trigger_delay"):
            report.checks.append(Check(name, SKIPPED, None, "no completion store given"))
    else:
        state = tracker.state(day)
        report.checks.append(_completion_check(state, limits, hours_past))
        report.checks.append(_trigger_check(state, limits, moment))
    if scraper_expected is None:
        report.checks.append(
            Check("scraper_lateness", SKIPPED, None, "no expected scraper time given")
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
    hours_past: float,
) -> Check:
    """Duplicate keys and rows of one table for the date (reusing reconcile's counts); a
    table with no rows past the completion deadline is critical."""
    name = f"duplicates:{spec.name}"
    if source is None:
        return Check(name, SKIPPED, None, "no warehouse given")
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
        status = _deadline_status(hours_past, limits)
        detail = f"no rows for this date, {_deadline_text(hours_past, limits)}"
    return Check(name, status, dup_keys, detail)


def _hours_past_deadline(day: dt.date, now: dt.datetime) -> float:
    """Hours since the end of the game date (00:00 UTC the next day); negative before."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=UTC)
    return (now - end).total_seconds() / 3600


def _deadline_status(hours_past: float, limits: Thresholds) -> str:
    if hours_past > limits.completion_error_after_hours:
        return CRITICAL
    if hours_past > limits.completion_warn_after_hours:
        return WARNING
    return OK


def _deadline_text(hours_past: float, limits: Thresholds) -> str:
    status = _deadline_status(hours_past, limits)
    if status == OK:
        left = limits.completion_warn_after_hours - hours_past
        return f"not due for {left:.1f} h (warn_after {limits.completion_warn_after_hours:g} h)"
    limit = (
        limits.completion_error_after_hours
        if status == CRITICAL
        else limits.completion_warn_after_hours
    )
    which = "error_after" if status == CRITICAL else "warn_after"
    return f"{hours_past:.1f} h after the date ended ({which} {limit:g} h)"


def _completion_check(state: CompletionState, limits: Thresholds, hours_past: float) -> Check:
    """Whether every expected processor covered the date, against the deadline."""
    name = "completion"
    value = f"{state.count}/{len(state.expected)}"
    if state.should_trigger:
        why = state.trigger_reason or (f"mode {state.mode}" if state.mode else "")
        return Check(name, OK, value, f"{value} complete" + (f"; trigger: {why}" if why else ""))
    status = _deadline_status(hours_past, limits)
    missing = list(state.missing)
    parts = [f"missing: {', '.join(missing)}"] if missing else []
    for processor, units in state.uncovered.items():
        parts.append(f"{processor} lacks {len(units)} of {len(state.required or ())} units")
    head = f"{value} complete" if state.exists else "no completion document"
    return Check(
        name, status, value, f"{head}, {_deadline_text(hours_past, limits)}; " + "; ".join(parts)
    )


def _accuracy_check(recon: ReconcileReport, limits: Thresholds) -> Check:
    """How many expected processors' document status matches the data."""
    acc = recon.accuracy
    wrong = [t.processor for t in recon.tables if t.doc_complete != t.data_present]
    status = OK if acc >= 1.0 else (WARNING if acc >= limits.min_accuracy else CRITICAL)
    miscounted = [t for t in recon.tables if not t.count_matches]
    detail = (
        f"document {recon.count_before}/{len(recon.tables)} complete, data "
        f"{sum(t.data_present for t in recon.tables)}/{len(recon.tables)}"
    )
    if wrong:
        detail += f"; disagree: {', '.join(wrong)}"
    if recon.stored_count is not None and recon.stored_count != recon.count_before:
        status = CRITICAL
        detail += f"; stored count {recon.stored_count} != derived {recon.count_before}"
    if miscounted:
        status = CRITICAL
        detail += "; record_count differs from the table: " + ", ".join(
            f"{t.processor} {t.recorded_rows} recorded vs {t.rows} rows" for t in miscounted
        )
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


def _trigger_check(state: CompletionState, limits: Thresholds, now: dt.datetime) -> Check:
    limit_s = limits.max_trigger_delay_minutes * 60
    name = "trigger_delay"
    if not state.exists:
        return Check(name, SKIPPED, None, "no completion document (see completion)")
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
        return Check(name, SKIPPED, None, "not due: the date is incomplete (see completion)")
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

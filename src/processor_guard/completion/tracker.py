"""Completion tracking that cannot drift, an exactly-once trigger outbox, reconciliation
and scraper lateness.

One Firestore document per phase and game date, ``{phase}_completion/{YYYY-MM-DD}``:
one field per processor (a map) plus metadata fields prefixed ``_``. The completed
count is always derived from the entries of *expected* processors; it is stored only
so people can read it.

Why optimistic writes rather than Firestore transactions: a server-client transaction
that reads then writes one document takes a pessimistic lock, and two of them on the
same document wait for the lock timeout (about 2 s in the emulator) before one is
aborted; a burst of completion messages then takes minutes. Every write here instead
reads the document, computes the new fields, and writes them in a single request
guarded by the document's ``update_time`` (``create()`` when it does not exist yet).
Each attempt is atomic, nobody waits on a lock, and a concurrent change makes the
write fail its precondition, so the attempt is recomputed from a fresh read after a
jittered backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .._docapi import delete_field, server_timestamp
from ..dates import UTC, parse_game_date, parse_instant
from ..errors import ConfigError, GuardError, StoreUnavailable
from ..leases import default_owner
from ..tables import TABLES, TableSpec
from ..writes.inspect import DuplicateKey, count_rows, find_duplicates

__all__ = [
    "DEFAULT_LATENESS_HOURS",
    "CompletionState",
    "CompletionTracker",
    "Lateness",
    "PublishFn",
    "ReconcileReport",
    "TableCheck",
    "TriggerRule",
    "hours_late",
    "scraper_lateness",
]

log = logging.getLogger("processor_guard.completion")

DEFAULT_LATENESS_HOURS = 4.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PHASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class PublishFn(Protocol):
    """Publishes the next phase's trigger and returns the transport's message id."""

    def __call__(self, game_date: str, state: CompletionState, /) -> str: ...


# --------------------------------------------------------------------------- rule and state


@dataclass(frozen=True)
class TriggerRule:
    """When to trigger: every expected processor, or the critical ones plus a fraction
    (rounded up) of the rest."""

    critical: tuple[str, ...] | None = None
    fraction: float = 1.0

    def required_others(self, expected: Sequence[str]) -> int:
        """How many non-critical processors must be complete."""
        if self.critical is None:
            return len(expected)
        rest = [p for p in expected if p not in self.critical]
        return math.ceil(self.fraction * len(rest) - 1e-9)

    def satisfied(self, expected: Sequence[str], completed: Iterable[str]) -> bool:
        """True when ``completed`` meets the rule for ``expected``."""
        done = set(completed)
        if self.critical is None:
            return all(p in done for p in expected)
        if not all(p in done for p in self.critical):
            return False
        rest_done = sum(1 for p in expected if p not in self.critical and p in done)
        return rest_done >= self.required_others(expected)


@dataclass(frozen=True)
class CompletionState:
    """What one completion document says, with the count derived from expected entries."""

    phase: str
    game_date: str
    expected: tuple[str, ...]
    completed: tuple[str, ...]
    unexpected: tuple[str, ...]
    stored_count: int | None
    should_trigger: bool
    trigger_pending: bool
    triggered: bool
    triggered_at: dt.datetime | None = None
    message_id: str | None = None
    satisfied_at: dt.datetime | None = None
    last_completion_at: dt.datetime | None = None
    duplicate: bool = False
    publish_error: str | None = None
    exists: bool = True
    entries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def missing(self) -> tuple[str, ...]:
        """Expected processors without a successful entry."""
        return tuple(p for p in self.expected if p not in self.completed)

    @property
    def count(self) -> int:
        """Completed expected processors (derived, never the stored number)."""
        return len(self.completed)

    @property
    def dedup_id(self) -> str:
        """Stable id of this phase and date's trigger; subscribers drop repeats of it."""
        return f"{self.phase}/{self.game_date}"

    @property
    def trigger_delay(self) -> float | None:
        """Seconds from the rule being met to the trigger being published, when both known."""
        if self.satisfied_at is None or self.triggered_at is None:
            return None
        return (self.triggered_at - self.satisfied_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (datetimes as ISO strings)."""
        return {
            "phase": self.phase,
            "game_date": self.game_date,
            "dedup_id": self.dedup_id,
            "exists": self.exists,
            "expected": list(self.expected),
            "completed": list(self.completed),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "count": self.count,
            "stored_count": self.stored_count,
            "should_trigger": self.should_trigger,
            "trigger_pending": self.trigger_pending,
            "triggered": self.triggered,
            "triggered_at": _iso(self.triggered_at),
            "message_id": self.message_id,
            "satisfied_at": _iso(self.satisfied_at),
            "last_completion_at": _iso(self.last_completion_at),
            "duplicate": self.duplicate,
            "publish_error": self.publish_error,
        }


@dataclass(frozen=True)
class TableCheck:
    """One expected processor's table in the warehouse for the date."""

    processor: str
    table: str
    rows: int
    duplicate_keys: int
    duplicate_rows: int
    doc_complete: bool

    @property
    def data_present(self) -> bool:
        return self.rows > 0

    @property
    def healthy(self) -> bool:
        """Rows exist and no key appears twice (rows > 0 alone is not enough)."""
        return self.rows > 0 and self.duplicate_keys == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "processor": self.processor,
            "table": self.table,
            "rows": self.rows,
            "duplicate_keys": self.duplicate_keys,
            "duplicate_rows": self.duplicate_rows,
            "doc_complete": self.doc_complete,
            "healthy": self.healthy,
        }


@dataclass
class ReconcileReport:
    """What reconcile found wrong with a date and what it changed (or would change)."""

    phase: str
    game_date: str
    dry_run: bool
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    stored_count: int | None = None
    count_before: int = 0
    count_after: int = 0
    triggered_before: bool = False
    triggered_after: bool = False
    message_id: str | None = None
    publish_error: str | None = None
    state: CompletionState | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was wrong."""
        return not self.problems

    @property
    def accuracy(self) -> float:
        """Share of expected processors whose document status matches the data (0..1)."""
        if not self.tables:
            return 1.0
        agree = sum(1 for t in self.tables if t.doc_complete == t.data_present)
        return agree / len(self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "game_date": self.game_date,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "accuracy": self.accuracy,
            "problems": list(self.problems),
            "changes": list(self.changes),
            "stored_count": self.stored_count,
            "count_before": self.count_before,
            "count_after": self.count_after,
            "triggered_before": self.triggered_before,
            "triggered_after": self.triggered_after,
            "message_id": self.message_id,
            "publish_error": self.publish_error,
            "tables": [t.to_dict() for t in self.tables],
        }


# --------------------------------------------------------------------------- lateness


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
    expected = parse_instant(expected_at, argument="expected_at")
    if first_run_at is None:
        end = dt.datetime.now(UTC) if now is None else parse_instant(now, argument="now")
    else:
        end = parse_instant(first_run_at, argument="first_run_at")
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
        parse_instant(expected_at, argument="expected_at"),
        None if first_run_at is None else parse_instant(first_run_at, argument="first_run_at"),
        late,
        float(threshold_hours),
    )


# --------------------------------------------------------------------------- helpers


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{argument} must match [A-Za-z0-9][A-Za-z0-9_-]* (names starting with '_' are "
            f"reserved for metadata), got {name!r}"
        )
    return name


def _entries(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _as_dt(value: Any) -> dt.datetime | None:
    return value if isinstance(value, dt.datetime) else None


@dataclass
class _Plan:
    """What an optimistic mutation decided: fields to write (None: write nothing)."""

    updates: dict[str, Any] | None
    result: Any = None


# --------------------------------------------------------------------------- tracker


class CompletionTracker:
    """Records processor completions for a phase and triggers the next phase exactly once.

    ``publish(game_date, state) -> message id`` sends the trigger. It is called at most
    once per claim; a claim is taken with a conditional write, so two callers never
    publish at the same time. Transport delivery is at-least-once: if this process
    dies between a successful publish and marking the document, the claim expires
    after ``claim_ttl`` seconds and the next caller publishes again (at most one
    duplicate per crash). The published ``state.dedup_id`` (``phase/date``) is stable,
    so a subscriber can drop the repeat.

    The trigger rule is every expected processor by default; with ``critical`` it is
    all critical processors plus ``fraction`` (rounded up) of the others.
    """

    def __init__(
        self,
        client: Any,
        phase: str,
        expected: Sequence[str],
        publish: PublishFn | Callable[[str, CompletionState], str] | None = None,
        *,
        collection: str | None = None,
        critical: Sequence[str] | None = None,
        fraction: float = 1.0,
        success_statuses: Sequence[str] = ("success",),
        claim_ttl: float = 60.0,
        owner: str | None = None,
        max_attempts: int = 200,
        rpc_timeout: float = 30.0,
        max_execution_ids: int = 500,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(phase, str) or not _PHASE_RE.match(phase):
            raise ConfigError(f"phase must match [A-Za-z0-9][A-Za-z0-9_-]*, got {phase!r}")
        if isinstance(expected, str) or not expected:
            raise ConfigError(f"expected must be a non-empty list of processor names: {expected!r}")
        names = tuple(_check_name(p, "expected processor") for p in expected)
        if len(set(names)) != len(names):
            raise ConfigError(f"expected lists a processor twice: {list(names)!r}")
        crit: tuple[str, ...] | None = None
        if critical is not None:
            crit = tuple(critical)
            unknown = [c for c in crit if c not in names]
            if unknown:
                raise ConfigError(f"critical processors {unknown!r} are not in expected")
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"fraction must be between 0 and 1, got {fraction!r}")
        if crit is None and fraction != 1.0:
            raise ConfigError("fraction applies only together with critical processors")
        if publish is not None and not callable(publish):
            raise ConfigError(f"publish must be callable, got {publish!r}")
        if not claim_ttl > 0:
            raise ConfigError(f"claim_ttl must be > 0 seconds, got {claim_ttl!r}")
        coll = collection if collection is not None else f"{phase}_completion"
        if not isinstance(coll, str) or not coll or "/" in coll:
            raise ConfigError(f"collection must be a non-empty name without '/': {coll!r}")
        self.client = client
        self.phase = phase
        self.expected = names
        self.publish = publish
        self.collection = coll
        self.rule = TriggerRule(crit, float(fraction))
        self.success_statuses = frozenset(success_statuses)
        self.claim_ttl = float(claim_ttl)
        self.owner = owner or default_owner()
        self.max_attempts = max_attempts
        self.rpc_timeout = rpc_timeout
        self.max_execution_ids = max_execution_ids
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"<CompletionTracker {self.collection} expected={len(self.expected)}>"

    # ---------------------------------------------------------------- public

    def doc_ref(self, game_date: dt.date | str) -> Any:
        """The Firestore document reference of ``game_date``."""
        day = parse_game_date(game_date).isoformat()
        return self.client.collection(self.collection).document(day)

    def state(self, game_date: dt.date | str) -> CompletionState:
        """The current state of ``game_date`` (an empty state when there is no document)."""
        day = parse_game_date(game_date).isoformat()
        snap = self._get(self.doc_ref(day))
        return self._state(day, snap.to_dict() if snap.exists else {}, exists=snap.exists)

    def record(
        self,
        game_date: dt.date | str,
        processor: str,
        *,
        execution_id: str,
        status: str = "success",
        record_count: int | None = None,
    ) -> CompletionState:
        """Store one processor's completion and publish the trigger if it is due.

        Idempotent per ``(processor, execution_id)``: a duplicate message writes nothing
        but still publishes a trigger left pending by an earlier failure. Names outside
        ``expected`` are stored and logged but never counted. A processor counts once
        any of its executions reported a success status (so message order does not
        matter); the last ``max_execution_ids`` execution ids per processor are kept
        for the duplicate check.

        The entry, the derived count and the outbox flag are written in one atomic
        compare-and-set on the document's update time, retried from a fresh read when
        another writer got in first, instead of a read-write transaction (which makes
        concurrent writers of one document wait on a lock; see the module docstring).

        When publishing fails the returned state has ``trigger_pending`` and
        ``publish_error`` set; a Pub/Sub push handler should then answer with an error
        so the message is redelivered (and the redelivery publishes).
        """
        day = parse_game_date(game_date).isoformat()
        name = _check_name(processor, "processor")
        if not isinstance(execution_id, str) or not execution_id.strip():
            raise ConfigError(f"execution_id must be a non-empty string, got {execution_id!r}")
        if not isinstance(status, str) or not status:
            raise ConfigError(f"status must be a non-empty string, got {status!r}")
        if record_count is not None and (
            isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0
        ):
            raise ConfigError(f"record_count must be an int >= 0 or None, got {record_count!r}")

        def mutate(data: dict[str, Any], exists: bool, _read_time: Any) -> _Plan:
            entry = data.get(name)
            entry = dict(entry) if isinstance(entry, dict) else {}
            seen = list(entry.get("executions") or [])
            duplicate = execution_id in seen
            fields: dict[str, Any] = {}
            if not duplicate:
                had_success = self._succeeded(entry) if entry else False
                succeeded = had_success or status in self.success_statuses
                first_success = succeeded and not had_success
                seen.append(execution_id)
                new_entry: dict[str, Any] = {
                    **entry,
                    "status": status,
                    "execution_id": execution_id,
                    "record_count": record_count,
                    "recorded_at": _server_timestamp(),
                    "succeeded": succeeded,
                    "executions": seen[-self.max_execution_ids :],
                }
                if first_success:
                    new_entry["first_success_at"] = _server_timestamp()
                    if name in self.expected:
                        fields["_last_completion_at"] = _server_timestamp()
                fields[name] = new_entry
                fields["_executions_recorded"] = int(data.get("_executions_recorded") or 0) + 1
                if name not in self.expected and name not in (data.get("_unexpected") or []):
                    log.warning(
                        "completion %s/%s: unexpected processor %r stored, not counted",
                        self.collection,
                        day,
                        name,
                    )
            merged = {**data, **fields}
            fields.update(self._derived_fields(day, data, merged, exists))
            if not fields:
                return _Plan(None, duplicate)
            return _Plan(fields, duplicate)

        plan, data, _ = self._optimistic(day, mutate)
        state = self._state(day, data, duplicate=bool(plan.result))
        if state.trigger_pending and not state.triggered:
            state = replace(self._publish_pending(day), duplicate=state.duplicate)
        return state

    def publish_pending(self, game_date: dt.date | str) -> CompletionState:
        """Publish a trigger left pending (by a failed publish or a crash); no-op otherwise."""
        return self._publish_pending(parse_game_date(game_date).isoformat())

    def reconcile(
        self,
        game_date: dt.date | str,
        warehouse: Any,
        *,
        dry_run: bool = True,
        tables: Mapping[str, TableSpec] | None = None,
    ) -> ReconcileReport:
        """Compare the document with the warehouse and (unless ``dry_run``) repair it.

        For each expected processor it counts the date's rows and duplicate keys. An
        expected processor whose rows exist without duplicates but has no successful
        entry gets one (``source: reconcile``); the count is recomputed from entries; a
        trigger that is due but was never published (including ``_triggered`` set
        without a message id, as a hand repair does) is published for real through
        ``publish``. ``_triggered`` is never set without a publish. Duplicates and
        entries without data are reported, not hidden. A dry run writes and publishes
        nothing and lists what it would change.
        """

        day = parse_game_date(game_date).isoformat()
        specs = self._specs(tables)
        snap = self._get(self.doc_ref(day))
        data = snap.to_dict() if snap.exists else {}
        before = self._state(day, data, exists=snap.exists)
        report = ReconcileReport(
            self.phase,
            day,
            dry_run,
            stored_count=before.stored_count,
            count_before=before.count,
            triggered_before=before.triggered,
        )
        backed: list[tuple[str, int]] = []
        for processor in self.expected:
            spec = specs[processor]
            rows = count_rows(warehouse, spec, day)
            dups: list[DuplicateKey] = find_duplicates(warehouse, spec, day)
            dup_rows = sum(d.count - 1 for d in dups)
            done = processor in before.completed
            report.tables.append(TableCheck(processor, spec.name, rows, len(dups), dup_rows, done))
            if dups:
                report.problems.append(
                    f"{spec.name}: {len(dups)} duplicate key(s), {dup_rows} extra row(s)"
                )
            if rows > 0 and not done:
                if dups:
                    report.problems.append(
                        f"{processor}: data present but not recorded; not marked complete "
                        "while its table has duplicates"
                    )
                else:
                    report.problems.append(
                        f"{processor}: data present ({rows} rows) but not recorded"
                    )
                    backed.append((processor, rows))
            elif rows == 0 and done:
                report.problems.append(f"{processor}: recorded complete but the table has no rows")
        if before.stored_count is not None and before.stored_count != before.count:
            report.problems.append(
                f"stored _completed_count {before.stored_count} != {before.count} derived "
                "from expected entries"
            )
        unexpected_counted = before.unexpected and before.stored_count is not None
        if unexpected_counted and before.stored_count != before.count:
            report.problems.append(f"unexpected entries present: {list(before.unexpected)}")
        completed_after = set(before.completed) | {p for p, _ in backed}
        due = self.rule.satisfied(self.expected, completed_after)
        hidden = before.triggered and not before.message_id
        if hidden:
            report.problems.append("_triggered is set but no trigger message id: never published")
            if not due:
                report.problems.append("_triggered is set although the trigger rule is not met")
        elif due and not before.triggered:
            report.problems.append(
                "trigger pending (publish failed or crashed)"
                if before.trigger_pending
                else "trigger due but never published"
            )

        if dry_run:
            for processor, rows in backed:
                report.changes.append(f"would record {processor} complete from data ({rows} rows)")
            if before.stored_count != len(completed_after) and (snap.exists or backed):
                report.changes.append(
                    f"would set _completed_count {before.stored_count} -> {len(completed_after)}"
                )
            if hidden:
                report.changes.append("would clear _triggered, which was set without a publish")
            if due and (hidden or not before.triggered):
                report.changes.append("would publish the trigger")
            report.count_after = len(completed_after)
            report.triggered_after = before.triggered
            report.state = before
            return report

        run_id = f"reconcile-{uuid.uuid4().hex[:12]}"

        def mutate(cur: dict[str, Any], exists: bool, _read_time: Any) -> _Plan:
            fields: dict[str, Any] = {}
            state = self._state(day, cur, exists=exists)
            for processor, rows in backed:
                if processor in state.completed:
                    continue
                entry = (
                    dict(cur.get(processor) or {}) if isinstance(cur.get(processor), dict) else {}
                )
                seen = list(entry.get("executions") or [])
                seen.append(run_id)
                fields[processor] = {
                    **entry,
                    "status": "success",
                    "execution_id": run_id,
                    "record_count": rows,
                    "recorded_at": _server_timestamp(),
                    "first_success_at": _server_timestamp(),
                    "succeeded": True,
                    "source": "reconcile",
                    "executions": seen[-self.max_execution_ids :],
                }
                fields["_last_completion_at"] = _server_timestamp()
            if state.triggered and not state.message_id:
                # A hand repair set _triggered without publishing: clear it, so the
                # outbox below publishes for real once the rule is met.
                fields["_triggered"] = False
                fields["_trigger_pending"] = False
            merged = {**cur, **fields}
            fields.update(self._derived_fields(day, cur, merged, exists, reason="reconcile"))
            return _Plan(fields or None)

        plan, data, _ = self._optimistic(day, mutate)
        if plan.updates:
            for processor, rows in backed:
                report.changes.append(f"recorded {processor} complete from data ({rows} rows)")
            if before.stored_count != self._state(day, data).count:
                report.changes.append(
                    f"set _completed_count {before.stored_count} -> {self._state(day, data).count}"
                )
            if hidden:
                report.changes.append("cleared _triggered, which was set without a publish")
        state = self._state(day, data)
        if state.trigger_pending and not state.triggered:
            state = self._publish_pending(day)
            if state.triggered:
                report.changes.append(f"published the trigger (message id {state.message_id})")
            else:
                report.publish_error = state.publish_error or "trigger is claimed by another caller"
                report.problems.append(f"trigger still pending: {report.publish_error}")
        report.count_after = state.count
        report.triggered_after = state.triggered
        report.message_id = state.message_id
        report.state = state
        return report

    # ---------------------------------------------------------------- internals

    def _specs(self, tables: Mapping[str, TableSpec] | None) -> dict[str, TableSpec]:
        source: Mapping[str, TableSpec] = TABLES if tables is None else tables
        missing = [p for p in self.expected if p not in source]
        if missing:
            raise ConfigError(
                f"no table spec for expected processor(s) {missing!r}; pass tables= "
                f"(known tables: {sorted(source)})"
            )
        return {p: source[p] for p in self.expected}

    def _completed(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(p for p in self.expected if self._succeeded(data.get(p)))

    def _succeeded(self, entry: Any) -> bool:
        if entry is True:
            return True
        if not isinstance(entry, Mapping):
            return False
        return bool(entry.get("succeeded")) or entry.get("status") in self.success_statuses

    def _derived_fields(
        self,
        day: str,
        before: Mapping[str, Any],
        merged: Mapping[str, Any],
        exists: bool,
        reason: str = "rule satisfied",
    ) -> dict[str, Any]:
        """Metadata that follows from the entries: count, lists and the outbox flag."""
        completed = self._completed(merged)
        unexpected = sorted(k for k in _entries(merged) if k not in self.expected)
        want: dict[str, Any] = {
            "_completed_count": len(completed),
            "_completed": list(completed),
            "_expected": list(self.expected),
            "_unexpected": unexpected,
        }
        fields = {k: v for k, v in want.items() if not exists or before.get(k) != v}
        if not exists:
            fields["_phase"] = self.phase
            fields["_game_date"] = day
        for flag in ("_triggered", "_trigger_pending"):
            if not isinstance(merged.get(flag), bool):
                fields[flag] = bool(merged.get(flag))
        triggered = bool(merged.get("_triggered"))
        pending = bool(merged.get("_trigger_pending"))
        if self.rule.satisfied(self.expected, completed) and not triggered and not pending:
            fields["_trigger_pending"] = True
            fields["_trigger_id"] = f"{self.phase}/{day}"
            fields["_satisfied_at"] = _server_timestamp()
            fields["_trigger_reason"] = reason
        if fields:
            fields["_updated_at"] = _server_timestamp()
        return fields

    def _state(
        self,
        day: str,
        data: Mapping[str, Any],
        *,
        duplicate: bool = False,
        publish_error: str | None = None,
        exists: bool = True,
    ) -> CompletionState:
        completed = self._completed(data)
        stored = data.get("_completed_count")
        return CompletionState(
            phase=self.phase,
            game_date=day,
            expected=self.expected,
            completed=completed,
            unexpected=tuple(sorted(k for k in _entries(data) if k not in self.expected)),
            stored_count=stored if isinstance(stored, int) else None,
            should_trigger=self.rule.satisfied(self.expected, completed),
            trigger_pending=bool(data.get("_trigger_pending")),
            triggered=bool(data.get("_triggered")),
            triggered_at=_as_dt(data.get("_triggered_at")),
            message_id=data.get("_trigger_message_id") or None,
            satisfied_at=_as_dt(data.get("_satisfied_at")),
            last_completion_at=_as_dt(data.get("_last_completion_at")),
            duplicate=duplicate,
            publish_error=publish_error or data.get("_trigger_last_error") or None,
            exists=exists and bool(data),
            entries={k: v for k, v in _entries(data).items() if isinstance(v, Mapping)},
        )

    def _publish_pending(self, day: str) -> CompletionState:
        """Claim the pending trigger, publish it, mark it; see the class docstring."""
        token = uuid.uuid4().hex

        def claim(data: dict[str, Any], exists: bool, read_time: Any) -> _Plan:
            if not data.get("_trigger_pending") or data.get("_triggered"):
                return _Plan(None, False)
            current = data.get("_trigger_claim")
            if isinstance(current, Mapping) and not self._claim_expired(current, read_time):
                return _Plan(None, False)
            if self.publish is None:
                return _Plan(None, False)
            return _Plan(
                {
                    "_trigger_claim": {
                        "owner": self.owner,
                        "token": token,
                        "claimed_at": _server_timestamp(),
                        "ttl": self.claim_ttl,
                    },
                    "_trigger_attempts": int(data.get("_trigger_attempts") or 0) + 1,
                },
                True,
            )

        plan, data, _ = self._optimistic(day, claim)
        if not plan.result:
            error = None
            if self.publish is None and data.get("_trigger_pending") and not data.get("_triggered"):
                error = "no publish callable configured"
            return self._state(day, data, publish_error=error)

        state = self._state(day, data)
        try:
            assert self.publish is not None
            message_id = self.publish(day, state)
            if not isinstance(message_id, str) or not message_id:
                raise GuardError(f"publish returned {message_id!r}, expected a message id string")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "completion %s/%s: publishing the trigger failed (%s); it stays pending",
                self.collection,
                day,
                error,
            )

            def release(cur: dict[str, Any], exists: bool, _read_time: Any) -> _Plan:
                mine = (cur.get("_trigger_claim") or {}).get("token") == token
                if not mine:
                    return _Plan(None)
                return _Plan({"_trigger_claim": _delete_field(), "_trigger_last_error": error})

            _, data, _ = self._optimistic(day, release)
            return self._state(day, data, publish_error=error)

        def mark(cur: dict[str, Any], exists: bool, _read_time: Any) -> _Plan:
            if cur.get("_triggered"):
                log.warning(
                    "completion %s/%s: trigger already marked by another publisher; message %s "
                    "is a duplicate (dedup id %s)",
                    self.collection,
                    day,
                    message_id,
                    state.dedup_id,
                )
                return _Plan(None)
            return _Plan(
                {
                    "_triggered": True,
                    "_triggered_at": _server_timestamp(),
                    "_trigger_message_id": message_id,
                    "_trigger_pending": False,
                    "_trigger_claim": _delete_field(),
                    "_trigger_last_error": _delete_field(),
                    "_updated_at": _server_timestamp(),
                }
            )

        _, data, _ = self._optimistic(day, mark)
        log.info(
            "completion %s/%s: trigger published (message %s)", self.collection, day, message_id
        )
        return self._state(day, data)

    def _claim_expired(self, claim: Mapping[str, Any], read_time: Any) -> bool:
        claimed_at = _as_dt(claim.get("claimed_at"))
        if claimed_at is None or read_time is None:
            return True
        ttl = claim.get("ttl")
        ttl = float(ttl) if isinstance(ttl, (int, float)) else self.claim_ttl
        return bool((read_time - claimed_at).total_seconds() > ttl)

    def _get(self, ref: Any) -> Any:
        from ..stores.firestore_cas import read_doc

        return read_doc(ref, key=ref.path, timeout=self.rpc_timeout)

    def _optimistic(
        self, day: str, mutate: Callable[[dict[str, Any], bool, Any], _Plan]
    ) -> tuple[_Plan, dict[str, Any], Any]:
        """One atomic compare-and-set of the day's document (see the module docstring).

        ``mutate(data, exists, read_time)`` returns the fields to change (DELETE_FIELD
        removes one) or None; it may run once per attempt. Returns the last attempt's
        plan, the document as it is after this call (server timestamps replaced by the
        write's update time) and the read's server time.
        """
        from ..stores.firestore_cas import compare_and_set

        ref = self.doc_ref(day)
        plans: list[_Plan] = []

        def decide(doc: dict[str, Any] | None, read_time: Any) -> dict[str, Any] | None:
            data = doc or {}
            plan = mutate(data, doc is not None, read_time)
            plans[:] = [plan]
            if plan.updates is None:
                return None
            new = dict(data)
            for k, v in plan.updates.items():
                if _is_delete(v):
                    new.pop(k, None)
                else:
                    new[k] = v
            return new

        outcome = compare_and_set(
            self.client,
            ref,
            decide,
            key=ref.path,
            max_attempts=self.max_attempts,
            base_delay=0.005,
            max_delay=0.25,
            sleep=self._sleep,
            timeout=self.rpc_timeout,
        )
        if outcome.gave_up:
            raise StoreUnavailable(
                f"completion document {ref.path}: lost the race {outcome.attempts} times in a "
                "row to concurrent writers",
                key=ref.path,
            )
        after = outcome.after or {}
        if outcome.written:
            after = _resolve_sentinels(after, outcome.update_time)
        return plans[-1], after, outcome.read_time


def _server_timestamp() -> Any:
    return server_timestamp()


def _delete_field() -> Any:
    return delete_field()


def _is_delete(value: Any) -> bool:
    return value is _delete_field()


def _resolve_sentinels(value: Any, when: Any) -> Any:
    if value is server_timestamp():
        return when
    if isinstance(value, dict):
        return {k: _resolve_sentinels(v, when) for k, v in value.items()}
    return value

"""Reconciliation: compare a date's completion document with the warehouse and repair it.

The steps, in order: check each expected processor's table (rows, duplicate keys), check
the document's stored count and trigger flags, then either describe the repairs (dry
run) or write them in one compare-and-set and publish a trigger that is due.

What the data proves: rows in a table prove a run wrote them, not that it covered the
date (the incident's first batch wrote 70 of 348 rows). So a processor is recorded
complete from data only when it has no entry at all (its message was lost), its table
has rows without duplicate keys, and the date declares no required units. A failed
entry, a partial coverage or a date with requirements is reported, never turned into
success. Times stay real: a repair never moves ``_last_completion_at`` or
``_satisfied_at`` to the reconcile time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._docapi import server_timestamp
from ..errors import ConfigError
from ..tables import TABLES, TableSpec
from ..writes.inspect import count_rows, find_duplicates
from .documents import DocumentCollection, Plan
from .state import CompletionState, PhaseRules

__all__ = ["ReconcileReport", "TableCheck", "reconcile_date"]


@dataclass(frozen=True)
class TableCheck:
    """One expected processor's table in the warehouse for the date."""

    processor: str
    table: str
    rows: int
    duplicate_keys: int
    duplicate_rows: int
    doc_complete: bool
    # The row count the processor reported with its entry, when it did.
    recorded_rows: int | None = None

    @property
    def count_matches(self) -> bool:
        """False when the processor reported a row count the table does not hold."""
        return self.recorded_rows is None or self.recorded_rows == self.rows

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
            "recorded_rows": self.recorded_rows,
            "count_matches": self.count_matches,
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

    # Neither a document nor any row for the date: nothing to reconcile, nothing written.
    empty: bool = False

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
            "empty": self.empty,
            "tables": [t.to_dict() for t in self.tables],
        }


@dataclass(frozen=True)
class _Findings:
    """What the checks concluded about the document before any repair."""

    # (processor, rows): expected processors whose clean rows exist but have no entry.
    backed: list[tuple[str, int]]
    # Completed processors once the backed ones are recorded.
    completed_after: frozenset[str]
    # The trigger rule is met once the backed processors are recorded.
    due: bool
    # _triggered is set without a message id: a hand repair that never published.
    hidden: bool


def reconcile_date(
    day: str,
    warehouse: Any,
    *,
    dry_run: bool,
    tables: Mapping[str, TableSpec] | None,
    rules: PhaseRules,
    documents: DocumentCollection,
    publish_pending: Callable[[str], CompletionState],
    max_execution_ids: int,
    force: bool = False,
) -> ReconcileReport:
    """Reconcile ``day`` (``YYYY-MM-DD``); see ``CompletionTracker.reconcile``.

    ``publish_pending(day)`` publishes a trigger the repair left pending; the last
    ``max_execution_ids`` execution ids are kept per entry, as ``record`` does.
    ``force`` lets the given expected processors replace different stored ones.
    """
    specs = _table_specs(rules.expected, tables)
    data, exists = documents.read(day)
    _check_expected(data, rules.expected, force=force)
    before = rules.state(day, data, exists=exists)
    report = ReconcileReport(
        rules.phase,
        day,
        dry_run,
        stored_count=before.stored_count,
        count_before=before.count,
        triggered_before=before.triggered,
    )
    backed = _check_tables(report, before, warehouse, specs)
    _check_count(report, before)
    completed_after = frozenset(before.completed) | {p for p, _ in backed}
    findings = _Findings(
        backed=backed,
        completed_after=completed_after,
        due=rules.rule_for(data)[1].satisfied(rules.expected, completed_after),
        hidden=before.triggered and not before.message_id,
    )
    _check_trigger(report, before, findings)
    if not exists and not any(t.rows for t in report.tables):
        report.empty = True
        report.state = before
        return report
    if dry_run:
        _describe_repairs(report, before, findings, exists=exists)
        return report

    state = _repair(report, before, findings, rules, documents, max_execution_ids)
    if state.trigger_pending and not state.triggered:
        state = publish_pending(day)
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


def _table_specs(
    expected: tuple[str, ...], tables: Mapping[str, TableSpec] | None
) -> dict[str, TableSpec]:
    source: Mapping[str, TableSpec] = TABLES if tables is None else tables
    missing = [p for p in expected if p not in source]
    if missing:
        raise ConfigError(
            f"no table spec for expected processor(s) {missing!r}: give one with "
            f"--table NAME=KEY1,KEY2 or --tables-file (tables= in Python); known: "
            f"{sorted(source)}"
        )
    return {p: source[p] for p in expected}


def _check_tables(
    report: ReconcileReport,
    before: CompletionState,
    warehouse: Any,
    specs: Mapping[str, TableSpec],
) -> list[tuple[str, int]]:
    """Count each expected table's rows and duplicate keys for the date, noting what
    disagrees with the document; returns the processors whose data proves an entry."""
    backed: list[tuple[str, int]] = []
    for processor in before.expected:
        spec = specs[processor]
        rows = count_rows(warehouse, spec, before.game_date)
        dups = find_duplicates(warehouse, spec, before.game_date)
        dup_rows = sum(d.count - 1 for d in dups)
        done = processor in before.completed
        entry = before.entries.get(processor)
        recorded = entry.get("record_count") if entry is not None else None
        recorded_rows = recorded if isinstance(recorded, int) and done else None
        check = TableCheck(processor, spec.name, rows, len(dups), dup_rows, done, recorded_rows)
        report.tables.append(check)
        if dups:
            report.problems.append(
                f"{spec.name}: {len(dups)} duplicate key(s), {dup_rows} extra row(s)"
            )
        if not check.count_matches:
            report.problems.append(
                f"{processor}: recorded {recorded_rows} rows but the table has {rows}"
            )
        if rows > 0 and not done:
            unproven = _why_data_proves_nothing(before, processor, rows, bool(dups))
            if unproven:
                report.problems.append(unproven)
            else:
                report.problems.append(f"{processor}: data present ({rows} rows) but not recorded")
                backed.append((processor, rows))
        elif rows == 0 and done:
            report.problems.append(f"{processor}: recorded complete but the table has no rows")
    return backed


def _why_data_proves_nothing(
    before: CompletionState, processor: str, rows: int, duplicates: bool
) -> str | None:
    """Why rows of a processor without a complete entry cannot make it complete (None
    when they can: no entry at all, clean rows, no declared requirement)."""
    entry = before.entries.get(processor)
    keep = "not marked complete"
    if duplicates:
        return f"{processor}: data present but not recorded; {keep} while its table has duplicates"
    if entry is not None and not entry.get("succeeded"):
        status = entry.get("status")
        return (
            f"{processor}: recorded as {status!r}; its {rows} rows do not prove success, "
            f"{keep} (re-run it)"
        )
    if entry is not None:
        missing = before.uncovered.get(processor, [])
        return (
            f"{processor}: covered {len(before.required or ()) - len(missing)} of "
            f"{len(before.required or ())} required units ({rows} rows); {keep} "
            f"(missing: {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''})"
        )
    if before.required is not None:
        return (
            f"{processor}: {rows} rows but no entry, and row counts cannot prove the "
            f"{len(before.required)} required units are covered; {keep} (re-run it)"
        )
    return None


def _check_expected(data: Mapping[str, Any], expected: tuple[str, ...], *, force: bool) -> None:
    """Refuse expected processors that differ from the document's stored ones: a rewrite
    would silently change what "complete" means for the date (4 of 5 -> complete)."""
    stored = data.get("_expected")
    if force or not isinstance(stored, list) or list(expected) == stored:
        return
    dropped = [p for p in stored if p not in expected]
    added = [p for p in expected if p not in stored]
    raise ConfigError(
        f"expected processors differ from the document's {stored!r}: "
        f"dropped {dropped!r}, added {added!r}; pass force to replace them"
    )


def _check_count(report: ReconcileReport, before: CompletionState) -> None:
    """Note a stored count that disagrees with the expected entries."""
    if before.stored_count is not None and before.stored_count != before.count:
        report.problems.append(
            f"stored _completed_count {before.stored_count} != {before.count} derived "
            "from expected entries"
        )
    unexpected_counted = before.unexpected and before.stored_count is not None
    if unexpected_counted and before.stored_count != before.count:
        report.problems.append(f"unexpected entries present: {list(before.unexpected)}")


def _check_trigger(report: ReconcileReport, before: CompletionState, findings: _Findings) -> None:
    """Note a trigger flagged without a publish, and one that is due but unpublished."""
    if findings.hidden:
        report.problems.append("_triggered is set but no trigger message id: never published")
        if not findings.due:
            report.problems.append("_triggered is set although the trigger rule is not met")
    elif findings.due and not before.triggered:
        report.problems.append(
            "trigger pending (publish failed or crashed)"
            if before.trigger_pending
            else "trigger due but never published"
        )


def _describe_repairs(
    report: ReconcileReport, before: CompletionState, findings: _Findings, *, exists: bool
) -> None:
    """Fill a dry run's report with the changes a repair would make."""
    for processor, rows in findings.backed:
        report.changes.append(f"would record {processor} complete from data ({rows} rows)")
    count_after = len(findings.completed_after)
    if before.stored_count != count_after and (exists or findings.backed):
        report.changes.append(f"would set _completed_count {before.stored_count} -> {count_after}")
    if findings.hidden:
        report.changes.append("would clear _triggered, which was set without a publish")
    if findings.due and (findings.hidden or not before.triggered):
        report.changes.append("would publish the trigger")
    report.count_after = count_after
    report.triggered_after = before.triggered
    report.state = before


def _repair(
    report: ReconcileReport,
    before: CompletionState,
    findings: _Findings,
    rules: PhaseRules,
    documents: DocumentCollection,
    max_execution_ids: int,
) -> CompletionState:
    """Record the backed processors and clear a hidden trigger in one compare-and-set;
    returns the state after the write (which may have left the trigger pending)."""
    day = before.game_date
    run_id = f"reconcile-{uuid.uuid4().hex[:12]}"

    def mutate(cur: dict[str, Any], exists: bool, _read_time: Any) -> Plan:
        fields: dict[str, Any] = {}
        state = rules.state(day, cur, exists=exists)
        for processor, rows in findings.backed:
            if processor in state.completed:
                continue
            entry = dict(cur.get(processor) or {}) if isinstance(cur.get(processor), dict) else {}
            seen = list(entry.get("executions") or [])
            seen.append(run_id)
            fields[processor] = {
                **entry,
                "status": "success",
                "execution_id": run_id,
                "record_count": rows,
                "recorded_at": server_timestamp(),
                "succeeded": True,
                "source": "reconcile",
                "executions": seen[-max_execution_ids:],
            }
        if state.triggered and not state.message_id:
            # A hand repair set _triggered without publishing: clear it, so the
            # outbox publishes for real once the rule is met.
            fields["_triggered"] = False
            fields["_trigger_pending"] = False
        merged = {**cur, **fields}
        fields.update(
            rules.derived_fields(day, cur, merged, exists, reason="reconcile", real_time=False)
        )
        return Plan(fields or None)

    plan, data, _ = documents.update(day, mutate)
    after = rules.state(day, data)
    if plan.updates:
        for processor, rows in findings.backed:
            report.changes.append(f"recorded {processor} complete from data ({rows} rows)")
        if before.stored_count != after.count:
            report.changes.append(f"set _completed_count {before.stored_count} -> {after.count}")
        if findings.hidden:
            report.changes.append("cleared _triggered, which was set without a publish")
    return after

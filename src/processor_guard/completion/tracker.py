"""Completion tracking that cannot drift, with an exactly-once trigger outbox.

Each processor's completion is recorded in its phase's document for the game date (the
layout is in ``state``); once the trigger rule is met the same write sets the outbox
flag ``_trigger_pending``, and a claim-publish-mark sequence publishes the next phase's
trigger. Every change is one optimistic compare-and-set (see ``documents``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._docapi import server_timestamp
from ..dates import parse_game_date
from ..errors import ConfigError, StaleFence
from ..leases import Lease, default_owner, held_leases
from ..tables import TableSpec
from .documents import DocumentCollection, Plan
from .outbox import PublishFn, TriggerOutbox, TriggerPending
from .reconcile import ReconcileReport, reconcile_date
from .state import (
    CompletionState,
    PhaseRules,
    TriggerRule,
    covered_units,
    required_units,
)

__all__ = [
    "MAX_METADATA_BYTES",
    "RESERVED_ENTRY_FIELDS",
    "CompletionTracker",
    "PublishFn",
    "RequiredFn",
    "TriggerPending",
    "TriggerRule",
]

log = logging.getLogger("processor_guard.completion")

#: ``required(game_date) -> units`` says what a date needs (e.g. the schedule's game ids).
RequiredFn = Callable[[str], Iterable[str]]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PHASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_METADATA_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

#: The fields of a processor's entry that the tracker writes; caller metadata cannot
#: use these names (nor names starting with ``_``).
RESERVED_ENTRY_FIELDS = frozenset(
    {
        "status",
        "execution_id",
        "record_count",
        "recorded_at",
        "succeeded",
        "executions",
        "covered",
        "fence",
        "lease_key",
        "first_success_at",
        "completed_at",
        "metadata_keys",
        "source",
    }
)
#: The largest caller metadata of one record, as compact JSON (a Firestore document
#: holds at most 1 MiB for all its processors and executions).
MAX_METADATA_BYTES = 16_384
_MAX_METADATA_DEPTH = 8


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
    all critical processors plus ``fraction`` (rounded up) of the others. ``modes``
    names other rules, chosen per date by ``record(mode=...)``: ``"all"`` (every
    expected processor), a list of critical processors (those alone) or a
    :class:`TriggerRule`, e.g. ``{"overnight": "all", "same_day": ["player_game_summary",
    "team_offense_game_summary"]}``. The state's ``trigger_reason`` says which was met.
    """

    # Long: the public API of one phase's completion documents; each method is
    # short and hands the work to state, outbox or reconcile.
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
        required: RequiredFn | None = None,
        modes: Mapping[str, TriggerRule | Sequence[str] | str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(phase, str) or not _PHASE_RE.match(phase):
            raise ConfigError(f"phase must match [A-Za-z0-9][A-Za-z0-9_-]*, got {phase!r}")
        names = _expected_names(expected)
        rule = _trigger_rule(critical, fraction, names)
        named = _named_rules(modes, names)
        if publish is not None and not callable(publish):
            raise ConfigError(f"publish must be callable, got {publish!r}")
        if required is not None and not callable(required):
            raise ConfigError(f"required must be callable (game_date -> units), got {required!r}")
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
        self.rule = rule
        self.modes = named
        self.success_statuses = frozenset(success_statuses)
        self.claim_ttl = float(claim_ttl)
        self.owner = owner or default_owner()
        self.max_attempts = max_attempts
        self.rpc_timeout = rpc_timeout
        self.max_execution_ids = max_execution_ids
        self.required = required
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"<CompletionTracker {self.collection} expected={len(self.expected)}>"

    # ---------------------------------------------------------------- public

    def doc_ref(self, game_date: dt.date | str) -> Any:
        """The Firestore document reference of ``game_date``."""
        return self._documents().ref(parse_game_date(game_date).isoformat())

    def state(self, game_date: dt.date | str) -> CompletionState:
        """The current state of ``game_date`` (an empty state when there is no document)."""
        day = parse_game_date(game_date).isoformat()
        data, exists = self._documents().read(day)
        return self._rules().state(day, data, exists=exists)

    async def arecord(self, *args: Any, **kwargs: Any) -> CompletionState:
        """:meth:`record` for async code, same arguments: the document store's client
        is synchronous, so it runs on a worker thread while the event loop goes on."""
        return await asyncio.to_thread(self.record, *args, **kwargs)

    def record(
        self,
        game_date: dt.date | str,
        processor: str,
        *,
        execution_id: str,
        status: str = "success",
        record_count: int | None = None,
        covered: Iterable[str] | None = None,
        lease: Lease | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> CompletionState:
        """Store one processor's completion and publish the trigger if it is due.

        Metadata: ``metadata`` (e.g. ``entities_changed``, ``is_incremental``,
        ``correlation_id``) is stored in the processor's entry with this execution,
        replacing the previous execution's; JSON values only, at most
        ``MAX_METADATA_BYTES``, names not in ``RESERVED_ENTRY_FIELDS``.

        Mode: ``mode`` (one of the tracker's ``modes``) selects the date's trigger rule
        from this record on, e.g. ``"same_day"`` for the evening run and
        ``"overnight"`` for the next morning's; without it the date keeps the last mode
        recorded, or the tracker's default rule.

        Coverage: when the tracker has ``required`` (what the date needs), ``covered``
        (what this run processed, e.g. its game ids) is mandatory and the processor
        completes only once its successful runs covered every required unit.

        Lease: under a lease for the date (``lease``, else the one ``guarded`` or
        ``date_lock`` holds in this context), the lease is checked first (``LeaseLost``)
        and its fence stored with the entry; a fence older than the one already stored
        raises ``StaleFence`` and writes nothing, and a lease lost before the publish
        leaves the trigger to the next caller.

        Idempotent per ``(processor, execution_id)``: a duplicate message writes nothing
        but still publishes a trigger left pending by an earlier failure. Names outside
        ``expected`` are stored and logged but never counted. A processor counts once
        any of its executions reported a success status (so message order does not
        matter); the last ``max_execution_ids`` execution ids per processor are kept
        for the duplicate check.

        The entry, the derived count and the outbox flag are written in one atomic
        compare-and-set on the document's update time, retried from a fresh read when
        another writer got in first, instead of a read-write transaction (which makes
        concurrent writers of one document wait on a lock; see ``documents``).

        When publishing fails the returned state has ``trigger_pending`` and
        ``publish_error`` set; a Pub/Sub push handler should then answer with an error
        so the message is redelivered (and the redelivery publishes).
        """
        day = parse_game_date(game_date).isoformat()
        name = _check_name(processor, "processor")
        _check_execution(execution_id, status, record_count)
        units = _check_units(covered, "covered")
        extra = _check_metadata(metadata)
        if mode is not None and mode not in self.modes:
            known = ", ".join(sorted(self.modes)) or "none configured"
            raise ConfigError(f"mode must be one of the tracker's modes ({known}), got {mode!r}")
        required = self._required_for(day)
        if required is not None and units is None:
            raise ConfigError(
                "covered is required: this tracker completes a date only when every "
                "required unit is covered (pass covered=[...game ids...])"
            )
        held = lease if lease is not None else _lease_for(day, name)
        if held is not None:
            held.check()
        rules = self._rules()
        execution = _Execution(name, execution_id, status, record_count, units, held, extra, mode)

        def mutate(data: dict[str, Any], exists: bool, _read_time: Any) -> Plan:
            return self._add_execution(rules, day, data, exists, execution, required)

        plan, data, _ = self._documents().update(day, mutate)
        if isinstance(plan.result, StaleFence):
            raise plan.result
        state = rules.state(day, data, duplicate=bool(plan.result))
        if state.trigger_pending and not state.triggered:
            if held is not None:
                held.check()
            state = replace(self._outbox().publish_pending(day), duplicate=state.duplicate)
        return state

    def retrigger(self, game_date: dt.date | str, *, reason: str) -> CompletionState:
        """Publish a complete date's trigger again, after a backfill, under a new dedup id
        (``phase/date#2``, ...) so subscribers do not drop it as a repeat. Refuses a date
        that is not complete; a trigger already pending is just published."""
        day = parse_game_date(game_date).isoformat()
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError("reason must say why the date is re-triggered")
        rules = self._rules()

        def mutate(cur: dict[str, Any], exists: bool, _read_time: Any) -> Plan:
            state = rules.state(day, cur, exists=exists)
            if not state.should_trigger:
                missing = ", ".join(state.missing) or "coverage"
                return Plan(None, f"{day} is not complete (missing: {missing})")
            if state.waiting_for_publish:
                return Plan(None)
            history = list(cur.get("_trigger_history") or [])
            history.append({"message_id": state.message_id, "generation": state.generation})
            return Plan(
                {
                    "_triggered": False,
                    "_trigger_pending": True,
                    "_trigger_generation": state.generation + 1,
                    "_trigger_reason": f"retrigger: {reason.strip()}",
                    "_trigger_history": history[-self.max_execution_ids :],
                    "_satisfied_at": server_timestamp(),
                    "_updated_at": server_timestamp(),
                }
            )

        plan, _, _ = self._documents().update(day, mutate)
        if isinstance(plan.result, str):
            raise ConfigError(f"cannot re-trigger: {plan.result}")
        return self._outbox().publish_pending(day)

    def publish_pending(self, game_date: dt.date | str) -> CompletionState:
        """Publish a trigger left pending (by a failed publish or a crash); no-op otherwise."""
        return self._outbox().publish_pending(parse_game_date(game_date).isoformat())

    def reconcile(
        self,
        game_date: dt.date | str,
        warehouse: Any,
        *,
        dry_run: bool = True,
        tables: Mapping[str, TableSpec] | None = None,
        force: bool = False,
    ) -> ReconcileReport:
        """Compare the document with the warehouse and (unless ``dry_run``) repair it.

        For each expected processor it counts the date's rows and duplicate keys. An
        expected processor with no entry at all whose rows exist without duplicates
        gets one (``source: reconcile``) unless the date declares required units; a
        failed or partial entry is reported, never made a success (see ``reconcile``);
        expected processors that differ from the document's stored ones are refused
        unless ``force``. A date with neither document nor rows is left alone
        (``report.empty``). The count is recomputed from entries; a
        trigger that is due but was never published (including ``_triggered`` set
        without a message id, as a hand repair does) is published for real through
        ``publish``. ``_triggered`` is never set without a publish. Duplicates and
        entries without data are reported, not hidden. A dry run writes and publishes
        nothing and lists what it would change.
        """
        return reconcile_date(
            parse_game_date(game_date).isoformat(),
            warehouse,
            dry_run=dry_run,
            tables=tables,
            rules=self._rules(),
            documents=self._documents(),
            publish_pending=self._outbox().publish_pending,
            max_execution_ids=self.max_execution_ids,
            force=force,
        )

    # ---------------------------------------------------------------- internals

    # Built on each use from the public attributes, which stay the one source of truth.
    def _rules(self) -> PhaseRules:
        return PhaseRules(
            self.phase, self.expected, self.rule, self.success_statuses, dict(self.modes)
        )

    def _outbox(self) -> TriggerOutbox:
        return TriggerOutbox(
            self._documents(),
            self._rules(),
            self.publish,
            owner=self.owner,
            claim_ttl=self.claim_ttl,
        )

    def _documents(self) -> DocumentCollection:
        return DocumentCollection(
            self.client, self.collection, self.max_attempts, self.rpc_timeout, self._sleep
        )

    def _required_for(self, day: str) -> tuple[str, ...] | None:
        if self.required is None:
            return None
        units = _check_units(self.required(day), "required(game_date)")
        if not units:
            raise ConfigError(f"required({day!r}) returned no units; a date needs at least one")
        return units

    def _add_execution(
        self,
        rules: PhaseRules,
        day: str,
        data: dict[str, Any],
        exists: bool,
        run: _Execution,
        required: tuple[str, ...] | None,
    ) -> Plan:
        """The fields that record one execution in the document ``data``; the plan's
        result says whether it was already recorded, or is the StaleFence refusing it."""
        processor = run.processor
        entry = data.get(processor)
        entry = dict(entry) if isinstance(entry, dict) else {}
        stale = _stale_fence(entry, run.lease, processor, day)
        if stale is not None:
            return Plan(None, stale)
        seen = list(entry.get("executions") or [])
        if run.execution_id in seen:
            return Plan(None, True)
        fields: dict[str, Any] = self._required_update(data, required)
        required_now = required if required is not None else required_units(data)
        was_complete = rules.complete(entry, required_now) if entry else False
        had_success = rules.succeeded(entry) if entry else False
        succeeded = had_success or run.status in rules.success_statuses
        seen.append(run.execution_id)
        covered = set(covered_units(entry))
        if run.status in rules.success_statuses and run.covered is not None:
            covered |= set(run.covered)
        for old in entry.get("metadata_keys") or ():
            entry.pop(old, None)
        new_entry: dict[str, Any] = {
            **entry,
            **run.metadata,
            "metadata_keys": sorted(run.metadata),
            "status": run.status,
            "execution_id": run.execution_id,
            "record_count": run.record_count,
            "recorded_at": server_timestamp(),
            "succeeded": succeeded,
            "executions": seen[-self.max_execution_ids :],
        }
        if covered or run.covered is not None:
            new_entry["covered"] = sorted(covered)
        if run.lease is not None:
            new_entry["fence"] = run.lease.fence
            new_entry["lease_key"] = run.lease.key
        if succeeded and not had_success:
            new_entry["first_success_at"] = server_timestamp()
        if not was_complete and rules.complete(new_entry, required_now):
            new_entry["completed_at"] = server_timestamp()
            if processor in rules.expected:
                fields["_last_completion_at"] = server_timestamp()
        fields[processor] = new_entry
        if run.mode is not None and data.get("_mode") != run.mode:
            fields["_mode"] = run.mode
        fields["_executions_recorded"] = int(data.get("_executions_recorded") or 0) + 1
        if processor not in rules.expected and processor not in (data.get("_unexpected") or []):
            log.warning(
                "completion %s/%s: unexpected processor %r stored, not counted",
                self.collection,
                day,
                processor,
            )
        merged = {**data, **fields}
        fields.update(rules.derived_fields(day, data, merged, exists))
        return Plan(fields, False)

    def _required_update(
        self, data: Mapping[str, Any], required: tuple[str, ...] | None
    ) -> dict[str, Any]:
        """``_required`` when the caller's requirement differs from the stored one (the
        schedule is the source of truth: a postponed game leaves the list)."""
        if required is None or required_units(data) == required:
            return {}
        if "_required" in data:
            log.warning(
                "completion %s: required units change from %s to %s",
                self.collection,
                data.get("_required"),
                list(required),
            )
        return {"_required": list(required)}


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{argument} must match [A-Za-z0-9][A-Za-z0-9_-]* (names starting with '_' are "
            f"reserved for metadata), got {name!r}"
        )
    return name


def _expected_names(expected: Sequence[str]) -> tuple[str, ...]:
    if isinstance(expected, str) or not expected:
        raise ConfigError(f"expected must be a non-empty list of processor names: {expected!r}")
    names = tuple(_check_name(p, "expected processor") for p in expected)
    if len(set(names)) != len(names):
        raise ConfigError(f"expected lists a processor twice: {list(names)!r}")
    return names


def _trigger_rule(
    critical: Sequence[str] | None, fraction: float, expected: tuple[str, ...]
) -> TriggerRule:
    crit: tuple[str, ...] | None = None
    if critical is not None:
        crit = tuple(critical)
        unknown = [c for c in crit if c not in expected]
        if unknown:
            raise ConfigError(f"critical processors {unknown!r} are not in expected")
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be between 0 and 1, got {fraction!r}")
    if crit is None and fraction != 1.0:
        raise ConfigError("fraction applies only together with critical processors")
    return TriggerRule(crit, float(fraction))


def _named_rules(
    modes: Mapping[str, TriggerRule | Sequence[str] | str] | None, expected: tuple[str, ...]
) -> dict[str, TriggerRule]:
    """``modes`` as trigger rules: "all", a list of critical processors, or a rule."""
    if modes is None:
        return {}
    if not isinstance(modes, Mapping):
        raise ConfigError(f"modes must map mode names to trigger rules, got {modes!r}")
    named: dict[str, TriggerRule] = {}
    for mode, rule in modes.items():
        if not isinstance(mode, str) or not _PHASE_RE.match(mode):
            raise ConfigError(f"mode names must match [A-Za-z0-9][A-Za-z0-9_-]*, got {mode!r}")
        if rule == "all":
            named[mode] = TriggerRule()
        elif isinstance(rule, TriggerRule):
            named[mode] = _trigger_rule(rule.critical, rule.fraction, expected)
        elif isinstance(rule, str) or not isinstance(rule, Sequence) or not rule:
            raise ConfigError(
                f"modes[{mode!r}] must be 'all', a non-empty list of critical processors "
                f"or a TriggerRule, got {rule!r}"
            )
        else:
            named[mode] = _trigger_rule(tuple(rule), 0.0, expected)
    return named


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Caller metadata for an entry: JSON-safe, bounded, no reserved names."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME_RE.fullmatch(name):
            raise ConfigError(f"metadata names must match [A-Za-z][A-Za-z0-9_]*, got {name!r}")
        if name in RESERVED_ENTRY_FIELDS:
            raise ConfigError(f"metadata name {name!r} is reserved for the tracker's own field")
        _check_json_value(value, f"metadata[{name!r}]", 0)
    encoded = json.dumps(dict(metadata), separators=(",", ":"))
    size = len(encoded.encode())
    if size > MAX_METADATA_BYTES:
        raise ConfigError(f"metadata is {size} bytes as JSON, at most {MAX_METADATA_BYTES}")
    # Stored as JSON reads it back: tuples become lists in every document store.
    stored: dict[str, Any] = json.loads(encoded)
    return stored


def _check_json_value(value: Any, where: str, depth: int) -> None:
    if depth > _MAX_METADATA_DEPTH:
        raise ConfigError(f"{where} is nested deeper than {_MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} keys must be strings, got {key!r}")
            _check_json_value(item, f"{where}[{key!r}]", depth + 1)
        return
    raise ConfigError(
        f"{where} must be JSON (None, bool, number, string, list, dict), got {type(value).__name__}"
    )


def _check_execution(execution_id: object, status: object, record_count: object) -> None:
    if not isinstance(execution_id, str) or not execution_id.strip():
        raise ConfigError(f"execution_id must be a non-empty string, got {execution_id!r}")
    if not isinstance(status, str) or not status:
        raise ConfigError(f"status must be a non-empty string, got {status!r}")
    if record_count is not None and (
        isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0
    ):
        raise ConfigError(f"record_count must be an int >= 0 or None, got {record_count!r}")


class _Execution:
    """One run's report, as passed to ``record``."""

    def __init__(
        self,
        processor: str,
        execution_id: str,
        status: str,
        record_count: int | None,
        covered: tuple[str, ...] | None,
        lease: Lease | None,
        metadata: dict[str, Any],
        mode: str | None,
    ) -> None:
        self.processor = processor
        self.execution_id = execution_id
        self.status = status
        self.record_count = record_count
        self.covered = covered
        self.lease = lease
        self.metadata = metadata
        self.mode = mode


def _lease_for(day: str, processor: str) -> Lease | None:
    """The lease this context holds for ``day``: the one scoped to ``processor`` when
    several are held, else the innermost for the date."""
    leases = [le for le in held_leases() if le.game_date.isoformat() == day]
    for le in leases:
        if le.scope == processor:
            return le
    return leases[-1] if leases else None


def _stale_fence(
    entry: Mapping[str, Any], lease: Lease | None, processor: str, day: str
) -> StaleFence | None:
    """The refusal of a record whose fence is older than the one stored for its lease."""
    if lease is None or entry.get("lease_key") != lease.key:
        return None
    stored = entry.get("fence")
    if isinstance(stored, int) and not isinstance(stored, bool) and stored > lease.fence:
        return StaleFence(f"completion of {processor}", lease.fence, stored, day)
    return None


def _check_units(units: Iterable[str] | None, argument: str) -> tuple[str, ...] | None:
    if units is None:
        return None
    if isinstance(units, (str, bytes)):
        raise ConfigError(f"{argument} must be a list of unit ids, not a string: {units!r}")
    values = tuple(units)
    bad = [u for u in values if not isinstance(u, str) or not u]
    if bad:
        raise ConfigError(f"{argument} must hold non-empty strings, got {bad[:3]!r}")
    return tuple(sorted(set(values)))

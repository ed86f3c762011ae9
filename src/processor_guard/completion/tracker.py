"""Completion tracking that cannot drift, with an exactly-once trigger outbox.

Each processor's completion is recorded in its phase's document for the game date (the
layout is in ``state``); once the trigger rule is met the same write sets the outbox
flag ``_trigger_pending``, and a claim-publish-mark sequence publishes the next phase's
trigger. Every change is one optimistic compare-and-set (see ``documents``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from .._docapi import delete_field, server_timestamp
from ..dates import parse_game_date
from ..errors import ConfigError, GuardError
from ..leases import default_owner
from ..tables import TableSpec
from .documents import DocumentCollection, Plan, as_datetime
from .reconcile import ReconcileReport, reconcile_date
from .state import CompletionState, PhaseRules, TriggerRule

__all__ = ["CompletionTracker", "PublishFn"]

log = logging.getLogger("processor_guard.completion")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PHASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class PublishFn(Protocol):
    """Publishes the next phase's trigger and returns the transport's message id."""

    def __call__(self, game_date: str, state: CompletionState, /) -> str: ...


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
        names = _expected_names(expected)
        rule = _trigger_rule(critical, fraction, names)
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
        self.rule = rule
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
        return self._documents().ref(parse_game_date(game_date).isoformat())

    def state(self, game_date: dt.date | str) -> CompletionState:
        """The current state of ``game_date`` (an empty state when there is no document)."""
        day = parse_game_date(game_date).isoformat()
        data, exists = self._documents().read(day)
        return self._rules().state(day, data, exists=exists)

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
        concurrent writers of one document wait on a lock; see ``documents``).

        When publishing fails the returned state has ``trigger_pending`` and
        ``publish_error`` set; a Pub/Sub push handler should then answer with an error
        so the message is redelivered (and the redelivery publishes).
        """
        day = parse_game_date(game_date).isoformat()
        name = _check_name(processor, "processor")
        _check_execution(execution_id, status, record_count)
        rules = self._rules()

        def mutate(data: dict[str, Any], exists: bool, _read_time: Any) -> Plan:
            return self._add_execution(
                rules,
                day,
                data,
                exists,
                processor=name,
                execution_id=execution_id,
                status=status,
                record_count=record_count,
            )

        plan, data, _ = self._documents().update(day, mutate)
        state = rules.state(day, data, duplicate=bool(plan.result))
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
        return reconcile_date(
            parse_game_date(game_date).isoformat(),
            warehouse,
            dry_run=dry_run,
            tables=tables,
            rules=self._rules(),
            documents=self._documents(),
            publish_pending=self._publish_pending,
            max_execution_ids=self.max_execution_ids,
        )

    # ---------------------------------------------------------------- internals

    # Built on each use from the public attributes, which stay the one source of truth.
    def _rules(self) -> PhaseRules:
        return PhaseRules(self.phase, self.expected, self.rule, self.success_statuses)

    def _documents(self) -> DocumentCollection:
        return DocumentCollection(
            self.client, self.collection, self.max_attempts, self.rpc_timeout, self._sleep
        )

    def _add_execution(
        self,
        rules: PhaseRules,
        day: str,
        data: dict[str, Any],
        exists: bool,
        *,
        processor: str,
        execution_id: str,
        status: str,
        record_count: int | None,
    ) -> Plan:
        """The fields that record one execution of ``processor`` in the document ``data``;
        the plan's result says whether that execution was already recorded."""
        entry = data.get(processor)
        entry = dict(entry) if isinstance(entry, dict) else {}
        seen = list(entry.get("executions") or [])
        duplicate = execution_id in seen
        fields: dict[str, Any] = {}
        if not duplicate:
            had_success = rules.succeeded(entry) if entry else False
            succeeded = had_success or status in rules.success_statuses
            seen.append(execution_id)
            new_entry: dict[str, Any] = {
                **entry,
                "status": status,
                "execution_id": execution_id,
                "record_count": record_count,
                "recorded_at": server_timestamp(),
                "succeeded": succeeded,
                "executions": seen[-self.max_execution_ids :],
            }
            if succeeded and not had_success:
                new_entry["first_success_at"] = server_timestamp()
                if processor in rules.expected:
                    fields["_last_completion_at"] = server_timestamp()
            fields[processor] = new_entry
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
        return Plan(fields or None, duplicate)

    def _publish_pending(self, day: str) -> CompletionState:
        """Claim the pending trigger, publish it, mark it; see the class docstring."""
        documents, rules = self._documents(), self._rules()
        token = uuid.uuid4().hex
        plan, data, _ = documents.update(
            day, lambda cur, _exists, read_time: self._claim(cur, read_time, token)
        )
        if not plan.result:
            error = None
            if self.publish is None and data.get("_trigger_pending") and not data.get("_triggered"):
                error = "no publish callable configured"
            return rules.state(day, data, publish_error=error)

        state = rules.state(day, data)
        try:
            message_id = self._send(day, state)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "completion %s/%s: publishing the trigger failed (%s); it stays pending",
                self.collection,
                day,
                error,
            )
            _, data, _ = documents.update(
                day, lambda cur, _exists, _read_time: _release(cur, token, error)
            )
            return rules.state(day, data, publish_error=error)

        plan, data, _ = documents.update(
            day, lambda cur, _exists, _read_time: _mark_published(cur, message_id)
        )
        if plan.updates is None:
            log.warning(
                "completion %s/%s: trigger already marked by another publisher; message %s "
                "is a duplicate (dedup id %s)",
                self.collection,
                day,
                message_id,
                state.dedup_id,
            )
        log.info(
            "completion %s/%s: trigger published (message %s)", self.collection, day, message_id
        )
        return rules.state(day, data)

    def _claim(self, data: dict[str, Any], read_time: Any, token: str) -> Plan:
        """Take the pending trigger for ``token`` unless it is published or claimed by a
        live caller; the plan's result says whether this caller may publish."""
        if not data.get("_trigger_pending") or data.get("_triggered"):
            return Plan(None, False)
        current = data.get("_trigger_claim")
        if isinstance(current, Mapping) and not _claim_expired(current, read_time, self.claim_ttl):
            return Plan(None, False)
        if self.publish is None:
            return Plan(None, False)
        return Plan(
            {
                "_trigger_claim": {
                    "owner": self.owner,
                    "token": token,
                    "claimed_at": server_timestamp(),
                    "ttl": self.claim_ttl,
                },
                "_trigger_attempts": int(data.get("_trigger_attempts") or 0) + 1,
            },
            True,
        )

    def _send(self, day: str, state: CompletionState) -> str:
        """Publish the trigger; the transport's message id."""
        assert self.publish is not None
        message_id = self.publish(day, state)
        if not isinstance(message_id, str) or not message_id:
            raise GuardError(f"publish returned {message_id!r}, expected a message id string")
        return message_id


def _mark_published(data: dict[str, Any], message_id: str) -> Plan:
    """Mark the trigger published, unless another publisher already did."""
    if data.get("_triggered"):
        return Plan(None)
    return Plan(
        {
            "_triggered": True,
            "_triggered_at": server_timestamp(),
            "_trigger_message_id": message_id,
            "_trigger_pending": False,
            "_trigger_claim": delete_field(),
            "_trigger_last_error": delete_field(),
            "_updated_at": server_timestamp(),
        }
    )


def _claim_expired(claim: Mapping[str, Any], read_time: Any, default_ttl: float) -> bool:
    claimed_at = as_datetime(claim.get("claimed_at"))
    if claimed_at is None or read_time is None:
        return True
    ttl = claim.get("ttl")
    ttl = float(ttl) if isinstance(ttl, (int, float)) else default_ttl
    return bool((read_time - claimed_at).total_seconds() > ttl)


def _release(data: dict[str, Any], token: str, error: str) -> Plan:
    """Give up the claim held by ``token`` after a failed publish, noting the error."""
    mine = (data.get("_trigger_claim") or {}).get("token") == token
    if not mine:
        return Plan(None)
    return Plan({"_trigger_claim": delete_field(), "_trigger_last_error": error})


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


def _check_execution(execution_id: object, status: object, record_count: object) -> None:
    if not isinstance(execution_id, str) or not execution_id.strip():
        raise ConfigError(f"execution_id must be a non-empty string, got {execution_id!r}")
    if not isinstance(status, str) or not status:
        raise ConfigError(f"status must be a non-empty string, got {status!r}")
    if record_count is not None and (
        isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0
    ):
        raise ConfigError(f"record_count must be an int >= 0 or None, got {record_count!r}")

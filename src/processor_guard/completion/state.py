"""What a completion document says: the trigger rule, the state read from a document
and the metadata derived from its entries.

One Firestore document per phase and game date, ``{phase}_completion/{YYYY-MM-DD}``:
one field per processor (a map) plus metadata fields prefixed ``_``. The completed
count is always derived from the entries of *expected* processors; it is stored only
so people can read it.

Completion means coverage: when the document holds ``_required`` (what the date needs,
e.g. the schedule's game ids), a processor is complete only once its successful
executions together ``covered`` every required unit. A first batch of 2 of 10 games
is recorded but completes nothing; the run that covers the rest completes it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._docapi import server_timestamp
from .documents import as_datetime

__all__ = [
    "CompletionState",
    "PhaseRules",
    "TriggerRule",
    "claim_deadline",
    "covered_units",
    "required_units",
]


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

    def describe(self, expected: Sequence[str], completed: Iterable[str]) -> str:
        """Why the rule is met (or how far it is), for ``_trigger_reason`` and health."""
        done = set(completed)
        if self.critical is None:
            have = sum(1 for p in expected if p in done)
            return f"all expected complete ({have}/{len(expected)})"
        crit = sum(1 for p in self.critical if p in done)
        rest = [p for p in expected if p not in self.critical]
        rest_done = sum(1 for p in rest if p in done)
        return (
            f"critical complete ({crit}/{len(self.critical)}: {', '.join(self.critical)}) "
            f"and {rest_done} of {len(rest)} others (needs {self.required_others(expected)})"
        )


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
    required: tuple[str, ...] | None = None
    claimed_by: str | None = None
    claimed_until: dt.datetime | None = None
    # 1 for the first trigger; each re-trigger after a backfill adds one.
    generation: int = 1
    #: The trigger mode the date was last recorded under (``record(mode=...)``), if any.
    mode: str | None = None
    #: Why the trigger became due: the rule and mode that were met, ``reconcile: ...``
    #: or ``retrigger: ...``; None until it is due.
    trigger_reason: str | None = None

    @property
    def uncovered(self) -> dict[str, list[str]]:
        """Per expected processor with a successful entry, the required units it has not
        covered yet (only when the date declares what it requires)."""
        if self.required is None:
            return {}
        out: dict[str, list[str]] = {}
        for p in self.expected:
            entry = self.entries.get(p)
            if entry is None or p in self.completed:
                continue
            have = set(covered_units(entry))
            out[p] = [u for u in self.required if u not in have]
        return out

    @property
    def waiting_for_publish(self) -> bool:
        """The trigger is due but not published yet (failed, or claimed by a caller that
        is publishing or died); a push handler must answer retryable."""
        return self.trigger_pending and not self.triggered

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
        """Stable id of this phase and date's trigger; subscribers drop repeats of it. A
        re-trigger after a backfill gets a new one (``phase/date#2``)."""
        base = f"{self.phase}/{self.game_date}"
        return base if self.generation <= 1 else f"{base}#{self.generation}"

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
            "generation": self.generation,
            "mode": self.mode,
            "trigger_reason": self.trigger_reason,
            "required": None if self.required is None else list(self.required),
            "uncovered": self.uncovered,
            "claimed_by": self.claimed_by,
            "claimed_until": _iso(self.claimed_until),
        }


@dataclass(frozen=True)
class PhaseRules:
    """What completion means for one phase, applied to the fields of its documents."""

    phase: str
    expected: tuple[str, ...]
    trigger: TriggerRule
    success_statuses: frozenset[str]
    #: Named rules chosen per date by the ``_mode`` a record stored; others use ``trigger``.
    modes: Mapping[str, TriggerRule] = field(default_factory=dict)

    def rule_for(self, data: Mapping[str, Any]) -> tuple[str | None, TriggerRule]:
        """The mode stored in ``data`` (None without one) and the rule it selects."""
        mode = data.get("_mode")
        if isinstance(mode, str) and mode in self.modes:
            return mode, self.modes[mode]
        return None, self.trigger

    def trigger_reason(self, data: Mapping[str, Any], completed: Sequence[str]) -> str:
        """Why the rule of ``data``'s mode is met by ``completed``."""
        mode, rule = self.rule_for(data)
        described = rule.describe(self.expected, completed)
        return described if mode is None else f"{described}, mode {mode}"

    def succeeded(self, entry: Any) -> bool:
        """True when a processor's entry records at least one successful execution."""
        if entry is True:
            return True
        if not isinstance(entry, Mapping):
            return False
        return bool(entry.get("succeeded")) or entry.get("status") in self.success_statuses

    def complete(self, entry: Any, required: Sequence[str] | None) -> bool:
        """True when the entry succeeded and, if the date requires units, covered them all."""
        if not self.succeeded(entry):
            return False
        if required is None:
            return True
        return set(required) <= set(covered_units(entry))

    def completed(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        """The expected processors complete in ``data`` (see ``complete``), in expected order."""
        required = required_units(data)
        return tuple(p for p in self.expected if self.complete(data.get(p), required))

    def state(
        self,
        day: str,
        data: Mapping[str, Any],
        *,
        duplicate: bool = False,
        publish_error: str | None = None,
        exists: bool = True,
    ) -> CompletionState:
        """The state of ``day``'s document holding ``data``."""
        completed = self.completed(data)
        stored = data.get("_completed_count")
        mode, rule = self.rule_for(data)
        reason = data.get("_trigger_reason")
        return CompletionState(
            phase=self.phase,
            game_date=day,
            expected=self.expected,
            completed=completed,
            unexpected=tuple(sorted(k for k in _entries(data) if k not in self.expected)),
            stored_count=stored if isinstance(stored, int) else None,
            should_trigger=rule.satisfied(self.expected, completed),
            trigger_pending=bool(data.get("_trigger_pending")),
            triggered=bool(data.get("_triggered")),
            triggered_at=as_datetime(data.get("_triggered_at")),
            message_id=data.get("_trigger_message_id") or None,
            satisfied_at=as_datetime(data.get("_satisfied_at")),
            last_completion_at=as_datetime(data.get("_last_completion_at")),
            duplicate=duplicate,
            publish_error=publish_error or data.get("_trigger_last_error") or None,
            exists=exists and bool(data),
            entries={k: v for k, v in _entries(data).items() if isinstance(v, Mapping)},
            required=required_units(data),
            claimed_by=_claim_owner(data),
            claimed_until=claim_deadline(data.get("_trigger_claim")),
            generation=_generation(data),
            mode=mode,
            trigger_reason=reason if isinstance(reason, str) and reason else None,
        )

    def derived_fields(
        self,
        day: str,
        before: Mapping[str, Any],
        merged: Mapping[str, Any],
        exists: bool,
        reason: str = "",
        real_time: bool = True,
    ) -> dict[str, Any]:
        """Metadata that follows from the entries: count, lists and the outbox flag.

        ``before`` is the document as read, ``merged`` the same with this write's
        entries applied; only fields whose value changes are returned. Without
        ``real_time`` (a repair, long after the fact) ``_satisfied_at`` is the last real
        completion time, not now. ``_trigger_reason`` says which rule (and mode) was met,
        after ``reason: `` when one is given.
        """
        completed = self.completed(merged)
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
        _, rule = self.rule_for(merged)
        if rule.satisfied(self.expected, completed) and not triggered and not pending:
            fields["_trigger_pending"] = True
            fields["_trigger_id"] = f"{self.phase}/{day}"
            fields["_satisfied_at"] = (
                server_timestamp() if real_time else merged.get("_last_completion_at")
            )
            met = self.trigger_reason(merged, completed)
            fields["_trigger_reason"] = f"{reason}: {met}" if reason else met
        if fields:
            fields["_updated_at"] = server_timestamp()
        return fields


def required_units(data: Mapping[str, Any]) -> tuple[str, ...] | None:
    """What the date requires (``_required``), None when it declares nothing."""
    value = data.get("_required")
    if not isinstance(value, list):
        return None
    return tuple(str(u) for u in value)


def covered_units(entry: Any) -> tuple[str, ...]:
    """The units a processor's successful executions covered, as stored in its entry."""
    if not isinstance(entry, Mapping):
        return ()
    value = entry.get("covered")
    return tuple(str(u) for u in value) if isinstance(value, list) else ()


def claim_deadline(claim: Any) -> dt.datetime | None:
    """When a trigger claim expires (claimed_at + ttl), None without a readable claim."""
    if not isinstance(claim, Mapping):
        return None
    claimed_at = as_datetime(claim.get("claimed_at"))
    ttl = claim.get("ttl")
    if claimed_at is None or isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        return None
    return claimed_at + dt.timedelta(seconds=float(ttl))


def _generation(data: Mapping[str, Any]) -> int:
    value = data.get("_trigger_generation")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _claim_owner(data: Mapping[str, Any]) -> str | None:
    claim = data.get("_trigger_claim")
    owner = claim.get("owner") if isinstance(claim, Mapping) else None
    return owner if isinstance(owner, str) else None


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _entries(data: Mapping[str, Any]) -> dict[str, Any]:
    """The processor entries of a document (metadata fields start with ``_``)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}

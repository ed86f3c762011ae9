"""The trigger outbox: claim a pending trigger, publish it, mark it published.

A trigger becomes pending in the same write that completes the date (``state``); this
module takes it from there. A claim is a conditional write, so two callers never
publish at the same time; the claim is renewed while the publish runs and expires when
its holder dies, so the next caller publishes (at most one duplicate per crash, with
the same ``dedup_id``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from .._docapi import delete_field, server_timestamp
from ..errors import GuardError
from .documents import DocumentCollection, Plan
from .state import CompletionState, PhaseRules, claim_deadline

__all__ = ["PublishFn", "TriggerOutbox", "TriggerPending"]

log = logging.getLogger("processor_guard.completion")


class PublishFn(Protocol):
    """Publishes the next phase's trigger and returns the transport's message id."""

    def __call__(self, game_date: str, state: CompletionState, /) -> str: ...


class TriggerPending(GuardError):
    """The date is complete but its trigger is not published yet: answer retryable.

    Either the publish failed, or another caller holds the claim (publishing now, or
    dead: the claim expires at ``state.claimed_until``). ``retry_after`` is the seconds
    until a redelivery can take the claim over.
    """

    def __init__(self, state: CompletionState) -> None:
        self.state = state
        now = dt.datetime.now(dt.timezone.utc)
        until = state.claimed_until
        wait = 10.0 if until is None else (until - now).total_seconds()
        self.retry_after = max(1.0, wait)
        if state.publish_error:
            why = f"publishing failed: {state.publish_error}"
        elif until is not None:
            why = f"claimed by {state.claimed_by or 'another caller'} until {until.isoformat()}"
        else:
            why = "not published yet"
        super().__init__(f"trigger {state.dedup_id} pending: {why}")


class TriggerOutbox:
    """Publishes the pending trigger of one phase's documents (see the module docstring)."""

    def __init__(
        self,
        documents: DocumentCollection,
        rules: PhaseRules,
        publish: PublishFn | Callable[[str, CompletionState], str] | None,
        *,
        owner: str,
        claim_ttl: float,
    ) -> None:
        self.documents = documents
        self.rules = rules
        self.publish = publish
        self.owner = owner
        self.claim_ttl = claim_ttl
        self.collection = documents.name

    def publish_pending(self, day: str) -> CompletionState:
        """Claim the pending trigger, publish it, mark it; see the class docstring."""
        documents, rules = self.documents, self.rules
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
            with self._claim_kept(day, token):
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
        if isinstance(current, Mapping) and not _claim_expired(current, read_time):
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

    @contextmanager
    def _claim_kept(self, day: str, token: str) -> Iterator[None]:
        """Renew the claim every ``claim_ttl / 3`` while the publish runs, so a slow
        publisher (Pub/Sub may wait 60 s) never sees its claim expire and a second
        caller publish too. A dead process stops renewing, so its claim still expires."""
        stop = threading.Event()
        documents = self.documents

        def keep() -> None:
            while not stop.wait(self.claim_ttl / 3):
                try:
                    documents.update(day, lambda cur, _e, _t: _renew_claim(cur, token))
                except Exception as exc:  # the next renewal retries; the claim has margin
                    log.warning(
                        "completion %s/%s: claim renewal failed: %r", self.collection, day, exc
                    )

        keeper = threading.Thread(target=keep, name=f"claim-{day}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()

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


def _claim_expired(claim: Mapping[str, Any], read_time: Any) -> bool:
    until = claim_deadline(claim)
    return until is None or read_time is None or bool(read_time > until)


def _renew_claim(data: dict[str, Any], token: str) -> Plan:
    """Move the claim's start to now while ``token`` still holds it."""
    claim = data.get("_trigger_claim")
    if not isinstance(claim, Mapping) or claim.get("token") != token or data.get("_triggered"):
        return Plan(None)
    return Plan({"_trigger_claim": {**claim, "claimed_at": server_timestamp()}})


def _release(data: dict[str, Any], token: str, error: str) -> Plan:
    """Give up the claim held by ``token`` after a failed publish, noting the error."""
    mine = (data.get("_trigger_claim") or {}).get("token") == token
    if not mine:
        return Plan(None)
    return Plan({"_trigger_claim": delete_field(), "_trigger_last_error": error})

"""One HTTP answer for a service that runs several processors per Pub/Sub message.

Pub/Sub acks 102/200/201/202/204 and redelivers everything else, so a service that
answers 200 when one of its processors was busy drops that processor's data. Run each
processor through :class:`Outcomes` and answer with :meth:`Outcomes.answer`::

    outcomes = Outcomes()
    for name, processor in processors.items():
        outcomes.run(name, lambda: processor.run(opts))
    answer = outcomes.answer()
    start_response(answer.status_line, list(answer.headers))
    return [answer.body_bytes()]

Each processor's outcome is one of:

========  ==============================================================  ===========
kind      what happened                                                   retry?
========  ==============================================================  ===========
done      it returned (anything but False)                                no
skipped   the service chose not to run it (:meth:`Outcomes.skip`)         no
busy      ``LockBusy`` (another instance holds the date), ``TriggerPending``  yes
          (the trigger is not published yet) or ``StoreUnavailable``
lost      ``LeaseLost`` or ``StaleFence``: another instance took the date  yes
failed    it returned False or raised anything else                       alert
========  ==============================================================  ===========

The answer: 200 with a JSON body when every processor is done or skipped; 503 with
``Retry-After`` when any is busy or lost (and none failed); 500 when any failed, with
``Retry-After`` too when another was busy or lost. Pub/Sub redelivers both 503 and 500
(processors are idempotent, so the ones already done re-run harmlessly); 500 is kept
for failures so they show as errors in the service's metrics and alerts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from .completion.outbox import TriggerPending
from .errors import ConfigError, LeaseLost, LockBusy, StaleFence, StoreUnavailable

__all__ = ["Answer", "Kind", "Outcome", "Outcomes", "outcome_of"]

log = logging.getLogger("processor_guard.outcomes")

Kind = Literal["done", "skipped", "busy", "lost", "failed"]
KINDS: tuple[Kind, ...] = ("done", "skipped", "busy", "lost", "failed")
#: Seconds a busy processor is retried after when the error gives no better estimate.
DEFAULT_RETRY_AFTER = 10.0


@dataclass(frozen=True)
class Outcome:
    """What one processor did with the message."""

    processor: str
    kind: Kind
    detail: str = ""
    #: Seconds until a retry can succeed (busy and lost only).
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Busy or lost: a redelivery is expected to succeed."""
        return self.kind in ("busy", "lost")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        out: dict[str, Any] = {"processor": self.processor, "outcome": self.kind}
        if self.detail:
            out["detail"] = self.detail
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


def outcome_of(
    processor: str, error: BaseException | None = None, result: object = None
) -> Outcome:
    """The outcome of a processor that raised ``error`` or returned ``result``."""
    if error is None:
        if result is False:
            return Outcome(processor, "failed", "the processor reported failure (returned False)")
        return Outcome(processor, "done")
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, LockBusy):
        wait = error.remaining if error.remaining is not None else DEFAULT_RETRY_AFTER
        return Outcome(processor, "busy", detail, _seconds(wait))
    if isinstance(error, TriggerPending):
        return Outcome(processor, "busy", detail, _seconds(error.retry_after))
    if isinstance(error, StoreUnavailable):
        return Outcome(processor, "busy", detail, DEFAULT_RETRY_AFTER)
    if isinstance(error, (LeaseLost, StaleFence)):
        # The date's new holder is running it now; a redelivery re-runs this processor
        # after it (the successor's data is never overwritten: the fence refuses).
        return Outcome(processor, "lost", detail, DEFAULT_RETRY_AFTER)
    return Outcome(processor, "failed", detail)


def _seconds(value: float) -> float:
    return float(max(1, math.ceil(value))) if math.isfinite(value) else DEFAULT_RETRY_AFTER


@dataclass(frozen=True)
class Answer:
    """The HTTP answer for one message: status, headers and a JSON body."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status_line(self) -> str:
        """``"503 Service Unavailable"``, as WSGI's ``start_response`` wants it."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    @property
    def acked(self) -> bool:
        """True when Pub/Sub takes this answer as an ack (and never redelivers)."""
        return self.status in (102, 200, 201, 202, 204)

    def body_bytes(self) -> bytes:
        """The body as JSON."""
        return json.dumps(self.body, sort_keys=True).encode()


@dataclass
class Outcomes:
    """The outcomes of the processors run for one message, folded into one answer."""

    items: list[Outcome] = field(default_factory=list)

    def run(self, processor: str, call: Callable[[], object]) -> Outcome:
        """Run one processor, record and return its outcome; only BaseExceptions that
        are not Exceptions (KeyboardInterrupt, SystemExit) leave."""
        try:
            result = call()
        except Exception as exc:
            outcome = outcome_of(processor, exc)
            if outcome.kind == "failed":
                log.exception("processor %s failed", processor)
            else:
                log.warning("processor %s %s: %s", processor, outcome.kind, outcome.detail)
        else:
            outcome = outcome_of(processor, result=result)
        self.items.append(outcome)
        return outcome

    def add(self, outcome: Outcome) -> Outcome:
        """Record an outcome the service determined itself."""
        if outcome.kind not in KINDS:
            raise ConfigError(
                f"outcome kind must be one of {', '.join(KINDS)}, got {outcome.kind!r}"
            )
        self.items.append(outcome)
        return outcome

    def skip(self, processor: str, reason: str) -> Outcome:
        """Record that the service did not run ``processor`` for this message."""
        return self.add(Outcome(processor, "skipped", reason))

    def of(self, kind: Kind) -> list[Outcome]:
        """The outcomes of one kind, in the order they were recorded."""
        return [o for o in self.items if o.kind == kind]

    def answer(self) -> Answer:
        """One HTTP answer for all the outcomes (see the module docstring)."""
        retry = [o for o in self.items if o.retryable]
        failed = self.of("failed")
        if failed:
            status, summary = 500, "failed"
        elif retry:
            status, summary = 503, "retry"
        else:
            status, summary = 200, "done"
        headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
        if retry:
            wait = max(o.retry_after or DEFAULT_RETRY_AFTER for o in retry)
            headers += (("Retry-After", str(int(wait))),)
        body = {
            "status": summary,
            "retryable": bool(retry) or bool(failed),
            "counts": {kind: len(self.of(kind)) for kind in KINDS},
            "outcomes": [o.to_dict() for o in self.items],
        }
        return Answer(status, body, headers)

"""The phase 3 -> phase 4 orchestrator as a Cloud Function, on ``CompletionTracker``.

Each phase-3 processor publishes one completion message per run (the upstream
pipeline's unified format)::

    {"processor_name": "PlayerGameSummaryProcessor", "output_table": "player_game_summary",
     "game_date": "2026-02-03", "execution_id": "def-456", "correlation_id": "abc-123",
     "status": "success", "record_count": 450,
     "metadata": {"is_incremental": true, "entities_changed": ["lebronjames"]}}

and this function, subscribed to that topic, records it and triggers phase 4 exactly
once per date. What replaces the hand-written version:

* the Firestore transaction, the ``_completed_count`` counter and the ``_triggered``
  flag: ``tracker.record`` (one compare-and-set per message; the count is derived from
  the entries, a duplicate message changes nothing);
* the mode-aware rule (overnight: all five; same day: the critical one): ``modes`` and
  ``record(mode=...)``; ``state.trigger_reason`` says which rule was met;
* ``entities_changed`` / ``is_incremental`` / ``correlation_id`` in each entry:
  ``record(metadata=...)``;
* "set ``_triggered`` then publish" (a crash in between loses the trigger): the outbox
  publishes, and a failed publish raises ``TriggerPending`` so the function fails and
  Pub/Sub redelivers the message, whose record publishes the pending trigger.

Deploy with ``--entry-point orchestrate`` and the environment
``PROCESSOR_GUARD_COMPLETION`` (``firestore://PROJECT``, or ``sqlite:///path`` locally)
and ``PROCESSOR_GUARD_PUBLISHER`` (``pubsub://projects/P/topics/nba-phase4-trigger``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from processor_guard import CompletionState, CompletionTracker, ConfigError
from processor_guard.completion.tracker import TriggerPending
from processor_guard.leases import parse_game_date

log = logging.getLogger(__name__)

EXPECTED = [
    "player_game_summary",
    "team_defense_game_summary",
    "team_offense_game_summary",
    "upcoming_player_game_context",
    "upcoming_team_game_context",
]
#: Overnight (yesterday's games, 6-8 AM ET) waits for all five; a same-day run (today's
#: or tomorrow's games) needs only what predictions read.
MODES = {"overnight": "all", "same_day": ["upcoming_player_game_context"]}
EASTERN = ZoneInfo("America/New_York")


def orchestration_mode(game_date: str, now: dt.datetime | None = None) -> str:
    """``overnight`` for a date before today (US Eastern), else ``same_day``."""
    today = (now or dt.datetime.now(EASTERN)).astimezone(EASTERN).date()
    return "overnight" if parse_game_date(game_date) < today else "same_day"


def processor_name(message: Mapping[str, Any]) -> str:
    """The table a message reports on: ``output_table``, else the class name in
    snake case without ``Processor`` (``PlayerGameSummaryProcessor`` -> ...)."""
    table = message.get("output_table")
    if isinstance(table, str) and table:
        return table
    raw = message.get("processor_name")
    if not isinstance(raw, str) or not raw:
        raise ConfigError("the message needs output_table or processor_name")
    name = re.sub(r"Processor$", "", raw)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The completion message of a Pub/Sub event: a background function's ``event``
    (``{"data": base64}``) or a CloudEvent's data (``{"message": {"data": base64}}``)."""
    envelope = event.get("message", event)
    try:
        message = json.loads(base64.b64decode(envelope["data"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a Pub/Sub event with a JSON message: {exc!r}") from None
    if not isinstance(message, dict):
        raise ConfigError("the completion message must be a JSON object")
    return message


def make_orchestrator(
    tracker: CompletionTracker, now: Callable[[], dt.datetime] | None = None
) -> Callable[[Mapping[str, Any], Any], CompletionState | None]:
    """The Cloud Function body around ``tracker``; ``now`` picks the mode (tests)."""

    def orchestrate(event: Mapping[str, Any], context: Any = None) -> CompletionState | None:
        try:
            message = parse_event(event)
            name = processor_name(message)
            day = message.get("game_date")
            if not isinstance(day, str):
                raise ConfigError("the message needs game_date (YYYY-MM-DD)")
            mode = orchestration_mode(day, now() if now else None)
            metadata = dict(message.get("metadata") or {})
            metadata["correlation_id"] = message.get("correlation_id")
            state = tracker.record(
                day,
                name,
                execution_id=str(message.get("execution_id") or ""),
                status=str(message.get("status") or "success"),
                record_count=message.get("record_count"),
                metadata=metadata,
                mode=mode,
            )
        except ConfigError as bad:
            # A message that can never be recorded: acked (returning), and logged for
            # the alert; Pub/Sub's dead-letter topic is the other choice.
            log.error("dropping a malformed completion message: %s", bad)
            return None
        if state.waiting_for_publish:
            # Failing the function makes Pub/Sub redeliver; the redelivery publishes.
            raise TriggerPending(state)
        if state.triggered and not state.duplicate:
            log.info(
                "phase 4 for %s: triggered (%s), message %s",
                day,
                state.trigger_reason,
                state.message_id,
            )
        return state

    return orchestrate


_orchestrate: Callable[[Mapping[str, Any], Any], CompletionState | None] | None = None


def orchestrate(event: Mapping[str, Any], context: Any = None) -> CompletionState | None:
    """The deployed entry point: clients are built on the first call and then reused."""
    global _orchestrate
    if _orchestrate is None:
        from processor_guard.cli import completion_client, publisher

        tracker = CompletionTracker(
            completion_client(os.environ["PROCESSOR_GUARD_COMPLETION"]),
            "phase3",
            EXPECTED,
            publisher(os.environ["PROCESSOR_GUARD_PUBLISHER"]),
            modes=MODES,
            success_statuses=("success", "partial"),
        )
        _orchestrate = make_orchestrator(tracker)
    return _orchestrate(event, context)

"""The Cloud-Function-shaped phase 3 -> 4 orchestrator (examples/phase3_orchestrator.py)
records processor messages and triggers phase 4 exactly once, on the SQLite document
client and the real Firestore emulator (issue 14, item 7)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fixtures.health import Recorder
from processor_guard import CompletionTracker
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.tracker import TriggerPending

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import phase3_orchestrator as orch

DAY = "2026-02-03"
MORNING_AFTER = dt.datetime(2026, 2, 4, 7, 0, tzinfo=orch.EASTERN)
SAME_DAY = dt.datetime(2026, 2, 3, 10, 30, tzinfo=orch.EASTERN)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SQLiteDocumentClient(tmp_path / "completion.db")
    return request.getfixturevalue("firestore_client")


def tracker(client: Any, publish: Any) -> CompletionTracker:
    return CompletionTracker(
        client,
        "phase3",
        orch.EXPECTED,
        publish,
        modes=orch.MODES,
        success_statuses=("success", "partial"),
    )


def event(table: str, execution_id: str, *, day: str = DAY, **extra: Any) -> dict[str, Any]:
    words = "".join(part.title() for part in table.split("_"))
    message = {
        "processor_name": f"{words}Processor",
        "game_date": day,
        "execution_id": execution_id,
        "correlation_id": "corr-1",
        "status": "success",
        "record_count": 10,
        "metadata": {"is_incremental": False, "entities_changed": [f"{table}-e"]},
        **extra,
    }
    return {"data": base64.b64encode(json.dumps(message).encode()).decode()}


def test_overnight_five_messages_with_repeats_from_three_threads_trigger_once(
    client: Any,
) -> None:
    pub = Recorder()
    run = orch.make_orchestrator(tracker(client, pub), now=lambda: MORNING_AFTER)
    events = [event(t, f"exec-{t}") for t in orch.EXPECTED] * 3
    errors: list[BaseException] = []
    redeliver: list[dict[str, Any]] = []

    def deliver(batch: list[dict[str, Any]]) -> None:
        for e in batch:
            try:
                run(e, None)
            except TriggerPending:
                # Another delivery holds the publish claim: retryable, Pub/Sub redelivers.
                redeliver.append(e)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(events[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for e in redeliver:
        assert run(e, None) is not None
    assert len(pub.calls) == 1
    state = tracker(client, pub).state(DAY)
    assert state.triggered and state.count == 5 and state.mode == "overnight"
    assert state.trigger_reason == "all expected complete (5/5), mode overnight"
    entry = state.entries["player_game_summary"]
    assert entry["correlation_id"] == "corr-1"
    assert entry["entities_changed"] == ["player_game_summary-e"]
    assert entry["is_incremental"] is False


def test_same_day_triggers_on_the_critical_processor_alone(client: Any) -> None:
    pub = Recorder()
    run = orch.make_orchestrator(tracker(client, pub), now=lambda: SAME_DAY)
    state = run(event("upcoming_team_game_context", "a"), None)
    assert state is not None and not state.triggered
    state = run(event("upcoming_player_game_context", "b"), None)
    assert state is not None and state.triggered and len(pub.calls) == 1
    assert state.trigger_reason is not None and state.trigger_reason.endswith("mode same_day")
    published_state = pub.calls[0][1]
    assert published_state.dedup_id == f"phase3/{DAY}"


def test_a_failed_publish_fails_the_function_and_the_redelivery_publishes(client: Any) -> None:
    pub = Recorder(fail_next=1)
    run = orch.make_orchestrator(tracker(client, pub), now=lambda: SAME_DAY)
    message = event("upcoming_player_game_context", "b")
    with pytest.raises(TriggerPending):
        run(message, None)
    assert pub.calls == []
    state = run(message, None)  # Pub/Sub redelivers the same message
    assert state is not None and state.triggered and state.duplicate
    assert len(pub.calls) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"data": "not base64 json"},
        {"data": base64.b64encode(b"[1, 2]").decode()},
        event("player_game_summary", "", day=DAY),
        event("player_game_summary", "x", day="02/03/2026"),
        event("player_game_summary", "x", metadata={"status": "overwrite"}),
    ],
)
def test_a_malformed_message_is_dropped_and_writes_nothing(client: Any, bad: Any) -> None:
    pub = Recorder()
    t = tracker(client, pub)
    assert orch.make_orchestrator(t, now=lambda: SAME_DAY)(bad, None) is None
    assert not t.state(DAY).exists and pub.calls == []


def test_the_cloud_event_shape_and_class_names_are_understood(client: Any) -> None:
    pub = Recorder()
    run = orch.make_orchestrator(tracker(client, pub), now=lambda: MORNING_AFTER)
    state = run({"message": event("team_offense_game_summary", "x")}, None)
    assert state is not None and state.completed == ("team_offense_game_summary",)
    assert orch.orchestration_mode(DAY, SAME_DAY) == "same_day"
    assert orch.orchestration_mode(DAY, MORNING_AFTER) == "overnight"


def test_the_deployed_entry_point_reads_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "phase4.jsonl"
    (tmp_path / "c.db").touch()
    monkeypatch.setenv("PROCESSOR_GUARD_COMPLETION", f"sqlite://{tmp_path / 'c.db'}")
    monkeypatch.setenv("PROCESSOR_GUARD_PUBLISHER", f"file://{out}")
    monkeypatch.setattr(orch, "_orchestrate", None)
    for table in orch.EXPECTED:
        orch.orchestrate(event(table, f"e-{table}", day="2020-01-02"), None)
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["dedup_id"] == "phase3/2020-01-02"

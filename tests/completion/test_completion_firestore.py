"""CompletionTracker on the real Firestore emulator: exact counts, exactly-once trigger."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest

from fixtures.health import Recorder
from processor_guard import CompletionTracker, ConfigError

pytestmark = pytest.mark.firestore

EXPECTED = [
    "player_game_summary",
    "team_offense_game_summary",
    "team_defense_game_summary",
    "upcoming_player_game_context",
    "upcoming_team_game_context",
]
DATE = "2026-02-03"


def tracker(client: Any, publish: Any, **kwargs: Any) -> CompletionTracker:
    return CompletionTracker(client, phase="phase3", expected=EXPECTED, publish=publish, **kwargs)


def test_single_record_builds_the_document(firestore_client: Any) -> None:
    pub = Recorder()
    t = tracker(firestore_client, pub)
    state = t.record(DATE, "player_game_summary", execution_id="run-1", record_count=348)
    assert state.completed == ("player_game_summary",)
    assert state.count == 1 and state.stored_count == 1
    assert state.missing == tuple(EXPECTED[1:])
    assert not state.should_trigger and not state.triggered and not state.duplicate
    doc = firestore_client.collection("phase3_completion").document(DATE).get().to_dict()
    assert doc["player_game_summary"]["record_count"] == 348
    assert doc["player_game_summary"]["execution_id"] == "run-1"
    assert doc["_completed_count"] == 1
    assert doc["_triggered"] is False and doc["_trigger_pending"] is False
    again = t.record(DATE, "player_game_summary", execution_id="run-1", record_count=348)
    assert again.duplicate
    assert pub.calls == []


@pytest.mark.slow
def test_thousand_messages_three_threads_exact_count_one_publish(firestore_client: Any) -> None:
    """1,000 messages, 30% duplicates, shuffled, from 3 threads: exact, one trigger."""
    rng = random.Random(20260203)
    unique: list[tuple[str, str, str]] = []
    names = [*EXPECTED, "PlayerGameSummaryProcessor", "legacy_orchestrator"]
    for i in range(700):
        name = names[i % len(names)]
        # A few executions fail before a later one succeeds.
        status = "failed" if i % 11 == 0 else "success"
        unique.append((name, f"exec-{i:04d}", status))
    messages = unique + [rng.choice(unique) for _ in range(300)]
    rng.shuffle(messages)
    assert len(messages) == 1000

    pub = Recorder()
    t = tracker(firestore_client, pub)
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[str, str, str]]) -> None:
        try:
            for name, execution_id, status in chunk:
                t.record(DATE, name, execution_id=execution_id, status=status, record_count=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(messages[i::3],)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []

    state = t.state(DATE)
    assert state.count == 5 and state.stored_count == 5
    assert state.completed == tuple(EXPECTED)
    assert set(state.unexpected) == {"PlayerGameSummaryProcessor", "legacy_orchestrator"}
    assert state.triggered and not state.trigger_pending
    assert len(pub.calls) == 1
    assert pub.calls[0][0] == DATE
    assert pub.calls[0][1].dedup_id == "phase3/2026-02-03"
    assert state.message_id == "msg-1"

    doc = t.doc_ref(DATE).get().to_dict()
    # Every distinct execution was stored exactly once: no lost update, no double count.
    assert doc["_executions_recorded"] == len(unique)
    per_name = Counter(name for name, _, _ in unique)
    for name, n in per_name.items():
        assert len(doc[name]["executions"]) == n


def test_failed_publish_is_retried_by_the_next_record_even_a_duplicate(
    firestore_client: Any,
) -> None:
    pub = Recorder(fail_next=1)
    t = tracker(firestore_client, pub)
    for i, name in enumerate(EXPECTED):
        state = t.record(DATE, name, execution_id=f"run-{i}")
    assert pub.failures == 1 and pub.calls == []
    assert state.should_trigger and state.trigger_pending and not state.triggered
    assert state.publish_error is not None and "pubsub unavailable" in state.publish_error
    doc = t.doc_ref(DATE).get().to_dict()
    assert doc["_trigger_pending"] is True and doc["_triggered"] is False
    assert "_trigger_claim" not in doc

    retried = t.record(DATE, EXPECTED[-1], execution_id=f"run-{len(EXPECTED) - 1}")
    assert retried.duplicate
    assert retried.triggered and not retried.trigger_pending
    assert retried.message_id == "msg-1"
    assert len(pub.calls) == 1
    # Nothing more is published afterwards.
    t.record(DATE, EXPECTED[0], execution_id="run-0")
    t.publish_pending(DATE)
    assert len(pub.calls) == 1


def test_unexpected_names_are_stored_but_never_counted(firestore_client: Any) -> None:
    pub = Recorder()
    t = tracker(firestore_client, pub)
    for i in range(4):
        t.record(DATE, EXPECTED[i], execution_id=f"run-{i}")
    for bogus in ("PlayerGameSummaryProcessor", "player_game_summary_v2", "phase3_extra"):
        state = t.record(DATE, bogus, execution_id="x")
    assert state.count == 4 and state.stored_count == 4
    assert not state.should_trigger and pub.calls == []
    assert set(state.unexpected) == {
        "PlayerGameSummaryProcessor",
        "player_game_summary_v2",
        "phase3_extra",
    }
    doc = t.doc_ref(DATE).get().to_dict()
    assert doc["_completed_count"] == 4
    assert "PlayerGameSummaryProcessor" in doc


def test_failure_then_success_counts_and_success_is_sticky(firestore_client: Any) -> None:
    t = tracker(firestore_client, Recorder())
    s = t.record(DATE, "player_game_summary", execution_id="a", status="failed")
    assert s.count == 0
    s = t.record(DATE, "player_game_summary", execution_id="b", status="success")
    assert s.count == 1
    s = t.record(DATE, "player_game_summary", execution_id="c", status="failed")
    assert s.count == 1
    assert s.entries["player_game_summary"]["status"] == "failed"


def test_critical_plus_fraction_rule(firestore_client: Any) -> None:
    pub = Recorder()
    t = tracker(
        firestore_client,
        pub,
        critical=["player_game_summary"],
        fraction=0.5,
        collection="phase3_rule_test",
    )
    t.record(DATE, "team_offense_game_summary", execution_id="1")
    s = t.record(DATE, "team_defense_game_summary", execution_id="1")
    assert not s.should_trigger  # two of four others, but the critical one is missing
    s = t.record(DATE, "player_game_summary", execution_id="1")
    assert s.should_trigger and s.triggered and len(pub.calls) == 1
    assert firestore_client.collection("phase3_rule_test").document(DATE).get().exists


def test_live_claim_blocks_a_second_publisher_until_it_expires(firestore_client: Any) -> None:
    """A crashed publisher's claim stops others until claim_ttl passes; then one re-claims."""
    from google.cloud import firestore

    pub = Recorder()
    t = tracker(firestore_client, pub, claim_ttl=3600)
    ref = t.doc_ref(DATE)
    for i, name in enumerate(EXPECTED[:-1]):
        t.record(DATE, name, execution_id=f"run-{i}")
    # Simulate a publisher that claimed the trigger and died before publishing.
    t_dead = tracker(firestore_client, None)
    t_dead.record(DATE, EXPECTED[-1], execution_id="run-4")
    ref.update(
        {
            "_trigger_claim": {
                "owner": "dead-host:1",
                "token": "t0",
                "claimed_at": firestore.SERVER_TIMESTAMP,
                "ttl": 3600,
            }
        }
    )
    state = t.publish_pending(DATE)
    assert pub.calls == [] and state.trigger_pending and not state.triggered
    # An expired claim (ttl 0 s) is taken over and published exactly once.
    ref.update({"_trigger_claim.ttl": 0})
    state = t.publish_pending(DATE)
    assert state.triggered and len(pub.calls) == 1
    assert "_trigger_claim" not in ref.get().to_dict()


def test_no_publish_callable_leaves_trigger_pending(firestore_client: Any) -> None:
    t = tracker(firestore_client, None)
    for i, name in enumerate(EXPECTED):
        state = t.record(DATE, name, execution_id=f"r{i}")
    assert state.trigger_pending and not state.triggered
    assert state.publish_error == "no publish callable configured"


def test_publish_returning_no_id_counts_as_failure(firestore_client: Any) -> None:
    t = tracker(firestore_client, lambda d, s: "")
    for i, name in enumerate(EXPECTED):
        state = t.record(DATE, name, execution_id=f"r{i}")
    assert state.trigger_pending and not state.triggered
    assert state.publish_error is not None and "message id" in state.publish_error


@pytest.mark.parametrize(
    "kwargs",
    [
        {"game_date": "2026-2-3", "processor": "player_game_summary", "execution_id": "x"},
        {"game_date": DATE, "processor": "_completed_count", "execution_id": "x"},
        {"game_date": DATE, "processor": "a.b", "execution_id": "x"},
        {"game_date": DATE, "processor": "player_game_summary", "execution_id": ""},
        {
            "game_date": DATE,
            "processor": "player_game_summary",
            "execution_id": "x",
            "record_count": -1,
        },
    ],
)
def test_bad_input_is_a_config_error_and_writes_nothing(
    firestore_client: Any, kwargs: dict[str, Any]
) -> None:
    t = tracker(firestore_client, Recorder())
    with pytest.raises(ConfigError):
        t.record(**kwargs)
    assert list(firestore_client.collection("phase3_completion").stream()) == []


class Crash(BaseException):
    """The process dies inside publish (after the transport accepted the message)."""


def test_crash_between_publish_and_mark_duplicates_once_with_same_dedup_id(
    firestore_client: Any,
) -> None:
    sent: list[str] = []

    def publish_then_die(game_date: str, state: Any) -> str:
        sent.append(state.dedup_id)
        raise Crash

    dying = tracker(firestore_client, publish_then_die, claim_ttl=3600)
    for i, name in enumerate(EXPECTED[:-1]):
        dying.record(DATE, name, execution_id=f"r{i}")
    with pytest.raises(Crash):
        dying.record(DATE, EXPECTED[-1], execution_id="r4")
    doc = dying.doc_ref(DATE).get().to_dict()
    assert doc["_trigger_pending"] is True and "_trigger_claim" in doc

    pub = Recorder()
    survivor = tracker(firestore_client, pub)
    # While the dead publisher's claim is live nobody publishes again...
    assert not survivor.record(DATE, EXPECTED[0], execution_id="r0").triggered
    assert pub.calls == []
    # ...once it has expired, exactly one more publish carries the same dedup id.
    dying.doc_ref(DATE).update({"_trigger_claim.ttl": 0})
    state = survivor.record(DATE, EXPECTED[0], execution_id="r0")
    assert state.triggered and len(pub.calls) == 1
    assert sent == [pub.calls[0][1].dedup_id] == ["phase3/2026-02-03"]
    assert survivor.doc_ref(DATE).get().to_dict()["_trigger_attempts"] == 2


def test_concurrent_publishers_never_both_publish(firestore_client: Any) -> None:
    gate = threading.Event()
    calls: list[str] = []

    def slow_publish(game_date: str, state: Any) -> str:
        calls.append(game_date)
        gate.wait(5)
        return "m-1"

    t = tracker(firestore_client, None)
    for i, name in enumerate(EXPECTED):
        t.record(DATE, name, execution_id=f"r{i}")
    assert t.state(DATE).trigger_pending
    publishers = [tracker(firestore_client, slow_publish) for _ in range(4)]
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda p=p: results.append(p.publish_pending(DATE)))
        for p in publishers
    ]
    for th in threads:
        th.start()
    while not calls:
        threading.Event().wait(0.01)
    gate.set()
    for th in threads:
        th.join()
    assert len(calls) == 1
    assert t.state(DATE).triggered and t.state(DATE).message_id == "m-1"

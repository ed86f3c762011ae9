"""Completion means coverage, record is tied to the lease, the claim outlives the publish.

Runs on the local SQLite document store (the same compare-and-set contract as Firestore)
and a SQLite lease store, so every case is a real write and a real lease.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.health import Recorder
from processor_guard import CompletionState, CompletionTracker, ConfigError, LeaseLost, StaleFence
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.tracker import TriggerPending
from processor_guard.leases import date_lock
from processor_guard.stores import open_store

DATE = "2026-02-03"
GAMES = [f"002250{n:04d}" for n in range(10)]
PROCS = ["player_game_summary", "team_offense_game_summary"]


@pytest.fixture
def docs(tmp_path: Path) -> SQLiteDocumentClient:
    return SQLiteDocumentClient(tmp_path / "completion.db")


def schedule(_day: str) -> list[str]:
    return list(GAMES)


def test_first_batch_of_two_games_completes_nothing_full_date_triggers_once(
    docs: SQLiteDocumentClient,
) -> None:
    pub = Recorder()
    t = CompletionTracker(docs, "phase3", PROCS, pub, required=schedule)
    for p in PROCS:
        state = t.record(DATE, p, execution_id=f"{p}-batch1", record_count=70, covered=GAMES[:2])
    assert state.completed == () and not state.trigger_pending and pub.calls == []
    assert state.uncovered == {p: GAMES[2:] for p in PROCS}
    # The second batch widens coverage to all 10 games: now, and only now, it triggers.
    t.record(DATE, PROCS[0], execution_id="pgs-full", record_count=348, covered=GAMES[2:])
    assert pub.calls == []
    state = t.record(DATE, PROCS[1], execution_id="tos-full", record_count=20, covered=GAMES)
    assert state.completed == tuple(PROCS) and state.triggered
    assert len(pub.calls) == 1
    again = t.record(DATE, PROCS[1], execution_id="tos-full-2", record_count=20, covered=GAMES)
    assert again.triggered and len(pub.calls) == 1


def test_failed_run_covers_nothing(docs: SQLiteDocumentClient) -> None:
    t = CompletionTracker(docs, "phase3", PROCS[:1], Recorder(), required=schedule)
    state = t.record(DATE, PROCS[0], execution_id="r1", status="failed", covered=GAMES)
    assert state.completed == () and state.entries[PROCS[0]].get("covered") == []


def test_covered_is_mandatory_when_the_date_declares_what_it_needs(
    docs: SQLiteDocumentClient,
) -> None:
    t = CompletionTracker(docs, "phase3", PROCS, Recorder(), required=schedule)
    with pytest.raises(ConfigError, match="covered is required"):
        t.record(DATE, PROCS[0], execution_id="r1")
    with pytest.raises(ConfigError, match="covered must be a list"):
        t.record(DATE, PROCS[0], execution_id="r1", covered="0022500001")
    assert not t.state(DATE).exists


def test_record_under_a_lost_lease_raises_and_writes_nothing(
    docs: SQLiteDocumentClient, tmp_path: Path
) -> None:
    pub = Recorder()
    t = CompletionTracker(docs, "phase3", PROCS[:1], pub)
    store = open_store(f"sqlite:///{tmp_path / 'leases.db'}")
    now = [0.0]
    # The outer raises: the with block reports the loss again at its exit.
    with (
        pytest.raises(LeaseLost),
        date_lock(PROCS[0], DATE, store=store, ttl=5, clock=lambda: now[0]),
    ):
        now[0] = 6.0  # the process was paused past its lease's deadline
        with pytest.raises(LeaseLost, match="deadline passed"):
            t.record(DATE, PROCS[0], execution_id="r1")
    assert not t.state(DATE).exists and pub.calls == []


def test_record_stores_the_fence_and_a_stale_fence_cannot_complete(
    docs: SQLiteDocumentClient, tmp_path: Path
) -> None:
    pub = Recorder()
    t = CompletionTracker(docs, "phase3", PROCS[:1], pub, required=schedule)
    store = open_store(f"sqlite:///{tmp_path / 'leases.db'}")
    with date_lock(PROCS[0], DATE, store=store, ttl=0.3) as old:
        pass
    with date_lock(PROCS[0], DATE, store=store, ttl=5) as new:
        t.record(DATE, PROCS[0], execution_id="new-batch", covered=GAMES[:2])
    assert t.state(DATE).entries[PROCS[0]]["fence"] == new.fence > old.fence
    # The old holder (paused, then resumed) reports the full date with its old fence.
    with pytest.raises(StaleFence):
        t.record(DATE, PROCS[0], execution_id="old-full", covered=GAMES, lease=_live(old))
    state = t.state(DATE)
    assert state.completed == () and pub.calls == []


def _live(lease: Any) -> Any:
    """The old lease as a holder paused between its check and its write sees it: valid
    locally. (The document's stored fence is what must refuse it.)"""

    class Resumed:
        key, fence, scope, game_date = lease.key, lease.fence, lease.scope, lease.game_date

        def check(self) -> None:
            return None

    return Resumed()


def test_pending_trigger_says_who_claimed_it_until_when(docs: SQLiteDocumentClient) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_publish(day: str, state: CompletionState) -> str:
        started.set()
        release.wait(10)
        return "msg-slow"

    first = CompletionTracker(docs, "phase3", PROCS[:1], slow_publish, owner="endpoint-a")
    second = CompletionTracker(docs, "phase3", PROCS[:1], Recorder(), owner="endpoint-b")
    worker = threading.Thread(
        target=first.record, args=(DATE, PROCS[0]), kwargs={"execution_id": "r1"}
    )
    worker.start()
    assert started.wait(10)
    redelivery = second.record(DATE, PROCS[0], execution_id="r1")
    release.set()
    worker.join()
    assert redelivery.waiting_for_publish and redelivery.publish_error is None
    assert redelivery.claimed_by == "endpoint-a" and redelivery.claimed_until is not None
    pending = TriggerPending(redelivery)
    assert "claimed by endpoint-a until" in str(pending) and pending.retry_after >= 1
    assert redelivery.to_dict()["claimed_until"] == redelivery.claimed_until.isoformat()


def test_claim_is_renewed_while_a_slow_publish_runs(docs: SQLiteDocumentClient) -> None:
    """claim_ttl 0.6 s, publish 2 s: a second caller after the ttl must not publish."""
    calls: list[str] = []
    started = threading.Event()

    def slow_publish(day: str, state: CompletionState) -> str:
        calls.append("slow")
        started.set()
        time.sleep(2.0)
        return "msg-slow"

    fast = Recorder()
    first = CompletionTracker(docs, "phase3", PROCS[:1], slow_publish, claim_ttl=0.6)
    second = CompletionTracker(docs, "phase3", PROCS[:1], fast, claim_ttl=0.6)
    worker = threading.Thread(
        target=first.record, args=(DATE, PROCS[0]), kwargs={"execution_id": "r1"}
    )
    worker.start()
    assert started.wait(10)
    time.sleep(1.0)  # past the claim's ttl
    second.publish_pending(DATE)
    worker.join()
    assert calls == ["slow"] and fast.calls == []
    assert first.state(DATE).message_id == "msg-slow"

"""Several processors per message: ``processor_guard.outcomes`` folds their outcomes
into one answer, and ``examples/analytics_service.py`` serves it as a real HTTP process
(issue 14, item 6)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fixtures.services import free_port, port_open, spawn, stop_process, wait_until
from processor_guard import ConfigError, LeaseLost, LockBusy, StaleFence, StoreUnavailable
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.state import CompletionState
from processor_guard.completion.tracker import TriggerPending
from processor_guard.demo.data import DEMO_DATE, games_for
from processor_guard.leases import date_lock
from processor_guard.outcomes import Outcome, Outcomes, outcome_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY = DEMO_DATE.isoformat()
PLAYERS = sum(g.player_count for g in games_for())
TEAMS = 2 * len(games_for())


# ------------------------------------------------------------------ the fold


def fold(*outcomes: Outcome) -> Any:
    collected = Outcomes()
    for outcome in outcomes:
        collected.add(outcome)
    return collected.answer()


def test_all_done_or_skipped_is_200_and_acked() -> None:
    answer = fold(Outcome("a", "done"), Outcome("b", "skipped", "not asked"))
    assert answer.status == 200 and answer.acked
    assert answer.body["counts"]["done"] == 1 and answer.body["counts"]["skipped"] == 1
    assert dict(answer.headers).get("Retry-After") is None
    assert answer.status_line == "200 OK"


def test_one_busy_among_done_is_a_retryable_503_with_the_longest_wait() -> None:
    answer = fold(
        Outcome("a", "done"), Outcome("b", "busy", "x", 4.0), Outcome("c", "lost", "y", 9.0)
    )
    assert answer.status == 503 and not answer.acked and answer.body["retryable"]
    assert dict(answer.headers)["Retry-After"] == "9"
    assert answer.status_line == "503 Service Unavailable"
    assert [o["outcome"] for o in json.loads(answer.body_bytes())["outcomes"]] == [
        "done",
        "busy",
        "lost",
    ]


def test_a_failure_is_500_and_still_says_when_to_retry_the_busy_one() -> None:
    answer = fold(Outcome("a", "failed", "boom"), Outcome("b", "busy", "x", 3.0))
    assert answer.status == 500 and not answer.acked
    assert dict(answer.headers)["Retry-After"] == "3"


def state(**kw: Any) -> CompletionState:
    base: dict[str, Any] = dict(
        phase="phase3",
        game_date=DAY,
        expected=("a",),
        completed=("a",),
        unexpected=(),
        stored_count=1,
        should_trigger=True,
        trigger_pending=True,
        triggered=False,
        publish_error="down",
    )
    return CompletionState(**{**base, **kw})


@pytest.mark.parametrize(
    ("error", "result", "kind"),
    [
        (None, True, "done"),
        (None, None, "done"),
        (None, False, "failed"),
        (LockBusy("pgs:2026-02-03", "other", 12.2), None, "busy"),
        (LockBusy("pgs:2026-02-03", None, None), None, "busy"),
        (TriggerPending(state()), None, "busy"),
        (StoreUnavailable("redis down"), None, "busy"),
        (LeaseLost("pgs:2026-02-03", "me", 7, "taken over"), None, "lost"),
        (StaleFence("pgs", 1, 2, DAY), None, "lost"),
        (ConfigError("bad opts"), None, "failed"),
        (ValueError("bug"), None, "failed"),
    ],
)
def test_each_error_maps_to_its_outcome(error: Any, result: Any, kind: str) -> None:
    outcome = outcome_of("pgs", error, result)
    assert outcome.kind == kind
    assert (outcome.retry_after is not None) == outcome.retryable
    if kind == "busy" and isinstance(error, LockBusy) and error.remaining:
        assert outcome.retry_after == 13.0


def test_run_catches_exceptions_but_not_keyboard_interrupt() -> None:
    outcomes = Outcomes()
    assert outcomes.run("a", lambda: 1 / 0).kind == "failed"
    assert outcomes.run("b", lambda: True).kind == "done"

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outcomes.run("c", interrupted)
    assert [o.processor for o in outcomes.items] == ["a", "b"]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="outcome kind"):
        Outcomes().add(Outcome("a", "maybe"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the service


def push(
    port: int, payload: dict[str, Any], message_id: str = "1"
) -> tuple[int, dict[str, str], Any]:
    body = {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": message_id,
        },
        "subscription": "projects/p/subscriptions/analytics",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(raw) if raw else None
    finally:
        conn.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[int, Path, str]]:
    """``python examples/analytics_service.py`` as Cloud Run starts it (on loopback)."""
    port = free_port()
    store = f"sqlite:///{tmp_path}/leases.db"
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "PROCESSOR_GUARD_STORE": store,
        "PROCESSOR_GUARD_PUBLISHER": f"file://{tmp_path}/triggers.jsonl",
        "PROCESSOR_GUARD_EXPECTED": "player_game_summary,team_offense_game_summary",
    }
    proc = spawn(
        [sys.executable, str(EXAMPLES / "analytics_service.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), 60, "examples/analytics_service.py")
        yield port, tmp_path, store
    finally:
        stop_process(proc)


def counts(folder: Path) -> dict[str, tuple[int, int]]:
    keys = {"player_game_summary": "player_lookup", "team_offense_game_summary": "team_abbr"}
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as con:
        out = {}
        for table, key in keys.items():
            row = con.execute(
                f"SELECT COUNT(*), COUNT(DISTINCT (game_date, {key})) FROM {table}"
            ).fetchone()
            assert row is not None
            out[table] = (int(row[0]), int(row[1]))
        return out


def test_a_busy_processor_makes_the_message_retryable_and_the_redelivery_completes(
    service: tuple[int, Path, str],
) -> None:
    port, folder, store = service
    with date_lock("team_offense_game_summary", DAY, store=store, ttl=30, owner="other"):
        status, headers, body = push(port, {"game_date": DAY}, "m1")
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1
    kinds = {o["processor"]: o["outcome"] for o in body["outcomes"]}
    assert kinds == {"player_game_summary": "done", "team_offense_game_summary": "busy"}
    assert counts(folder)["team_offense_game_summary"] == (0, 0), "the busy one wrote nothing"

    # Pub/Sub redelivers: both run (the done one idempotently), the date triggers once.
    status, _, body = push(port, {"game_date": DAY}, "m1")
    assert status == 200, body
    assert body["counts"]["done"] == 2
    assert counts(folder) == {
        "player_game_summary": (PLAYERS, PLAYERS),
        "team_offense_game_summary": (TEAMS, TEAMS),
    }
    triggers = (folder / "triggers.jsonl").read_text().splitlines()
    assert len(triggers) == 1 and json.loads(triggers[0])["dedup_id"] == f"phase3/{DAY}"
    docs = SQLiteDocumentClient(folder / "completion.db")
    try:
        data = docs.collection("phase3_completion").document(DAY).get().to_dict()
    finally:
        docs.close()
    assert data["_triggered"] is True


def test_skipped_processors_and_malformed_messages(service: tuple[int, Path, str]) -> None:
    port, folder, _ = service
    status, _, body = push(port, {"game_date": DAY, "processors": ["player_game_summary"]})
    assert status == 200
    kinds = {o["processor"]: o["outcome"] for o in body["outcomes"]}
    assert kinds == {"player_game_summary": "done", "team_offense_game_summary": "skipped"}
    assert counts(folder)["team_offense_game_summary"] == (0, 0)
    status, _, body = push(port, {"game_date": DAY, "processors": ["nope"]})
    assert status == 400 and "processors" in body["detail"]
    status, _, body = push(port, {"game_date": "yesterday"})
    assert status == 400 and "game_date" in body["detail"]

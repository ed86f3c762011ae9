"""The incident end to end, on real parts: Google's Pub/Sub emulator pushes the incident's
messages (a first batch of 2 games, the full date twice, a second date) to three
push-endpoint processes, one push subscription each, with leases on Redis or on the
Firestore emulator and one DuckDB warehouse file.

Every date must end with its exact rows, completion only after full coverage, exactly
one trigger per date (read from a pull subscription on the trigger topic), and no lease
left held.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fixtures.pubsub_emulator import HOST_ENV, PubSubEmulator
from fixtures.services import free_port, port_open, spawn, stop_process, wait_until
from processor_guard import open_store
from processor_guard.demo.data import DEMO_DATE, games_for

pytestmark = [pytest.mark.slow, pytest.mark.pubsub]

ROOT = Path(__file__).resolve().parents[2]
DATES = [DEMO_DATE, DEMO_DATE + dt.timedelta(days=1)]
ENDPOINTS = 3
DEADLINE = 240.0


class Stack:
    """Where the endpoints keep leases and completion documents."""

    def __init__(self, store_url: str, completion_url: str) -> None:
        self.store_url = store_url
        self.completion_url = completion_url


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("firestore", marks=pytest.mark.firestore),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    if request.param == "redis":
        completion = tmp_path / "completion.db"
        completion.touch()
        return Stack(request.getfixturevalue("redis_url"), f"sqlite:///{completion}")
    emulator = request.getfixturevalue("firestore_emulator")
    return Stack(f"firestore://{emulator.project}", f"firestore://{emulator.project}")


def _endpoints(
    tmp_path: Path, stack: Stack, pubsub: PubSubEmulator, trigger_topic: str, phase: str
) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(ENDPOINTS)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        HOST_ENV: pubsub.host,
        "PROCESSOR_GUARD_STORE": stack.store_url,
        "PROCESSOR_GUARD_COMPLETION": stack.completion_url,
        "PROCESSOR_GUARD_WAREHOUSE": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "PROCESSOR_GUARD_PUBLISHER": f"pubsub://{trigger_topic}",
        "PROCESSOR_GUARD_EXPECTED": "player_game_summary",
        "PROCESSOR_GUARD_PHASE": phase,  # its own completion collection on a shared emulator
    }
    procs = []
    for i, port in enumerate(ports):
        with open(tmp_path / f"endpoint-{i}.log", "wb") as log:
            procs.append(
                spawn(
                    [sys.executable, str(ROOT / "examples" / "push_endpoint.py")],
                    env={**env, "PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        for port in ports:
            wait_until(lambda p=port: port_open(p), 60, f"push endpoint on {port}")
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


def _pull(subscriber: Any, subscription: str, seconds: float) -> list[dict[str, Any]]:
    from google.api_core import exceptions as gexc

    got: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            resp = subscriber.pull(
                request={"subscription": subscription, "max_messages": 20}, timeout=2
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            continue
        if resp.received_messages:
            for m in resp.received_messages:
                got.append({**json.loads(m.message.data), **dict(m.message.attributes)})
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [m.ack_id for m in resp.received_messages],
                }
            )
        else:
            time.sleep(0.2)
    return got


def test_incident_messages_end_with_exact_rows_and_one_trigger_per_date(
    tmp_path: Path, stack: Stack, pubsub_emulator: PubSubEmulator
) -> None:
    project = pubsub_emulator.project
    run = uuid.uuid4().hex[:8]
    publisher, subscriber = pubsub_emulator.publisher(), pubsub_emulator.subscriber()
    source_topic = f"projects/{project}/topics/gamebook-{run}"
    trigger_topic = f"projects/{project}/topics/phase4-{run}"
    publisher.create_topic(name=source_topic)
    publisher.create_topic(name=trigger_topic)
    triggers_sub = f"projects/{project}/subscriptions/phase4-pull-{run}"
    subscriber.create_subscription(name=triggers_sub, topic=trigger_topic)

    phase = f"e2e{run}"
    endpoints = _endpoints(tmp_path, stack, pubsub_emulator, trigger_topic, phase)
    ports = next(endpoints)
    try:
        for i, port in enumerate(ports):
            # No retry policy: with one, emulator 0.8.20 stalls redelivery.
            subscriber.create_subscription(
                request={
                    "name": f"projects/{project}/subscriptions/push-{run}-{i}",
                    "topic": source_topic,
                    "push_config": {"push_endpoint": f"http://127.0.0.1:{port}/"},
                    "ack_deadline_seconds": 30,
                }
            )
        d1, d2 = (d.isoformat() for d in DATES)
        for payload in (
            {"game_date": d1, "games": 2},  # the first gamebook batch: 2 of 10 games
            {"game_date": d1},
            {"game_date": d1},
            {"game_date": d2},
        ):
            publisher.publish(source_topic, json.dumps(payload).encode()).result(timeout=30)

        triggers: list[dict[str, Any]] = []
        store = open_store(stack.store_url)
        try:
            give_up = time.monotonic() + DEADLINE
            while {t["game_date"] for t in triggers} != {d1, d2}:
                assert time.monotonic() < give_up, f"triggers so far: {triggers}; {_logs(tmp_path)}"
                triggers += _pull(subscriber, triggers_sub, 2)
            # Let every redelivery finish: no lease held for 3 s in a row.
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 3:
                assert time.monotonic() < give_up, f"leases still held; {_logs(tmp_path)}"
                if store.holders():
                    quiet_since = time.monotonic()
                time.sleep(0.25)
            triggers += _pull(subscriber, triggers_sub, 4)
            assert store.holders() == []
        finally:
            store.close()
    finally:
        next(endpoints, None)

    assert sorted(t["game_date"] for t in triggers) == [d1, d2], triggers
    for t in triggers:
        day = dt.date.fromisoformat(t["game_date"])
        assert t["completed"] == ["player_game_summary"] and t["uncovered"] == {}
        assert t["required"] == sorted(g.game_id for g in games_for(day))
        assert t["dedup_id"] == f"{phase}/{t['game_date']}"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        for day in DATES:
            rows, keys, games = con.execute(
                "SELECT COUNT(*), COUNT(DISTINCT player_lookup), COUNT(DISTINCT game_id) "
                "FROM player_game_summary WHERE game_date = ?",
                [day],
            ).fetchone()
            expected = sum(g.player_count for g in games_for(day))
            assert (rows, keys, games) == (expected, expected, len(games_for(day)))
    text = _logs(tmp_path)
    assert "DELETE" not in text and "Traceback" not in text


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("endpoint-*.log"))

"""The examples run for real: the guarded processor on DuckDB and a SQLite lease store
(Redis and the Firestore emulator where present), and the push endpoint over HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import duckdb
import pytest

from fixtures.services import free_port, port_open, spawn, stop_process, wait_until
from processor_guard import (
    CompletionTracker,
    LockBusy,
    StaleFence,
    date_lock,
    open_store,
    safe_merge,
)
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import (
    DEMO_DATE,
    EXPECTED_PROCESSORS,
    create_table_sql,
    games_for,
    player_rows,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from player_game_summary import PlayerGameSummaryProcessor  # noqa: E402
from push_endpoint import make_app  # noqa: E402

DAY = DEMO_DATE.isoformat()
ALL_ROWS = sum(g.player_count for g in games_for())


class Env:
    """A DuckDB warehouse file, a lease store URL and a completion tracker."""

    def __init__(self, folder: Path, store_url: str, tracker: CompletionTracker) -> None:
        self.folder = folder
        self.warehouse = str(folder / "warehouse.duckdb")
        self.store_url = store_url
        self.tracker = tracker
        con = duckdb.connect(self.warehouse)
        con.execute(create_table_sql("player_game_summary", qualified="main.player_game_summary"))
        con.close()

    def processor(self, cls: type[PlayerGameSummaryProcessor] = PlayerGameSummaryProcessor) -> Any:
        return cls(self.warehouse, self.tracker, dataset="main")

    def counts(self) -> tuple[int, int]:
        con = duckdb.connect(self.warehouse)
        try:
            rows, keys = con.execute(
                "SELECT COUNT(*), COUNT(DISTINCT (game_date, player_lookup)) "
                "FROM main.player_game_summary"
            ).fetchone()
        finally:
            con.close()
        return int(rows), int(keys)

    def fence(self) -> int:
        con = duckdb.connect(self.warehouse)
        try:
            (value,) = con.execute(
                "SELECT MAX(fence) FROM main.player_game_summary__pg_guard"
            ).fetchone()
        finally:
            con.close()
        return int(value)


def _tracker(client: Any, published: list[str]) -> CompletionTracker:
    def publish(day: str, state: Any) -> str:
        published.append(day)
        return f"m-{len(published)}"

    return CompletionTracker(client, "phase3", list(EXPECTED_PROCESSORS), publish=publish)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("firestore", marks=pytest.mark.firestore),
    ]
)
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    """Embedded (SQLite leases and completion), Redis leases, or Firestore for both."""
    client: Any
    if request.param == "firestore":
        client = request.getfixturevalue("firestore_client")
        url = f"firestore://{request.getfixturevalue('firestore_emulator').project}"
    else:
        client = SQLiteDocumentClient(tmp_path / "completion.db")
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
        else:
            url = f"sqlite:///{tmp_path}/leases.db"
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", url)
    yield Env(tmp_path, url, _tracker(client, []))
    if request.param != "firestore":
        client.close()


def test_processor_writes_one_row_per_player_and_records_completion(env: Env) -> None:
    opts = {"start_date": DAY, "end_date": DAY, "run_id": "run-1"}
    assert env.processor().run(opts) is True
    assert env.counts() == (ALL_ROWS, ALL_ROWS)
    first_fence = env.fence()
    entry = env.tracker.state(DAY)
    assert "player_game_summary" in entry.completed
    assert "player_game_summary" not in entry.missing

    # A redelivery re-runs the date: same rows, a newer fence, still no duplicates.
    assert env.processor().run({**opts, "run_id": "run-2"}) is True
    assert env.counts() == (ALL_ROWS, ALL_ROWS)
    assert env.fence() > first_fence


def test_busy_date_raises_lockbusy_and_writes_nothing(env: Env) -> None:
    with (
        date_lock("player_game_summary", DAY, store=env.store_url, ttl=10, owner="other"),
        pytest.raises(LockBusy) as busy,
    ):
        env.processor().run({"start_date": DAY, "end_date": DAY})
    assert busy.value.holder == "other"
    assert env.counts() == (0, 0)
    assert "player_game_summary" not in env.tracker.state(DAY).completed


def test_writer_that_lost_its_lease_is_refused_by_the_fence(env: Env) -> None:
    """Instance 1 pauses past its lease; instance 2 takes the date and saves; instance
    1's late save carries the older fence and is refused, leaving instance 2's rows."""
    store = open_store(env.store_url)
    newer_rows = player_rows(games_for())

    class Paused(PlayerGameSummaryProcessor):
        def transform(self, raw: list[dict[str, Any]], opts: dict[str, Any]) -> Any:
            rows = super().transform(raw, opts)
            store.break_lease(f"player_game_summary:{DAY}")  # as if our lease expired
            with date_lock("player_game_summary", DAY, store=store, ttl=10, owner="instance-2"):
                safe_merge(
                    env.warehouse,
                    "main.player_game_summary",
                    newer_rows,
                    keys=("game_date", "player_lookup"),
                    partition_field="game_date",
                )
            return [dict(r, points=-1) for r in rows]

    with pytest.raises(StaleFence):
        env.processor(Paused).run({"start_date": DAY, "end_date": DAY, "games": 2})
    assert env.counts() == (ALL_ROWS, ALL_ROWS)
    con = duckdb.connect(env.warehouse)
    try:
        assert con.execute(
            "SELECT COUNT(*) FROM main.player_game_summary WHERE points = -1"
        ).fetchone() == (0,)
    finally:
        con.close()
    assert "player_game_summary" not in env.tracker.state(DAY).completed


# --------------------------------------------------------------------------- HTTP


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint(env: Env) -> Iterator[tuple[Env, int, list[type[Any]]]]:
    """The push endpoint served on a free loopback port; the list picks the processor."""
    chosen: list[type[Any]] = [PlayerGameSummaryProcessor]
    app = make_app(lambda: env.processor(chosen[0]))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield env, int(server.server_address[1]), chosen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def post_push(
    port: int, payload: object, *, raw: bytes | None = None
) -> tuple[int, dict[str, str]]:
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    body = (
        raw
        if raw is not None
        else json.dumps(
            {"message": {"data": data, "messageId": uuid.uuid4().hex}, "subscription": "s"}
        ).encode()
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_push_endpoint_statuses_over_http(endpoint: tuple[Env, int, list[type[Any]]]) -> None:
    env, port, chosen = endpoint
    assert post_push(port, {"game_date": DAY})[0] == 204
    assert env.counts() == (ALL_ROWS, ALL_ROWS)

    # Busy: retryable 409 with Retry-After, so Pub/Sub redelivers instead of acking.
    with date_lock("player_game_summary", DAY, store=env.store_url, ttl=10, owner="other"):
        status, headers = post_push(port, {"game_date": DAY})
    assert status == 409
    assert int(headers["retry-after"]) >= 1

    assert post_push(port, None, raw=b"not json")[0] == 400
    assert post_push(port, {"game_date": "2026-2-3"})[0] == 400

    class Broken(PlayerGameSummaryProcessor):
        def extract(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
            raise RuntimeError("gamebook table unreachable")

    chosen[0] = Broken
    assert post_push(port, {"game_date": DAY})[0] == 500
    assert env.counts() == (ALL_ROWS, ALL_ROWS)


def test_push_endpoint_rejects_other_methods(endpoint: tuple[Env, int, list[type[Any]]]) -> None:
    _, port, _ = endpoint
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().status == 405
    finally:
        conn.close()


def test_push_endpoint_script_serves_pubsub_pushes(tmp_path: Path) -> None:
    """``python examples/push_endpoint.py`` as Cloud Run would start it (on loopback)."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "PROCESSOR_GUARD_STORE": f"sqlite:///{tmp_path}/leases.db",
    }
    proc = spawn(
        [sys.executable, str(EXAMPLES / "push_endpoint.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), 30, "examples/push_endpoint.py")
        assert post_push(port, {"game_date": DAY})[0] == 204
        assert post_push(port, {"game_date": DAY})[0] == 204  # a redelivery: still one row each
    finally:
        stop_process(proc)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    try:
        rows, keys = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT player_lookup) FROM player_game_summary"
        ).fetchone()
    finally:
        con.close()
    assert rows == keys == ALL_ROWS


@pytest.mark.bigquery
def test_processor_on_the_bigquery_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bigquery_emulator: Any
) -> None:
    """The same processor class, given a BigQuery client instead of a DuckDB file."""
    from google.cloud import bigquery

    from processor_guard.demo.data import COLUMNS

    monkeypatch.setenv("PROCESSOR_GUARD_STORE", f"sqlite:///{tmp_path}/leases.db")
    client = bigquery_emulator.client()
    dataset = bigquery_emulator.new_dataset(client)
    table = bigquery.Table(
        f"{dataset}.player_game_summary",
        schema=[bigquery.SchemaField(c, t) for c, t in COLUMNS["player_game_summary"]],
    )
    table.time_partitioning = bigquery.TimePartitioning(field="game_date")
    client.create_table(table)
    published: list[str] = []
    tracker = _tracker(SQLiteDocumentClient(tmp_path / "completion.db"), published)

    def counts() -> tuple[int, int]:
        (row,) = client.query(
            f"SELECT COUNT(*) AS n, COUNT(DISTINCT player_lookup) AS k "
            f"FROM `{dataset}.player_game_summary`"
        ).result()
        return int(row["n"]), int(row["k"])

    processor = PlayerGameSummaryProcessor(client, tracker, dataset=dataset)
    assert processor.run({"start_date": DAY, "end_date": DAY, "run_id": "bq-1"}) is True
    assert processor.run({"start_date": DAY, "end_date": DAY, "run_id": "bq-2"}) is True
    assert counts() == (ALL_ROWS, ALL_ROWS)
    assert "player_game_summary" in tracker.state(DAY).completed


def _serve(app: Any) -> tuple[Any, int]:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def test_push_endpoint_answers_retryable_while_the_trigger_is_pending(tmp_path: Path) -> None:
    """A failed publish, then a redelivery while another caller holds the claim: both
    answer 503 with Retry-After (never 204, which acks and drops the message); the
    redelivery after the claim expires publishes exactly once."""
    warehouse = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(warehouse) as con:
        con.execute(create_table_sql("player_game_summary", qualified="main.player_game_summary"))
    docs = SQLiteDocumentClient(tmp_path / "completion.db")
    published: list[str] = []
    failing = {"left": 1}

    def publish(day: str, state: Any) -> str:
        if failing["left"]:
            failing["left"] -= 1
            raise ConnectionError("pubsub unavailable")
        published.append(day)
        return f"m-{len(published)}"

    def schedule(day: str) -> list[str]:
        return [g.game_id for g in games_for(DEMO_DATE)]

    tracker = CompletionTracker(
        docs, "phase3", ["player_game_summary"], publish, required=schedule, claim_ttl=2.0
    )
    os.environ["PROCESSOR_GUARD_STORE"] = f"sqlite:///{tmp_path}/leases.db"
    server, port = _serve(
        make_app(lambda: PlayerGameSummaryProcessor(warehouse, tracker, dataset="main"))
    )
    try:
        assert post_push(port, {"game_date": DAY, "games": 2})[0] == 204  # partial: nothing due
        assert published == [] and not tracker.state(DAY).trigger_pending
        status, headers = post_push(port, {"game_date": DAY})
        assert status == 503 and int(headers["retry-after"]) >= 1
        # A caller that claimed the trigger and died: the redelivery must not be acked.
        from google.cloud import firestore

        tracker.doc_ref(DAY).update(
            {
                "_trigger_claim": {
                    "owner": "dead-endpoint",
                    "token": "t",
                    # Far longer than a push takes on a loaded machine; the test ends
                    # the claim below by rewriting its ttl, not by waiting it out.
                    "ttl": 600.0,
                    "claimed_at": firestore.SERVER_TIMESTAMP,
                }
            }
        )
        status, headers = post_push(port, {"game_date": DAY})
        assert status == 503 and int(headers["retry-after"]) >= 1 and published == []
        tracker.doc_ref(DAY).update({"_trigger_claim.ttl": 0.0})  # the dead caller's claim ends
        assert post_push(port, {"game_date": DAY})[0] == 204
        assert published == [DAY]
        assert post_push(port, {"game_date": DAY})[0] == 204 and published == [DAY]
    finally:
        server.shutdown()
        server.server_close()
        docs.close()
        del os.environ["PROCESSOR_GUARD_STORE"]

"""``python examples/push_endpoint_async.py`` (Starlette + uvicorn) as a real HTTP process:
the answers of the sync endpoint, and two pushes for one date at once on one loop."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
from test_examples import ALL_ROWS, DAY, EXAMPLES, post_push

from fixtures.services import free_port, port_open, spawn, stop_process, wait_until

TESTS = Path(__file__).resolve().parents[1]


def test_async_endpoint_serves_one_push_per_date_at_a_time(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "GATE_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "PROCESSOR_GUARD_STORE": f"sqlite:///{tmp_path}/leases.db",
        "PROCESSOR_GUARD_EXPECTED": "player_game_summary",
        "PROCESSOR_GUARD_PUBLISHER": "python:fixtures.gated_publisher:publish",
    }
    log = (tmp_path / "endpoint.log").open("wb")
    proc = spawn(
        [sys.executable, str(EXAMPLES / "push_endpoint_async.py")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port), 30, "examples/push_endpoint_async.py")
        # The first push merges, records, and publishes the due trigger, which the gate
        # holds: its lease is held while the loop answers the second push for the date.
        first: list[int] = []
        pushing = threading.Thread(
            target=lambda: first.append(post_push(port, {"game_date": DAY})[0])
        )
        pushing.start()
        wait_until((tmp_path / "publishing").exists, 30, "the first push to publish")
        status, headers = post_push(port, {"game_date": DAY})
        assert status == 409 and int(headers["retry-after"]) >= 1
        (tmp_path / "open").touch()
        pushing.join(30)
        assert first == [204]
        assert post_push(port, {"game_date": DAY})[0] == 204  # a redelivery: done, not re-published

        assert post_push(port, None, raw=b"not json")[0] == 400
        assert post_push(port, {"game_date": "2026-2-3"})[0] == 400
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 405
        conn.close()
    finally:
        stop_process(proc)
        log.close()
    assert (tmp_path / "published").read_text().split() == [DAY]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        rows, keys = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT player_lookup) FROM player_game_summary"
        ).fetchone()
    assert rows == keys == ALL_ROWS

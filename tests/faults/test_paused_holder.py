"""A holder paused (SIGSTOP) past its ttl loses to a successor and cannot write over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.conftest import SharedStore
from faults.procs import HolderProcess
from processor_guard import date_lock

ROUNDS = 5
# A Firestore emulator transaction takes tens of ms, several for a cold channel.
TTL = {"redis": 0.5, "sqlite": 0.5, "firestore": 1.0}
TABLE = "main.player_game_summary"


def create_table(path: Path) -> None:
    import duckdb

    conn = duckdb.connect(str(path))
    try:
        conn.execute(
            "CREATE TABLE player_game_summary ("
            " game_date DATE NOT NULL, player_lookup VARCHAR NOT NULL, points BIGINT)"
        )
    finally:
        conn.close()


def successor_write(path: Path, points: int) -> None:
    """Write three rows under the current lease (its fence comes from current_lease())."""
    from processor_guard import safe_merge

    rows = [
        {"game_date": "2026-02-03", "player_lookup": f"player{i}", "points": points}
        for i in range(3)
    ]
    result = safe_merge(
        str(path),
        TABLE,
        rows,
        keys=("game_date", "player_lookup"),
        partition_field="game_date",
        order_by=None,
    )
    assert result.fence is not None and result.inserted + result.updated == 3


def table_points(path: Path) -> list[tuple[str, int]]:
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute(
            "SELECT player_lookup, points FROM player_game_summary ORDER BY player_lookup"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_paused_holder_loses_and_cannot_overwrite(
    shared_store: SharedStore, tmp_path: Path
) -> None:
    db = tmp_path / "warehouse.duckdb"
    ttl = TTL[shared_store.kind]
    args = ["--url", shared_store.url, "--ttl", str(ttl), "--rounds", str(ROUNDS)]
    create_table(db)
    args += ["--duckdb", str(db), "--table", TABLE]
    store = shared_store.open()
    holder = HolderProcess(args, shared_store.child_env())
    fences: list[int] = []
    try:
        for round_no in range(ROUNDS):
            first = holder.expect("acquired")
            holder.pause()
            # The successor gets the key only once the store has expired the paused
            # holder, whose own (monotonic) deadline is never later than the store's.
            with date_lock(
                "faults", "2026-02-03", store=store, ttl=30, wait=ttl * 20, owner="successor"
            ) as second:
                assert second.fence > first["fence"]
                successor_write(db, 100 + round_no)
                holder.resume()
                holder.send("go")
                result = holder.expect("result")
                assert result["check"] == "LeaseLost", result
                assert result["lost_event"] is True, result
                assert result["exit"] == "LeaseLost", result
                assert result["write"] == "StaleFence", result
                expected = [(f"player{i}", 100 + round_no) for i in range(3)]
                assert table_points(db) == expected
                # The stale holder's release (on leaving its block) did not free ours.
                held = store.holder(second.key)
                assert held is not None and (held.owner, held.fence) == ("successor", second.fence)
                second.check()
            fences += [first["fence"], second.fence]
        assert holder.finish() == 0, holder.stderr
    finally:
        holder.stop()
    assert fences == sorted(fences) and len(set(fences)) == len(fences)

"""The README's guarded processor, runnable on one machine with no cloud account.

Needs ``pip install 'processor-guard[duckdb]'``. Leases live in a SQLite file, the
warehouse is a DuckDB file, and completion documents go to the local document store
(the stand-in for Firestore). Run it again on the same folder and the MERGE updates
the rows instead of adding them: ``python examples/local_quickstart.py /tmp/pg-quickstart``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import duckdb

from processor_guard import TABLES, CompletionTracker, dedupe_rows, guarded, safe_merge
from processor_guard.completion.docstore import SQLiteDocumentClient

SPEC = TABLES["player_game_summary"]  # one row per (game_date, player_lookup)
TABLE = "nba_analytics.player_game_summary"
DAY = "2026-02-03"


def create_table(warehouse: str) -> None:
    """safe_merge writes into an existing table (it adds only its helper tables)."""
    con = duckdb.connect(warehouse)
    con.execute("CREATE SCHEMA IF NOT EXISTS nba_analytics")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (game_date DATE, player_lookup VARCHAR, "
        "points BIGINT, processed_at TIMESTAMP)"
    )
    con.close()


class PlayerGameSummary:
    def __init__(self, warehouse: str, tracker: CompletionTracker) -> None:
        self.warehouse = warehouse
        self.tracker = tracker

    @guarded("player_game_summary", ttl=30, wait=60)
    def run(self, opts: dict[str, str]) -> bool:
        rows, _report = dedupe_rows(self.build_rows(opts), keys=SPEC.keys, order_by="processed_at")
        safe_merge(self.warehouse, TABLE, rows, keys=SPEC.keys, partition_field="game_date")
        self.tracker.record(
            opts["end_date"],
            "player_game_summary",
            execution_id=opts["run_id"],
            record_count=len(rows),
        )
        return True

    def build_rows(self, opts: dict[str, str]) -> list[dict[str, object]]:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        rows = [
            {
                "game_date": dt.date.fromisoformat(opts["end_date"]),
                "player_lookup": f"player{i}",
                "points": i % 40,
                "processed_at": now,
            }
            for i in range(348)
        ]
        return rows + rows[:35]  # a redelivered game: dedupe_rows drops it


def main(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    warehouse = str(folder / "warehouse.duckdb")
    create_table(warehouse)
    published: list[str] = []
    tracker = CompletionTracker(
        SQLiteDocumentClient(folder / "completion.db"),
        "phase3",
        ["player_game_summary"],
        publish=lambda day, state: published.append(day) or f"local-{day}",
    )
    # Where guarded() finds the lease store; set it once per process or deployment.
    os.environ.setdefault("PROCESSOR_GUARD_STORE", f"sqlite://{folder / 'leases.db'}")
    PlayerGameSummary(warehouse, tracker).run(
        {"start_date": DAY, "end_date": DAY, "run_id": f"run-{os.getpid()}"}
    )
    con = duckdb.connect(warehouse, read_only=True)
    rows, players = con.execute(
        f"SELECT COUNT(*), COUNT(DISTINCT player_lookup) FROM {TABLE}"
    ).fetchone() or (0, 0)
    helpers = sorted(
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name LIKE '%\\_\\_pg\\_guard' ESCAPE '\\'"
        ).fetchall()
    )
    con.close()
    state = tracker.state(DAY)
    print(
        f"{rows} rows, {players} players; completion {state.count}/{len(state.expected)}; "
        f"triggered: {state.triggered}; helper tables: {', '.join(helpers)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "pg-quickstart")))

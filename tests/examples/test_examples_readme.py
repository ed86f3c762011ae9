"""The README's processor example runs as written (on DuckDB and a SQLite lease store)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from processor_guard import CompletionTracker, LockBusy, date_lock
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import (
    DEMO_DATE,
    EXPECTED_PROCESSORS,
    create_table_sql,
    games_for,
    player_rows,
)

README = Path(__file__).resolve().parents[2] / "README.md"
DAY = DEMO_DATE.isoformat()


def readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- readme-example")
    match = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert match, "the README example block is missing"
    return match.group(1)


def test_readme_example_is_about_twenty_lines() -> None:
    lines = [ln for ln in readme_example().splitlines() if ln.strip()]
    assert 12 <= len(lines) <= 25


def test_readme_processor_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", f"sqlite:///{tmp_path}/leases.db")
    warehouse = str(tmp_path / "warehouse.duckdb")
    con = duckdb.connect(warehouse)
    con.execute("CREATE SCHEMA nba_analytics")
    con.execute(
        create_table_sql("player_game_summary", qualified="nba_analytics.player_game_summary")
    )
    con.close()

    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), str(README), "exec"), namespace)

    class Processor(namespace["PlayerGameSummary"]):  # type: ignore[misc]
        def build_rows(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
            rows = player_rows(games_for())
            return rows + rows[:35]  # a redelivered game inside the batch: dedup drops it

    published: list[str] = []
    tracker = CompletionTracker(
        SQLiteDocumentClient(tmp_path / "completion.db"),
        "phase3",
        list(EXPECTED_PROCESSORS),
        publish=lambda day, state: published.append(day) or "m-1",
    )
    processor = Processor(warehouse, tracker)
    assert processor.run({"start_date": DAY, "end_date": DAY, "run_id": "r1"}) is True

    con = duckdb.connect(warehouse)
    try:
        rows, keys = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT player_lookup) FROM nba_analytics.player_game_summary"
        ).fetchone()
    finally:
        con.close()
    assert rows == keys == sum(g.player_count for g in games_for())
    assert "player_game_summary" in tracker.state(DAY).completed

    with (
        date_lock("player_game_summary", DAY, ttl=10, owner="other-instance"),
        pytest.raises(LockBusy),
    ):
        processor.run({"start_date": DAY, "end_date": DAY, "run_id": "r2"})


def test_readme_benchmark_block_is_the_committed_report() -> None:
    import sys

    sys.path.insert(0, str(README.parent))
    from benchmarks import report

    latest = README.parent / "benchmarks" / "results" / "latest.md"
    assert report.readme_block(README.read_text()) == latest.read_text().strip()

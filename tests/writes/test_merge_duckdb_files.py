"""A DuckDB file shared by separate OS processes: they take turns, nothing is lost."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from fixtures.pgs_rows import DUCKDB_PGS
from processor_guard import StaleFence, safe_merge
from processor_guard.writes.warehouse import DuckDBWarehouse, as_warehouse

ROOT = Path(__file__).resolve().parents[2]
WRITER = textwrap.dedent(
    """
    import datetime as dt, sys
    sys.path.insert(0, {tests!r})
    from fixtures.pgs_rows import game_rows
    from processor_guard import safe_merge
    path, worker = sys.argv[1], int(sys.argv[2])
    base = dt.datetime(2026, 2, 4, tzinfo=dt.timezone.utc)
    for i in range(6):
        stamp = base + dt.timedelta(seconds=10 * i + worker)
        rows = game_rows(dt.date(2026, 2, 3), i % 3, processed_at=stamp, points_offset=worker)
        safe_merge(path, "player_game_summary", rows, max_attempts=200, deadline=60,
                   backoff_initial=0.01, backoff_max=0.1)
    """
)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
    return path


def test_as_warehouse_accepts_paths(db_path: str) -> None:
    assert isinstance(as_warehouse(db_path), DuckDBWarehouse)
    assert isinstance(as_warehouse(Path(db_path)), DuckDBWarehouse)
    assert as_warehouse(f"duckdb://{db_path}").path == db_path  # type: ignore[attr-defined]


def test_processes_take_turns_on_one_file(db_path: str) -> None:
    script = WRITER.format(tests=str(ROOT / "tests"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, db_path, str(w)], stderr=subprocess.PIPE)
        for w in (1, 2, 3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    wh = as_warehouse(db_path)
    assert wh.count_rows("player_game_summary") == 3 * 35
    assert wh.duplicate_keys("player_game_summary", ("game_date", "player_lookup")) == []
    # the newest write of each game came from worker 3 in its last round (i = 3, 4, 5)
    rows = wh.query("SELECT points, player_lookup, processed_at FROM player_game_summary")
    latest = {3: dt.datetime(2026, 2, 4, 0, 0, 33), 4: dt.datetime(2026, 2, 4, 0, 0, 43),
              5: dt.datetime(2026, 2, 4, 0, 0, 53)}  # fmt: skip
    assert {r["processed_at"] for r in rows} == set(latest.values())


def test_fence_on_a_file(db_path: str) -> None:
    from fixtures.pgs_rows import game_rows

    day = dt.date(2026, 2, 3)
    safe_merge(db_path, "player_game_summary", game_rows(day, 0), fence=9)
    with pytest.raises(StaleFence):
        safe_merge(db_path, "player_game_summary", game_rows(day, 1), fence=8)
    wh = as_warehouse(db_path)
    assert wh.count_rows("player_game_summary") == 35
    assert wh.read_fence("player_game_summary", day) == 9

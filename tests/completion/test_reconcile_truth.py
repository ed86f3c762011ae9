"""reconcile never turns a failure or partial coverage into success, keeps real times,
refuses a different expectation, and leaves an empty date alone (local document store,
DuckDB warehouse)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from fixtures.health import Recorder, build_duckdb, insert, rows_for
from processor_guard import CompletionTracker, ConfigError
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import DEMO_DATE, EXPECTED_PROCESSORS, create_table_sql, games_for

DATE = DEMO_DATE.isoformat()
EXPECTED = list(EXPECTED_PROCESSORS)
PGS = "player_game_summary"


@pytest.fixture
def docs(tmp_path: Path) -> SQLiteDocumentClient:
    return SQLiteDocumentClient(tmp_path / "completion.db")


def partial_warehouse(path: Path) -> int:
    """All five tables complete except player_game_summary: 2 of 10 games."""
    build_duckdb(path, tables=EXPECTED[1:])
    two_games = {g.game_id for g in games_for()[:2]}
    with duckdb.connect(str(path)) as con:
        return insert(con, PGS, [r for r in rows_for(PGS) if r["game_id"] in two_games])


def test_fix_never_turns_a_failed_run_with_some_rows_into_success(
    docs: SQLiteDocumentClient, tmp_path: Path
) -> None:
    path = tmp_path / "w.db"
    partial = partial_warehouse(path)
    pub = Recorder()
    t = CompletionTracker(docs, "phase3", EXPECTED, pub)
    for i, p in enumerate(EXPECTED[1:]):
        t.record(DATE, p, execution_id=f"ok-{i}")
    t.record(DATE, PGS, execution_id="failed-run", status="failed", record_count=partial)
    report = t.reconcile(DATE, str(path), dry_run=False)
    assert any(f"recorded as 'failed'; its {partial} rows" in p for p in report.problems)
    state = t.state(DATE)
    assert PGS not in state.completed and not state.trigger_pending and pub.calls == []
    assert not report.ok


def test_fix_never_completes_partial_coverage(docs: SQLiteDocumentClient, tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    partial_warehouse(path)
    games = [g.game_id for g in games_for()]
    pub = Recorder()
    t = CompletionTracker(docs, "phase3", EXPECTED, pub, required=lambda _d: games)
    for i, p in enumerate(EXPECTED[1:]):
        t.record(DATE, p, execution_id=f"ok-{i}", covered=games)
    t.record(DATE, PGS, execution_id="batch-1", covered=games[:2])
    report = t.reconcile(DATE, str(path), dry_run=False)
    assert any("covered 2 of 10 required units" in p for p in report.problems)
    assert PGS not in t.state(DATE).completed and pub.calls == []


def test_fix_keeps_the_real_completion_time(docs: SQLiteDocumentClient, tmp_path: Path) -> None:
    """The lost-message case is repaired, but the trigger delay stays measurable."""
    path = tmp_path / "w.db"
    build_duckdb(path)
    t = CompletionTracker(docs, "phase3", EXPECTED, Recorder())
    for i, p in enumerate(EXPECTED[:4]):
        t.record(DATE, p, execution_id=f"ok-{i}")
    real = t.state(DATE).last_completion_at
    assert real is not None
    report = t.reconcile(DATE, str(path), dry_run=False)
    assert report.triggered_after
    state = t.state(DATE)
    assert state.last_completion_at == real and state.satisfied_at == real
    assert "first_success_at" not in state.entries[EXPECTED[4]]


def test_a_different_expected_list_is_refused_unless_forced(
    docs: SQLiteDocumentClient, tmp_path: Path
) -> None:
    path = tmp_path / "w.db"
    build_duckdb(path, tables=EXPECTED[:4])
    five = CompletionTracker(docs, "phase3", EXPECTED, Recorder())
    for i, p in enumerate(EXPECTED[:4]):
        five.record(DATE, p, execution_id=f"ok-{i}")
    four = CompletionTracker(docs, "phase3", EXPECTED[:4], Recorder())
    with pytest.raises(ConfigError, match=r"dropped \['upcoming_team_game_context'\]"):
        four.reconcile(DATE, str(path), dry_run=False)
    assert five.state(DATE).count == 4 and not five.state(DATE).trigger_pending
    assert four.reconcile(DATE, str(path), dry_run=False, force=True).triggered_after


def test_fix_on_an_empty_date_writes_nothing(docs: SQLiteDocumentClient, tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with duckdb.connect(str(path)) as con:
        for table in EXPECTED:
            con.execute(create_table_sql(table))
    t = CompletionTracker(docs, "phase3", EXPECTED, Recorder())
    report = t.reconcile(DATE, str(path), dry_run=False)
    assert report.empty and not t.state(DATE).exists and report.changes == []


def test_record_count_is_compared_with_the_table(
    docs: SQLiteDocumentClient, tmp_path: Path
) -> None:
    path = tmp_path / "w.db"
    counts = build_duckdb(path)
    t = CompletionTracker(docs, "phase3", EXPECTED, Recorder())
    for i, p in enumerate(EXPECTED):
        t.record(DATE, p, execution_id=f"ok-{i}", record_count=counts[p])
    assert t.reconcile(DATE, str(path)).ok
    t.record(DATE, PGS, execution_id="late", record_count=counts[PGS] + 72)
    report = t.reconcile(DATE, str(path))
    assert f"{PGS}: recorded {counts[PGS] + 72} rows but the table has {counts[PGS]}" in (
        report.problems
    )
    check = next(c for c in report.tables if c.processor == PGS)
    assert not check.count_matches

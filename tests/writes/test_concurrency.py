"""safe_merge under concurrency: on the BigQuery rules model and on DuckDB's own MVCC.

The model (tests/fixtures/bq_rules.py) runs the same statement sequence the BigQuery
adapter sends, under BigQuery's documented rules; DuckDB (threads on one database,
processes on one file) is the second, independent model. Round counts are the
floors issue #11 sets.
"""

from __future__ import annotations

import datetime as dt
import functools
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fixtures.bq_rules import BigQueryRules, RulesWarehouse
from fixtures.concurrent_writers import ROUNDS, WRITERS, writer_process, writer_rows
from fixtures.pgs_rows import DUCKDB_PGS, date_rows
from processor_guard import StaleFence, safe_merge
from processor_guard.tables import TABLES
from processor_guard.writes.merge import MergeResult
from processor_guard.writes.warehouse import DuckDBWarehouse, Warehouse

KEYS = ("game_date", "player_lookup")
BASE_DAY = dt.date(2026, 1, 1)
FAST = {"backoff_initial": 0.005, "backoff_max": 0.1, "max_attempts": 200}


class Engine:
    """Where the writers write: a fresh warehouse adapter per writer, as per process."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "model":
            self.model: BigQueryRules | None = BigQueryRules(rate=None)
            self.conn = self.model.conn
        else:
            self.model = None
            self.conn = duckdb.connect()
        self.conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
        self.adapters: dict[int, Warehouse] = {}

    def writer(self, number: int) -> Warehouse:
        """Writer ``number``'s adapter, kept across rounds as a process keeps its client."""
        if number not in self.adapters:
            self.adapters[number] = (
                RulesWarehouse(self.model) if self.model else DuckDBWarehouse(self.conn)
            )
        return self.adapters[number]

    def rows(self, day: dt.date) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            "SELECT player_lookup, points FROM player_game_summary WHERE game_date = ? "
            "ORDER BY player_lookup",
            [day],
        ).fetchall()


@pytest.fixture(params=["model", "duckdb"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    found = Engine(request.param)
    yield found
    found.conn.close()


def _threads(work: list[Callable[[], Any]]) -> list[Any]:
    """Run each callable in its own thread, all released at once; results or errors."""
    results: list[Any] = [None] * len(work)
    start = threading.Barrier(len(work))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _save(engine: Engine, day: dt.date, writer: int, fence: int | None) -> MergeResult:
    return safe_merge(
        engine.writer(writer), "player_game_summary", writer_rows(day, writer), keys=KEYS,
        fence=fence, **FAST,
    )  # fmt: skip


def _newest(day: dt.date, writer: int) -> list[tuple[Any, ...]]:
    return sorted((r["player_lookup"], r["points"]) for r in writer_rows(day, writer))


@pytest.mark.slow
@pytest.mark.parametrize("fenced", [False, True], ids=["unfenced", "fenced"])
def test_eight_writers_saving_the_same_new_keys(engine: Engine, fenced: bool) -> None:
    """Each round: 8 writers, one new date (348 keys), all at once. Each key once."""
    for round_no in range(ROUNDS):
        day = BASE_DAY + dt.timedelta(days=round_no)
        results = _threads(
            [
                functools.partial(_save, engine, day, w, w if fenced else None)
                for w in range(1, WRITERS + 1)
            ]
        )
        unexpected = [r for r in results if isinstance(r, BaseException)]
        if fenced:  # an older fence may be refused; nothing else may fail
            unexpected = [r for r in unexpected if not isinstance(r, StaleFence)]
        assert unexpected == [], f"round {round_no}: {unexpected[:2]}"
        stored = engine.rows(day)
        assert len(stored) == 348, f"round {round_no}: {len(stored)} rows for 348 keys"
        # The newest writer (highest fence and processed_at) always wins, whatever the order.
        assert stored == _newest(day, WRITERS)


def _stale_race(engine: Engine, day: dt.date) -> list[Any]:
    return _threads([functools.partial(_save, engine, day, 4, 4),
                     functools.partial(_save, engine, day, 5, 5)])  # fmt: skip


class _HoldAtBegin:
    """Holds each thread's first BEGIN until both threads reached theirs."""

    def __init__(self) -> None:
        self.gate = threading.Barrier(2, timeout=30)
        self.waited = threading.local()

    def __call__(self) -> None:
        if not getattr(self.waited, "done", False):
            self.waited.done = True
            self.gate.wait()


@pytest.mark.slow
def test_stale_fence_racing_a_newer_one_on_a_first_write_is_refused() -> None:
    """Both saves are in flight at once (held at BEGIN until both got there)."""
    engine = Engine("model")
    assert engine.model is not None
    for round_no in range(ROUNDS):
        day = BASE_DAY + dt.timedelta(days=round_no)
        engine.model.on_begin = _HoldAtBegin()
        stale, newer = _stale_race(engine, day)
        assert isinstance(stale, StaleFence), f"round {round_no}: {stale!r}"
        assert (stale.fence, stale.current) == (4, 5)
        assert not isinstance(newer, BaseException), f"round {round_no}: {newer!r}"
        assert engine.rows(day) == _newest(day, 5)


@pytest.mark.slow
def test_stale_fence_race_unforced_leaves_none_of_its_rows(engine: Engine) -> None:
    """Left to the scheduler: the stale save is refused, or it committed before the
    newer save claimed its fence and was then overwritten; none of its rows remain."""
    for round_no in range(ROUNDS):
        day = BASE_DAY + dt.timedelta(days=round_no)
        stale, newer = _stale_race(engine, day)
        assert isinstance(newer, MergeResult), f"round {round_no}: {newer!r}"
        assert isinstance(stale, (StaleFence, MergeResult)), f"round {round_no}: {stale!r}"
        assert engine.rows(day) == _newest(day, 5)


PHASE3 = list(TABLES.values())


def _phase3_table(conn: Any, name: str, keys: tuple[str, ...]) -> None:
    extra = ", ".join(f"{k} VARCHAR NOT NULL" for k in keys if k != "game_date")
    conn.execute(
        f"CREATE TABLE {name} (game_date DATE NOT NULL, {extra}, points BIGINT, "
        "processed_at TIMESTAMP)"
    )


def _phase3_rows(keys: tuple[str, ...], day: dt.date, count: int) -> list[dict[str, Any]]:
    second = next(k for k in keys if k != "game_date")
    return [
        {"game_date": day.isoformat(), second: f"k{i:03d}", "points": i,
         "processed_at": "2026-02-04T01:00:00+00:00"}
        for i in range(count)
    ]  # fmt: skip


def test_five_phase3_tables_saved_in_parallel_never_cancel_each_other() -> None:
    model = BigQueryRules(rate=None)
    for spec in PHASE3:
        _phase3_table(model.conn, spec.name, spec.keys)
    for round_no in range(5):
        day = dt.date(2026, 2, 3) + dt.timedelta(days=round_no)
        results = _threads(
            [
                functools.partial(
                    safe_merge,
                    RulesWarehouse(model),
                    spec.name,
                    _phase3_rows(spec.keys, day, 348),
                    keys=spec.keys,
                    fence=round_no + 1,
                )
                for spec in PHASE3
            ]
        )
        assert [getattr(r, "attempts", r) for r in results] == [1] * 5
    assert model.cancelled == 0


@pytest.mark.slow
def test_backfill_of_thirty_dates_from_four_workers_with_bigquerys_rate() -> None:
    """BigQuery's queue and 25-statements-per-10-s rate on; default deadline and backoff."""
    model = BigQueryRules()
    model.conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
    days = [BASE_DAY + dt.timedelta(days=d) for d in range(30)]
    lock = threading.Lock()

    def worker() -> int:
        saved = 0
        warehouse = RulesWarehouse(model)
        while True:
            with lock:
                if not days:
                    return saved
                day = days.pop()
            safe_merge(warehouse, "player_game_summary", date_rows(day), keys=KEYS, fence=1)
            saved += 1

    results = _threads([worker] * 4)
    assert sum(results) == 30, results
    total, keys = model.conn.execute(
        "SELECT count(*), count(DISTINCT (game_date, player_lookup)) FROM player_game_summary"
    ).fetchone()
    assert (total, keys) == (30 * 348, 30 * 348)


@pytest.mark.slow
@pytest.mark.parametrize("fenced", [False, True], ids=["unfenced", "fenced"])
def test_eight_processes_saving_the_same_new_keys_on_one_file(tmp_path: Path, fenced: bool) -> None:
    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    failures = ctx.Queue()
    procs = [
        ctx.Process(target=writer_process, args=(path, w, fenced, barrier, failures))
        for w in range(1, WRITERS + 1)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=600)
    reported = []
    while not failures.empty():
        reported.append(failures.get())
    assert [p.exitcode for p in procs] == [0] * WRITERS, "\n".join(reported)
    assert reported == []
    with duckdb.connect(path) as conn:
        total, keys = conn.execute(
            "SELECT count(*), count(DISTINCT (game_date, player_lookup)) FROM player_game_summary"
        ).fetchone()
    assert (total, keys) == (ROUNDS * 348, ROUNDS * 348)

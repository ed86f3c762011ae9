"""safe_merge from separate OS processes into the BigQuery rules model.

The model runs in one server process (fixtures/bq_rules_server.py, the same rules code
as tests/writes/test_concurrency.py's threads use); each writer is an OS process
saving through its own adapter, its statements forwarded to the server and BigQuery's
errors raised back in it. The full runs are issue #11's 50 rounds (slow: the 3.11
suite); the 5-round runs keep the process path in every suite.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fixtures.bq_rules_server import RemoteCursor, RemoteRulesWarehouse, start_rules_server
from fixtures.concurrent_writers import BASE_DAY, ROUNDS, WRITERS, rules_writer_process, writer_rows
from fixtures.pgs_rows import DUCKDB_PGS

# Only the full 50 rounds (slow: the 3.11 run has them, the other Pythons' fast runs
# do not need eight processes more).
ROUND_COUNTS = [pytest.param(ROUNDS, id=f"{ROUNDS}-rounds", marks=pytest.mark.slow)]


class Writers:
    """Writer processes on one model server, driven a round at a time."""

    def __init__(self, server: Any, numbers: list[int]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.server = server
        self.numbers = numbers
        self.results: Any = ctx.Queue()
        self.commands = {n: ctx.Queue() for n in numbers}
        # Kept here: a started process drops its arguments, and a spawned child rebuilds
        # the barrier from the parent's semaphore, which must outlive its start.
        self.barrier = ctx.Barrier(len(numbers))
        self.procs = [
            ctx.Process(
                target=rules_writer_process,
                args=(server, n, self.barrier, self.commands[n], self.results),
            )
            for n in numbers
        ]
        for proc in self.procs:
            proc.start()

    def save(self, day: dt.date, fences: dict[int, int | None]) -> dict[int, tuple[str, Any]]:
        """Every writer saves ``day`` with its fence, all at once; what each reported."""
        for number in self.numbers:
            self.commands[number].put((day, fences[number]))
        reports: dict[int, tuple[str, Any]] = {}
        while len(reports) < len(self.numbers):
            try:
                writer, kind, detail = self.results.get(timeout=1)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode is not None]
                assert dead == [], f"writer processes exited ({dead}) on {day}: {reports}"
                continue
            reports[writer] = (kind, detail)
        return reports

    def stop(self) -> None:
        for number in self.numbers:
            self.commands[number].put(None)
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.exitcode is None:
                proc.terminate()
                proc.join(timeout=10)


@contextmanager
def model_server() -> Iterator[tuple[Any, RemoteRulesWarehouse]]:
    """A fresh model server with the table, and the test's own adapter on it."""
    manager, server = start_rules_server()
    try:
        setup = RemoteCursor(server)
        setup.execute(DUCKDB_PGS.format(name="player_game_summary"))
        setup.close()
        yield server, RemoteRulesWarehouse(server)
    finally:
        manager.shutdown()


@contextmanager
def writers(server: Any, numbers: list[int]) -> Iterator[Writers]:
    running = Writers(server, numbers)
    try:
        yield running
    finally:
        running.stop()


def _stored(warehouse: RemoteRulesWarehouse, day: dt.date) -> list[tuple[str, int]]:
    rows = warehouse.query(
        "SELECT player_lookup, points FROM player_game_summary WHERE game_date = @day "
        "ORDER BY player_lookup",
        {"day": day},
    )
    return [(r["player_lookup"], r["points"]) for r in rows]


def _newest(day: dt.date, writer: int) -> list[tuple[str, int]]:
    return sorted((r["player_lookup"], r["points"]) for r in writer_rows(day, writer))


@pytest.mark.parametrize("rounds", ROUND_COUNTS)
@pytest.mark.parametrize("fenced", [False, True], ids=["unfenced", "fenced"])
def test_eight_processes_saving_the_same_new_keys_on_the_model(fenced: bool, rounds: int) -> None:
    """Each round: 8 processes, one new date (348 keys), released at once. Each key once."""
    numbers = list(range(1, WRITERS + 1))
    started = time.monotonic()
    attempts = 0
    with model_server() as (server, warehouse), writers(server, numbers) as running:
        for round_no in range(rounds):
            day = BASE_DAY + dt.timedelta(days=round_no)
            reports = running.save(day, {n: n if fenced else None for n in numbers})
            allowed = {"saved", "stale"} if fenced else {"saved"}
            unexpected = {n: r for n, r in reports.items() if r[0] not in allowed}
            assert unexpected == {}, f"round {round_no}: {unexpected}"
            attempts += sum(r[1] for r in reports.values() if r[0] == "saved")
            stored = _stored(warehouse, day)
            assert len(stored) == 348, f"round {round_no}: {len(stored)} rows for 348 keys"
            # The newest writer (highest fence and processed_at) wins, whatever the order.
            assert stored == _newest(day, WRITERS)
        cancelled = server.cancelled()
    # The conflict path ran: saves overlapped and the model cancelled the later ones.
    assert cancelled > 0
    print(
        f"\n{rounds} rounds x {WRITERS} processes, fenced={fenced}: {cancelled} cancelled, "
        f"{attempts} attempts by the saves that landed, {time.monotonic() - started:.1f} s"
    )


@pytest.mark.parametrize("rounds", ROUND_COUNTS)
def test_stale_fence_racing_a_newer_one_across_processes_is_refused(rounds: int) -> None:
    """Two processes, fences 4 and 5, on each date's first write; both held at BEGIN
    until both got there, so the two saves are in flight at once."""
    started = time.monotonic()
    with model_server() as (server, warehouse), writers(server, [4, 5]) as running:
        for round_no in range(rounds):
            day = BASE_DAY + dt.timedelta(days=round_no)
            server.hold_first_begins(2)
            reports = running.save(day, {4: 4, 5: 5})
            assert reports[4] == ("stale", (4, 5)), f"round {round_no}: {reports[4]}"
            assert reports[5][0] == "saved", f"round {round_no}: {reports[5]}"
            assert _stored(warehouse, day) == _newest(day, 5)
        cancelled = server.cancelled()
    print(f"\n{rounds} stale races: {cancelled} cancelled, {time.monotonic() - started:.1f} s")

"""Several processes opening one new SQLite file at once all get a working connection."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processor_guard._sqlite import connect_shared
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.stores.sqlite_store import SQLiteStore

PROCESSES = 8


def _open_and_acquire(path: str, n: int, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    try:
        result = SQLiteStore(path).try_acquire(f"table{n}:2026-02-03", f"p{n}", 5.0)
        out.put((n, "acquired" if result.acquired else "busy"))  # type: ignore[attr-defined]
    except Exception as exc:
        out.put((n, f"{type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def test_processes_opening_a_new_file_together(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    for round_no in range(5):
        path = str(tmp_path / f"leases-{round_no}.db")
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_open_and_acquire, args=(path, n, start, out))
            for n in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        start.set()
        results = dict(out.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(30)
        assert results == {n: "acquired" for n in range(PROCESSES)}


# A writer holding the lock of a rollback-journal file makes SQLite refuse the switch to
# WAL at once, without its busy handler: the race above, made deterministic.


def _rollback_file_with_writer(path: Path) -> sqlite3.Connection:
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (i INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    return writer


def _opened_while_writer_holds(path: Path, open_it: Callable[[], object]) -> float:
    """Open while a writer holds the file for 0.3 s; the seconds the open took."""
    writer = _rollback_file_with_writer(path)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(path, timeout=5).execute("PRAGMA journal_mode=WAL")
    timer = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    timer.start()
    started = time.monotonic()
    try:
        open_it()
    finally:
        timer.join()
        writer.close()
    return time.monotonic() - started


def test_lease_store_waits_for_a_writer_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "leases.db"
    store = SQLiteStore(str(path))
    took = _opened_while_writer_holds(path, lambda: store.try_acquire("pgs:2026-02-03", "me", 5.0))
    assert took >= 0.25
    assert store.holder("pgs:2026-02-03") is not None


def test_document_client_waits_for_a_writer_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    clients: list[SQLiteDocumentClient] = []
    took = _opened_while_writer_holds(path, lambda: clients.append(SQLiteDocumentClient(path)))
    assert took >= 0.25
    ref = clients[0].collection("c").document("d")
    ref.set({"n": 1})
    assert ref.get().to_dict() == {"n": 1}


def test_connect_shared_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    writer = _rollback_file_with_writer(path)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            connect_shared(str(path), timeout=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        writer.close()

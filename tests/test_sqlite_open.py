"""Several processes opening one new SQLite lease file at once all get a working store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

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

"""Opening an SQLite file that several processes share, in WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ._backoff import retry_while

__all__ = ["connect_shared"]

# Retries while the file is busy back off from 2 ms up to 25 ms: the process holding it
# (switching the file to WAL, creating a schema) needs only milliseconds.
RETRY_BASE = 0.002
RETRY_CAP = 0.025


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def connect_shared(
    path: str,
    *,
    timeout: float,
    setup: Sequence[str] = (),
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection in WAL mode (autocommit) with ``setup`` run, retried while the file is busy.

    Switching a file to WAL needs the exclusive lock, and SQLite answers SQLITE_BUSY at
    once, without waiting in its busy handler, when another connection holds the write
    lock of a rollback-journal file (as when several processes open a new file together).
    Gives up after ``timeout`` seconds and raises the last ``sqlite3.Error``.
    """

    def open_once() -> sqlite3.Connection:
        conn = sqlite3.connect(
            path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in setup:
                conn.execute(statement)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    return retry_while(
        open_once, retryable=_is_busy, timeout=timeout, base=RETRY_BASE, cap=RETRY_CAP
    )

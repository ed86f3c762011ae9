"""Opening an SQLite file that several processes share, in WAL mode."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Sequence

__all__ = ["connect_shared"]

RETRY_MIN = 0.002
RETRY_MAX = 0.025


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
    give_up = time.monotonic() + timeout
    while True:
        conn = None
        try:
            conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
            )
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in setup:
                conn.execute(statement)
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            busy = isinstance(exc, sqlite3.OperationalError) and (
                "locked" in str(exc) or "busy" in str(exc)
            )
            if not busy or time.monotonic() >= give_up:
                raise
            time.sleep(random.uniform(RETRY_MIN, RETRY_MAX))

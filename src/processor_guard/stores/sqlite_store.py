"""SQLite lease store: embedded, safe across processes on one machine."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._backoff import full_jitter
from .._sqlite import connect_shared
from ..errors import StoreUnavailable
from .base import (
    AcquireResult,
    Holder,
    LeaseStore,
    PollingWaiter,
    ReleaseWaiter,
    RenewRequest,
    fence_seed,
)

__all__ = ["SQLiteStore"]

# One row per key; a released or expired lease keeps its row (owner NULL) so the
# fence keeps rising. expires_at is the store clock's seconds (wall clock by default,
# shared by every process on the machine).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT,
    fence INTEGER NOT NULL,
    expires_at REAL NOT NULL DEFAULT 0
)
"""
BUSY_TIMEOUT = 10.0
# Waiters poll: short jittered sleeps, from 2 ms up to 25 ms, keep hand-off quick on one
# machine and the processes out of lock-step.
POLL_BASE = 0.002
POLL_CAP = 0.025
# Connections inherited across fork are kept open, never closed in the child:
# SQLite forbids using (or closing) a parent's connection in a child.
_inherited: list[sqlite3.Connection] = []


class _BackoffPoller(PollingWaiter):
    """Sleeps a short backoff slice of the timeout; SQLite has no release notices."""

    def __init__(self) -> None:
        super().__init__()
        self._polls = 0

    def wait(self, timeout: float) -> bool:
        if timeout > 0:
            time.sleep(min(timeout, full_jitter(POLL_BASE, POLL_CAP, self._polls)))
            self._polls += 1
        return False


class SQLiteStore(LeaseStore):
    """Leases in one SQLite file; every change runs in a ``BEGIN IMMEDIATE`` transaction.

    Connections are per thread and per process (re-opened after a fork), so one store
    object is safe to share between threads and to inherit across ``fork``.
    """

    scheme = "sqlite"
    batch_renewal = True

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._local = threading.local()

    def _conn(self, key: str | None) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.pid == os.getpid():
                return conn
            _inherited.append(conn)
        conn = self._open(key)
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open(self, key: str | None) -> sqlite3.Connection:
        """A set-up connection; retries the set-up while another process holds the file."""
        try:
            return connect_shared(
                self.path,
                timeout=BUSY_TIMEOUT,
                setup=("PRAGMA synchronous=NORMAL", _SCHEMA),
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._unavailable(key, exc) from exc

    def _unavailable(self, key: str | None, exc: BaseException) -> StoreUnavailable:
        what = f"key {key!r}" if key is not None else "holders"
        return StoreUnavailable(f"sqlite {self.path!r} unusable for {what}: {exc}", key=key)

    def _write(self, key: str, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``body`` inside BEGIN IMMEDIATE ... COMMIT, rolling back on any error."""
        conn = self._conn(key)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._unavailable(key, exc) from exc

    def _row(self, conn: sqlite3.Connection, key: str) -> tuple[str | None, int, float] | None:
        row = conn.execute(
            "SELECT owner, fence, expires_at FROM leases WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (row[0], int(row[1]), float(row[2]))

    def _live_holder(
        self, key: str, row: tuple[str | None, int, float] | None, now: float
    ) -> Holder | None:
        if row is None or row[0] is None or row[2] <= now:
            return None
        return Holder(key, row[0], row[1], row[2] - now)

    def _next_fence(self, row: tuple[str | None, int, float] | None, now: float) -> int:
        return max(row[1] + 1 if row else 0, fence_seed(now))

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        # A plain read first: a waiter polling a held key never takes the write lock.
        conn = self._conn(key)
        try:
            busy = self._live_holder(key, self._row(conn, key), self._clock())
        except sqlite3.Error as exc:
            raise self._unavailable(key, exc) from exc
        if busy is not None:
            return AcquireResult(False, holder=busy)

        def take(conn: sqlite3.Connection) -> AcquireResult:
            now = self._clock()
            row = self._row(conn, key)
            held = self._live_holder(key, row, now)
            if held is not None:
                return AcquireResult(False, holder=held)
            fence = self._next_fence(row, now)
            conn.execute(
                "INSERT INTO leases (key, owner, fence, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, "
                "fence = excluded.fence, expires_at = excluded.expires_at",
                (key, owner, fence, now + ttl),
            )
            return AcquireResult(True, fence=fence)

        result: AcquireResult = self._write(key, take)
        return result

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        def extend(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cur = conn.execute(
                "UPDATE leases SET expires_at = ? "
                "WHERE key = ? AND owner = ? AND fence = ? AND expires_at > ?",
                (now + ttl, key, owner, fence, now),
            )
            return cur.rowcount == 1

        ok: bool = self._write(key, extend)
        return ok

    def renew_many(self, leases: Sequence[RenewRequest]) -> list[bool | Exception]:
        """Every renewal in one ``BEGIN IMMEDIATE`` transaction (one fsync, one lock)."""
        if not leases:
            return []

        def extend_all(conn: sqlite3.Connection) -> list[bool | Exception]:
            now = self._clock()
            return [
                conn.execute(
                    "UPDATE leases SET expires_at = ? "
                    "WHERE key = ? AND owner = ? AND fence = ? AND expires_at > ?",
                    (now + ttl, key, owner, fence, now),
                ).rowcount
                == 1
                for key, owner, fence, ttl in leases
            ]

        answers: list[bool | Exception] = self._write(leases[0][0], extend_all)
        return answers

    def release(self, key: str, owner: str, fence: int) -> bool:
        def free(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE leases SET owner = NULL, expires_at = 0 "
                "WHERE key = ? AND owner = ? AND fence = ?",
                (key, owner, fence),
            )
            return cur.rowcount == 1

        ok: bool = self._write(key, free)
        return ok

    def holder(self, key: str) -> Holder | None:
        try:
            return self._live_holder(key, self._row(self._conn(key), key), self._clock())
        except sqlite3.Error as exc:
            raise self._unavailable(key, exc) from exc

    def holders(self) -> list[Holder]:
        try:
            now = self._clock()
            rows = self._conn(None).execute(
                "SELECT key, owner, fence, expires_at FROM leases "
                "WHERE owner IS NOT NULL AND expires_at > ? ORDER BY key",
                (now,),
            )
            return [Holder(k, o, int(f), float(e) - now) for k, o, f, e in rows]
        except sqlite3.Error as exc:
            raise self._unavailable(None, exc) from exc

    def break_lease(self, key: str) -> int:
        def bump(conn: sqlite3.Connection) -> int:
            fence = self._next_fence(self._row(conn, key), self._clock())
            conn.execute(
                "INSERT INTO leases (key, owner, fence, expires_at) VALUES (?, NULL, ?, 0) "
                "ON CONFLICT(key) DO UPDATE SET owner = NULL, fence = excluded.fence, "
                "expires_at = 0",
                (key, fence),
            )
            return fence

        fence: int = self._write(key, bump)
        return fence

    def release_waiter(self, key: str) -> ReleaseWaiter:
        return _BackoffPoller()

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

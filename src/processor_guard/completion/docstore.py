"""A Firestore-compatible document client on one SQLite file, for local runs and the demo.

It implements the small part of ``google.cloud.firestore.Client`` that
:class:`~processor_guard.completion.tracker.CompletionTracker` uses
(``collection().document()``, ``get``, ``create``, ``update`` with a
``last_update_time`` precondition, ``write_option``), with the same optimistic-write
semantics: ``create`` fails with
``AlreadyExists`` when the document exists, and an ``update`` whose precondition no
longer holds fails with ``FailedPrecondition``. Each write is one ``BEGIN IMMEDIATE``
transaction, so it is atomic across processes on one machine (not across machines).

Documents are stored as JSON text, timestamps as ``{"$timestamp": "<ISO 8601>"}``; never
pickle, which would run code from a crafted file on read. ``read_only=True`` opens the
file without creating it, its table or switching its journal mode (for ``health``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._docapi import already_exists, delete_field, failed_precondition, not_found, server_timestamp
from .._sqlite import connect_shared
from ..errors import ConfigError

__all__ = ["SQLiteDocumentClient"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS docs (path TEXT PRIMARY KEY, data BLOB, update_us INTEGER)"


_TIMESTAMP = "$timestamp"


def _encode(data: dict[str, Any]) -> str:
    """A document as JSON text with typed timestamps; other types are refused."""

    def typed(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            return {_TIMESTAMP: value.isoformat()}
        raise ConfigError(f"cannot store a {type(value).__name__} in a completion document")

    return json.dumps(data, default=typed, sort_keys=True)


def _decode(raw: object, path: str) -> dict[str, Any]:
    def typed(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and isinstance(obj.get(_TIMESTAMP), str):
            return dt.datetime.fromisoformat(obj[_TIMESTAMP])
        return obj

    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not isinstance(text, str):
            raise ValueError(f"a {type(raw).__name__} value")
        data = json.loads(text, object_hook=typed)
    except ValueError as exc:
        raise ConfigError(
            f"completion document {path!r} is not JSON ({exc.__class__.__name__}); "
            "not read (an older version stored pickles, which are never loaded)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"completion document {path!r} is not a JSON object")
    return data


def _utc(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.timezone.utc)


def _us(value: dt.datetime) -> int:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _resolve(value: Any, now: dt.datetime) -> Any:
    if value is server_timestamp():
        return now
    if isinstance(value, dict):
        return {k: _resolve(v, now) for k, v in value.items() if v is not delete_field()}
    if isinstance(value, list):
        return [_resolve(v, now) for v in value]
    return value


def _split_path(field_path: str) -> list[str]:
    """``a.b`` -> [a, b]; backquoted segments (FieldPath.to_api_repr) keep their dots."""
    parts: list[str] = []
    i = 0
    while i < len(field_path):
        if field_path[i] == "`":
            j = i + 1
            seg = []
            while j < len(field_path) and field_path[j] != "`":
                if field_path[j] == "\\" and j + 1 < len(field_path):
                    j += 1
                seg.append(field_path[j])
                j += 1
            parts.append("".join(seg))
            i = j + 2  # closing backquote and the dot after it
        else:
            j = field_path.find(".", i)
            j = len(field_path) if j < 0 else j
            parts.append(field_path[i:j])
            i = j + 1
    return parts


@dataclass(frozen=True)
class _Precondition:
    last_update_time: dt.datetime


@dataclass(frozen=True)
class WriteResult:
    """The server time of a write."""

    update_time: dt.datetime


class DocumentSnapshot:
    """A document as read: ``exists``, ``to_dict()``, ``read_time``, ``update_time``."""

    def __init__(
        self,
        reference: DocumentReference,
        data: dict[str, Any] | None,
        read_time: dt.datetime,
        update_time: dt.datetime | None,
    ) -> None:
        self.reference = reference
        self.id = reference.id
        self.exists = data is not None
        self._data = data
        self.read_time = read_time
        self.update_time = update_time

    def to_dict(self) -> dict[str, Any] | None:
        return copy.deepcopy(self._data)


class DocumentReference:
    """One document of a collection."""

    def __init__(self, client: SQLiteDocumentClient, collection: str, doc_id: str) -> None:
        self._client = client
        self.id = doc_id
        self.path = f"{collection}/{doc_id}"

    def get(self, *args: Any, **kwargs: Any) -> DocumentSnapshot:
        with self._client._tx(write=False) as (db, now_us):
            row = db.execute(
                "SELECT data, update_us FROM docs WHERE path = ?", (self.path,)
            ).fetchone()
        if row is None:
            return DocumentSnapshot(self, None, _utc(now_us), None)
        return DocumentSnapshot(self, _decode(row[0], self.path), _utc(now_us), _utc(row[1]))

    def create(self, document_data: dict[str, Any], *args: Any, **kwargs: Any) -> WriteResult:
        with self._client._tx(write=True) as (db, now_us):
            if db.execute("SELECT 1 FROM docs WHERE path = ?", (self.path,)).fetchone():
                raise already_exists(f"Document already exists: {self.path}")
            data = _resolve(dict(document_data), _utc(now_us))
            db.execute(
                "INSERT INTO docs (path, data, update_us) VALUES (?, ?, ?)",
                (self.path, _encode(data), now_us),
            )
        return WriteResult(_utc(now_us))

    def set(self, document_data: dict[str, Any], *args: Any, **kwargs: Any) -> WriteResult:
        with self._client._tx(write=True) as (db, now_us):
            data = _resolve(dict(document_data), _utc(now_us))
            db.execute(
                "INSERT OR REPLACE INTO docs (path, data, update_us) VALUES (?, ?, ?)",
                (self.path, _encode(data), now_us),
            )
        return WriteResult(_utc(now_us))

    def update(
        self, field_updates: dict[str, Any], option: _Precondition | None = None, **kwargs: Any
    ) -> WriteResult:
        with self._client._tx(write=True) as (db, now_us):
            row = db.execute(
                "SELECT data, update_us FROM docs WHERE path = ?", (self.path,)
            ).fetchone()
            if row is None:
                raise not_found(f"No document to update: {self.path}")
            if option is not None and _us(option.last_update_time) != row[1]:
                raise failed_precondition(f"update_time precondition failed: {self.path}")
            data: dict[str, Any] = _decode(row[0], self.path)
            now = _utc(now_us)
            for field_path, value in field_updates.items():
                *parents, leaf = _split_path(field_path)
                target = data
                for name in parents:
                    nxt = target.get(name)
                    if not isinstance(nxt, dict):
                        nxt = target[name] = {}
                    target = nxt
                if value is delete_field():
                    target.pop(leaf, None)
                else:
                    target[leaf] = _resolve(value, now)
            db.execute(
                "UPDATE docs SET data = ?, update_us = ? WHERE path = ?",
                (_encode(data), now_us, self.path),
            )
        return WriteResult(now)


class CollectionReference:
    """A named collection; documents are created on first write."""

    def __init__(self, client: SQLiteDocumentClient, name: str) -> None:
        self._client = client
        self.id = name

    def document(self, doc_id: str) -> DocumentReference:
        return DocumentReference(self._client, self.id, doc_id)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[DocumentSnapshot]:
        with self._client._tx(write=False) as (db, now_us):
            rows = db.execute(
                "SELECT path, data, update_us FROM docs WHERE path LIKE ? ORDER BY path",
                (f"{self.id}/%",),
            ).fetchall()
        for path, data, update_us in rows:
            ref = self.document(path.split("/", 1)[1])
            yield DocumentSnapshot(ref, _decode(data, path), _utc(now_us), _utc(update_us))


class SQLiteDocumentClient:
    """Firestore-like documents in one SQLite file; safe across processes on one machine."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        if not str(path):
            raise ConfigError("SQLiteDocumentClient needs a file path")
        self.path = str(path)
        self.read_only = read_only
        self._local = threading.local()
        self._last_us = 0
        if read_only:
            if not Path(self.path).is_file():
                raise ConfigError(f"completion file {self.path!r} does not exist")
            with self._tx(write=False) as (db, _):
                found = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'docs'"
                ).fetchone()
            if not found:
                raise ConfigError(f"{self.path!r} is not a completion store (no docs table)")
        else:
            with self._tx(write=True):
                pass

    def collection(self, name: str) -> CollectionReference:
        if not name or "/" in name:
            raise ConfigError(f"collection must be a non-empty name without '/': {name!r}")
        return CollectionReference(self, name)

    def write_option(self, *, last_update_time: dt.datetime) -> _Precondition:
        return _Precondition(last_update_time)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            if self.read_only:
                uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
                db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            else:
                db = connect_shared(self.path, timeout=30, setup=(_SCHEMA,))
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[tuple[sqlite3.Connection, int]]:
        if write and self.read_only:
            raise ConfigError(f"completion file {self.path!r} is open read-only")
        db = self._db()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            # Server time: strictly increasing per client so update times are unique;
            # writes from other processes are ordered by the file lock.
            now_us = max(time.time_ns() // 1000, self._last_us + 1)
            if write:
                top = db.execute("SELECT MAX(update_us) FROM docs").fetchone()[0]
                now_us = max(now_us, (top or 0) + 1)
                self._last_us = now_us
            yield db, now_us
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

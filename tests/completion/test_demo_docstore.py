"""The demo's local completion backend: a Firestore-compatible document client on
SQLite with the same optimistic-write semantics, shared by threads and processes."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from processor_guard import CompletionTracker, ConfigError
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.demo.data import EXPECTED_PROCESSORS


def test_create_update_and_preconditions(tmp_path: Path) -> None:
    client = SQLiteDocumentClient(tmp_path / "docs.db")
    ref = client.collection("phase3_completion").document("2026-02-03")
    assert ref.get().exists is False
    first = ref.create({"a": 1, "at": firestore.SERVER_TIMESTAMP})
    with pytest.raises(gexc.AlreadyExists):
        ref.create({"a": 2})
    snap = ref.get()
    assert snap.to_dict() == {"a": 1, "at": first.update_time}
    assert snap.update_time == first.update_time
    assert snap.read_time >= snap.update_time

    ref.update(
        {"b": {"x": 1}, "a": firestore.DELETE_FIELD},
        option=client.write_option(last_update_time=snap.update_time),
    )
    assert ref.get().to_dict() == {"at": first.update_time, "b": {"x": 1}}
    # The snapshot we read is now stale: its precondition fails and nothing changes.
    with pytest.raises(gexc.FailedPrecondition):
        ref.update({"c": 3}, option=client.write_option(last_update_time=snap.update_time))
    with pytest.raises(gexc.NotFound):
        client.collection("phase3_completion").document("nope").update({"c": 3})
    assert [s.id for s in client.collection("phase3_completion").stream()] == ["2026-02-03"]
    assert isinstance(ref.get().update_time, dt.datetime)


def test_tracker_counts_exactly_once_across_threads_and_processes(tmp_path: Path) -> None:
    """Shuffled completion messages with duplicates, from threads and a second OS
    process: the derived count is exact and the trigger is published once."""
    path = tmp_path / "docs.db"
    published: list[str] = []
    lock = threading.Lock()

    def publish(day: str, state: object) -> str:
        with lock:
            published.append(day)
            return f"m-{len(published)}"

    messages = [(p, f"run-{i}") for i in range(20) for p in EXPECTED_PROCESSORS]
    messages += [*random.sample(messages, 30), ("not_a_processor", "x")]
    random.shuffle(messages)

    errors: list[BaseException] = []

    def worker(chunk: list[tuple[str, str]]) -> None:
        try:
            tracker = CompletionTracker(
                SQLiteDocumentClient(path), "phase3", list(EXPECTED_PROCESSORS), publish=publish
            )
            for name, run in chunk:
                tracker.record("2026-02-03", name, execution_id=run, record_count=1)
        except BaseException as exc:  # a thread's error would otherwise only be a warning
            errors.append(exc)

    # Another process records player_game_summary runs concurrently. It has no publish
    # callable: if its record is the one that completes the date, the trigger stays
    # pending in the document for the next caller (publish_pending below).
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; "
            "from processor_guard.completion.docstore import SQLiteDocumentClient as C; "
            "from processor_guard import CompletionTracker as T; "
            f"t = T(C({str(path)!r}), 'phase3', {list(EXPECTED_PROCESSORS)!r}); "
            "[t.record('2026-02-03', 'player_game_summary', execution_id=f'p{i}') "
            "for i in range(40)]",
        ]
    )
    threads = [threading.Thread(target=worker, args=(messages[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other.wait(120) == 0
    assert errors == []

    tracker = CompletionTracker(
        SQLiteDocumentClient(path), "phase3", list(EXPECTED_PROCESSORS), publish=publish
    )
    state = tracker.publish_pending("2026-02-03")
    assert state.count == 5
    assert set(state.completed) == set(EXPECTED_PROCESSORS)
    assert state.triggered
    assert published == ["2026-02-03"]


def test_documents_are_json_and_a_pickled_payload_is_never_loaded(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    path = tmp_path / "docs.db"
    client = SQLiteDocumentClient(path)
    ref = client.collection("phase3_completion").document("2026-02-03")
    when = dt.datetime(2026, 2, 4, 15, 0, 6, tzinfo=dt.timezone.utc)
    ref.set({"at": when, "n": 3, "names": ["a"], "nested": {"ok": True}})
    with sqlite3.connect(path) as db:
        (raw,) = db.execute("SELECT data FROM docs").fetchone()
    assert '"$timestamp": "2026-02-04T15:00:06+00:00"' in raw
    assert ref.get().to_dict() == {"at": when, "n": 3, "names": ["a"], "nested": {"ok": True}}

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.touch, ())  # type: ignore[return-value]

    crafted = pickle.dumps({"x": Exploit()})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE docs SET data = ?", (crafted,))
    with pytest.raises(ConfigError, match="not JSON"):
        ref.get()
    assert not marker.exists()


def test_read_only_client_creates_nothing_and_changes_no_journal_mode(tmp_path: Path) -> None:
    import sqlite3

    missing = tmp_path / "typo.db"
    with pytest.raises(ConfigError, match="does not exist"):
        SQLiteDocumentClient(missing, read_only=True)
    assert not missing.exists()
    other = tmp_path / "unrelated.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError, match="not a completion store"):
        SQLiteDocumentClient(other, read_only=True)
    with sqlite3.connect(other) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
    assert tables == ["t"]
    path = tmp_path / "docs.db"
    SQLiteDocumentClient(path).collection("c").document("d").set({"a": 1})
    ro = SQLiteDocumentClient(path, read_only=True)
    assert ro.collection("c").document("d").get().to_dict() == {"a": 1}
    with pytest.raises(ConfigError, match="read-only"):
        ro.collection("c").document("d").set({"a": 2})

"""``processor-guard demo``: the 2026-02-03 incident replayed without and with the guard.

Each replay runs three real OS processes against one lease store, one warehouse and one
completion document:

* ``instance-1``: player_game_summary, started by the first gamebook batch (2 games);
* ``instance-2``: player_game_summary again, started "18 s later" by the second batch
  (all 10 games), while instance 1 is still saving;
* ``others``: the four other analytics processors, plus one duplicate Pub/Sub delivery
  of a completion message.

How the write conflict is made to happen: the processes talk through an append-only
event file. Instance 2 is released only once instance 1 is mid-save, and instance 1
stays mid-save until instance 2 has reached its own save (the 18 s of the story,
compressed). In the unguarded replay the two MERGE jobs therefore overlap on one table
and partition, and the demo's stand-in for BigQuery's DML concurrency control (a job
registry shared by the processes, see :class:`DmlJobs`) fails both of them with the
error BigQuery gives: ``400 Could not serialize access to table ... due to concurrent
update``. The anti-pattern then does what the pipeline did: DELETE the date and INSERT
its batch, as separate statements. In the guarded replay instance 2 waits on (or is
refused) the lease instead, so the two saves never overlap.

The naive save path lives only here (:class:`NaiveSaver`), labelled as the
anti-pattern; the library's own statements never contain DELETE.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click

from .._backoff import retry_while
from .._extras import needs_extra
from ..errors import ConfigError, GuardError, LockBusy, StoreUnavailable
from ..tables import TABLES
from . import data as demo_data

__all__ = ["DmlJobs", "NaiveSaver", "demo_command", "run_demo"]

PGS = "player_game_summary"
PHASE = "phase3"
ROLES = ("instance-1", "instance-2", "others")
DEMO = "demo"  # the events the demo's own process writes
ORCHESTRATOR = "orchestr."  # the unguarded replay's phase 3 -> 4 orchestrator
MODES = ("unguarded", "guarded")
BIGQUERY_ENDPOINT_ENV = "PROCESSOR_GUARD_BIGQUERY_ENDPOINT"
#: Each demo instance is this module run as a separate OS process.
WORKER_MODULE = "processor_guard.demo.runner"
# Compressed job latencies: how long a BigQuery MERGE job and a load job "run".
MERGE_JOB_SECONDS = 0.4
LOAD_JOB_SECONDS = 0.4
GATE_TIMEOUT = 20.0


# --------------------------------------------------------------------------- events


class Events:
    """An append-only JSON-lines file the demo's processes report to and wait on."""

    def __init__(self, path: Path, who: str = "demo") -> None:
        self.path = path
        self.who = who
        self._offset = 0
        self._seen: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event; a single write() per line keeps lines whole across processes."""
        line = json.dumps({"t": time.time(), "who": self.who, "event": event, **fields})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def poll(self) -> list[dict[str, Any]]:
        """Events appended since the last poll."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        new = [json.loads(x) for x in data[:end].splitlines() if x.strip()]
        self._seen.extend(new)
        return new

    def all(self) -> list[dict[str, Any]]:
        self.poll()
        return list(self._seen)

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = GATE_TIMEOUT
    ) -> dict[str, Any] | None:
        """Block until an event (seen before or new) matches; None on timeout."""
        give_up = time.monotonic() + timeout
        while True:
            self.poll()
            for ev in self._seen:
                if match(ev):
                    return ev
            if time.monotonic() >= give_up:
                return None
            time.sleep(0.005)


def _started(who: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev.get("who") == who and ev.get("event") in ("ready", "error")


def _is(who: str, event: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: (
        ev.get("who") == who
        and ev.get("event") == event
        and all(ev.get(k) == v for k, v in fields.items())
    )


# --------------------------------------------------------------------------- warehouse


@dataclass
class WarehouseTarget:
    """Where the replay writes: a DuckDB file or a BigQuery dataset."""

    url: str
    kind: str  # "duckdb" or "bigquery"
    path: str = ""
    project: str = ""
    dataset: str = ""
    endpoint: str = ""  # a BigQuery emulator's URL

    @classmethod
    def parse(cls, url: str) -> WarehouseTarget:
        parts = urlsplit(url)
        if parts.scheme == "duckdb" and parts.path not in ("", "/"):
            return cls(url, "duckdb", path=parts.path)
        if parts.scheme == "bigquery" and parts.netloc and parts.path.strip("/"):
            dataset = parts.path.strip("/")
            endpoint = (parse_qs(parts.query).get("endpoint") or [""])[0]
            if "/" in dataset:
                raise ConfigError(f"bad warehouse URL {url!r}: expected bigquery://PROJECT/DATASET")
            endpoint = endpoint or os.environ.get(BIGQUERY_ENDPOINT_ENV, "")
            return cls(url, "bigquery", project=parts.netloc, dataset=dataset, endpoint=endpoint)
        raise ConfigError(
            f"bad warehouse URL {url!r}: expected duckdb:///path/file.duckdb "
            "or bigquery://PROJECT/DATASET"
        )

    def table(self, name: str) -> str:
        """The table name as the warehouse's SQL and safe_merge address it."""
        if self.kind == "bigquery":
            return f"{self.project}.{self.dataset}.{name}"
        return f"main.{name}"

    # Raw access, used by the naive path and to measure the result.

    @contextlib.contextmanager
    def duckdb(self) -> Iterator[Any]:
        """Open the DuckDB file for one operation, waiting while another process has it."""
        import duckdb

        # Another process holds the file for one short operation: retry within 10 ms.
        con = retry_while(
            lambda: duckdb.connect(self.path),
            retryable=lambda exc: (
                isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()
            ),
            timeout=60,
            base=0.01,
            cap=0.01,
        )
        try:
            yield con
        finally:
            con.close()

    def bigquery(self) -> Any:
        from google.cloud import bigquery

        if not self.endpoint:
            return bigquery.Client(project=self.project)
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; returns its rows."""
        if self.kind == "duckdb":
            with self.duckdb() as con:
                return list(con.execute(statement, params or {}).fetchall())
        from google.cloud import bigquery

        client = self.bigquery()
        config = bigquery.QueryJobConfig(
            query_parameters=[_bq_param(k, v) for k, v in (params or {}).items()]
        )
        return [tuple(r.values()) for r in client.query(statement, job_config=config).result()]

    def create_tables(self) -> None:
        """(Re)create the five analytics tables empty."""
        if self.kind == "duckdb":
            for table in demo_data.COLUMNS:
                self.sql(f"DROP TABLE IF EXISTS {self.table(table)}")
                ddl = demo_data.create_table_sql(
                    table, engine="duckdb", qualified=self.table(table)
                )
                self.sql(ddl)
            return
        from google.cloud import bigquery

        client = self.bigquery()
        client.create_dataset(f"{self.project}.{self.dataset}", exists_ok=True)
        for table in demo_data.COLUMNS:
            client.delete_table(self.table(table), not_found_ok=True)
            spec = bigquery.Table(
                self.table(table),
                schema=[bigquery.SchemaField(c, t) for c, t in demo_data.COLUMNS[table]],
            )
            spec.time_partitioning = bigquery.TimePartitioning(field="game_date")
            client.create_table(spec)

    def measure(self, table: str, day: dt.date) -> dict[str, int]:
        """Rows, distinct keys and duplicate rows of one table for one date."""
        keys = ", ".join(TABLES[table].keys)
        q = "`" if self.kind == "bigquery" else ""
        rows, distinct = self.sql(
            f"SELECT COUNT(*), COUNT(DISTINCT ({keys})) FROM {q}{self.table(table)}{q} "
            "WHERE game_date = @day"
            if self.kind == "bigquery"
            else f"SELECT COUNT(*), COUNT(DISTINCT ({keys})) FROM {self.table(table)} "
            "WHERE game_date = $day",
            {"day": day},
        )[0]
        return {"rows": int(rows), "unique_keys": int(distinct), "duplicates": int(rows - distinct)}


def _bq_param(name: str, value: Any) -> Any:
    from google.cloud import bigquery

    if isinstance(value, dt.date):
        return bigquery.ScalarQueryParameter(name, "DATE", value)
    if isinstance(value, int):
        return bigquery.ScalarQueryParameter(name, "INT64", value)
    return bigquery.ScalarQueryParameter(name, "STRING", value)


# --------------------------------------------------------------------------- conflicts


class DmlJobs:
    """The demo's stand-in for BigQuery's DML concurrency control, shared by processes.

    A MERGE job registers when it starts and checks when it commits: if another DML job
    on the same table ran at any moment of its own run, it fails with BigQuery's
    concurrent-update error (as both MERGEs did in the incident).
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, tbl TEXT, who TEXT, "
                "started REAL, ended REAL)"
            )

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()

    def start(self, table: str, who: str) -> str:
        job = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, NULL)", (job, table, who, time.time()))
        return job

    def finish(self, job: str) -> list[str]:
        """End the job; returns the other jobs it overlapped (empty: it may commit)."""
        with self._db() as db:
            tbl, started = db.execute(
                "SELECT tbl, started FROM jobs WHERE id = ?", (job,)
            ).fetchone()
            others = db.execute(
                "SELECT who FROM jobs WHERE tbl = ? AND id != ? AND started <= ? "
                "AND (ended IS NULL OR ended >= ?)",
                (tbl, job, time.time(), started),
            ).fetchall()
            db.execute("UPDATE jobs SET ended = ? WHERE id = ?", (time.time(), job))
        return [o[0] for o in others]


class ConcurrentUpdate(Exception):
    """What BigQuery raises when two DML jobs on one table collide."""


# --------------------------------------------------------------------------- naive path


class NaiveSaver:
    """ANTI-PATTERN, kept only to replay the incident: never write a save path like this.

    MERGE from a staged batch updating every column; on any error whose text contains
    "400" (BigQuery's concurrent-update error is a 400), DELETE the whole date and
    INSERT the batch as two separate statements. Two instances interleaving DELETE,
    DELETE, INSERT, INSERT leave every key of the first batch twice, and a batch with
    fewer games than the date wipes the other games.
    """

    def __init__(
        self,
        target: WarehouseTarget,
        jobs: DmlJobs,
        events: Events,
        *,
        mid_save: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.jobs = jobs
        self.events = events
        self.mid_save = mid_save
        self.deletes = 0

    def save(self, table: str, rows: list[dict[str, Any]], day: dt.date) -> None:
        try:
            self._merge(table, rows)
        except Exception as exc:
            if "400" not in str(exc):
                raise
            self.events.emit("merge-failed", table=table, error=str(exc)[:160])
            self.target.sql(
                f"DELETE FROM {self._q(table)} WHERE game_date = "
                + ("@day" if self.target.kind == "bigquery" else "$day"),
                {"day": day},
            )
            self.deletes += 1
            self.events.emit("delete", table=table, statement="DELETE ... WHERE game_date = X")
            time.sleep(LOAD_JOB_SECONDS)  # the append load job runs
            self._insert(table, rows)
            self.events.emit("insert", table=table, rows=len(rows))

    def _q(self, table: str) -> str:
        name = self.target.table(table)
        return f"`{name}`" if self.target.kind == "bigquery" else name

    def _merge(self, table: str, rows: list[dict[str, Any]]) -> None:
        job = self.jobs.start(table, self.events.who)
        self.events.emit("merge-started", table=table, rows=len(rows))
        self.mid_save()
        time.sleep(MERGE_JOB_SECONDS)  # the MERGE job runs
        overlapped = self.jobs.finish(job)
        if overlapped:
            raise ConcurrentUpdate(
                f"400 Could not serialize access to table {self.target.table(table)} "
                "due to concurrent update"
            )
        cols = [c for c, _ in demo_data.COLUMNS[table]]
        keys = TABLES[table].keys
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        sets = ", ".join(f"{c} = s.{c}" for c in cols)  # every column, as the pipeline did
        merge = (
            f"MERGE INTO {self._q(table)} AS t USING ({self._source(table)}) AS s ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) "
            f"VALUES ({', '.join('s.' + c for c in cols)})"
        )
        self._run_with_rows(merge, table, rows)
        self.events.emit("merged", table=table, rows=len(rows))

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        cols = ", ".join(c for c, _ in demo_data.COLUMNS[table])
        self._run_with_rows(
            f"INSERT INTO {self._q(table)} ({cols}) SELECT {cols} FROM ({self._source(table)})",
            table,
            rows,
        )

    def _source(self, table: str) -> str:
        cols = [c for c, _ in demo_data.COLUMNS[table]]
        if self.target.kind == "duckdb":
            return f"SELECT {', '.join('r.' + c for c in cols)} FROM (SELECT unnest($rows) AS r)"
        return f"SELECT {', '.join(f'r.{c} AS {c}' for c in cols)} FROM UNNEST(@rows) AS r"

    def _run_with_rows(self, statement: str, table: str, rows: list[dict[str, Any]]) -> None:
        cols = [c for c, _ in demo_data.COLUMNS[table]]
        batch = [{c: r.get(c) for c in cols} for r in rows]
        if self.target.kind == "duckdb":
            with self.target.duckdb() as con:
                con.execute(statement, {"rows": batch})
            return
        from google.cloud import bigquery

        types = dict(demo_data.COLUMNS[table])
        structs = [
            bigquery.StructQueryParameter(
                None, *[bigquery.ScalarQueryParameter(c, types[c], r[c]) for c in cols]
            )
            for r in batch
        ]
        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ArrayQueryParameter("rows", "STRUCT", structs)]
        )
        self.target.bigquery().query(statement, job_config=config).result()


#: How the old orchestrator's invocations overlapped, message after message: each group
#: of completion messages is handled by that many invocations at once, and every one of
#: them reads ``_completed_count`` before any of them writes it back. Seven messages
#: (player_game_summary twice, the four others, one duplicate delivery) in groups of
#: 2, 3 and 2 leave the stored count at 3 with all five processors' entries written:
#: the incident's lost updates, the same on every run rather than by chance.
CONCURRENT_INVOCATIONS = (2, 3, 2)
COMPLETION_MESSAGES = sum(CONCURRENT_INVOCATIONS)


class NaiveCompletion:
    """ANTI-PATTERN: the old orchestrator's document, ``phase3_completion/{date}``.

    A stored ``_completed_count`` bumped once per message by read-modify-write, with no
    precondition and no dedup: duplicates are counted, and two invocations that read
    the same count write the same count + 1, so one update is lost. The trigger fires
    only when the stored count reaches 5.
    """

    def __init__(self, path: Path, publish: Callable[[str], str]) -> None:
        from ..completion.docstore import SQLiteDocumentClient

        self.client = SQLiteDocumentClient(path)
        self.publish = publish

    def _ref(self, day: str) -> Any:
        return self.client.collection(f"{PHASE}_completion").document(day)

    def initialise(self, day: str) -> None:
        self._ref(day).set({"_completed_count": 0})

    def state(self, day: str) -> dict[str, Any]:
        return self._ref(day).get().to_dict() or {}

    def write(self, day: str, processor: str, record_count: int, read: dict[str, Any]) -> int:
        """The write half of one invocation, from the document it read earlier."""
        count = int(read.get("_completed_count", 0)) + 1
        update: dict[str, Any] = {
            processor: {"status": "success", "record_count": record_count},
            "_completed_count": count,
        }
        if count >= len(demo_data.EXPECTED_PROCESSORS) and not read.get("_triggered"):
            update["_trigger_message_id"] = self.publish(day)
            update["_triggered"] = True
            update["_triggered_at"] = dt.datetime.now(dt.timezone.utc)
        self._ref(day).update(update)
        return count

    def close(self) -> None:
        self.client.close()


class NaiveOrchestrator:
    """ANTI-PATTERN: the phase 3 -> 4 Cloud Function, fed the replay's completion
    messages as the processes publish them; invocations overlap as
    :data:`CONCURRENT_INVOCATIONS` says."""

    def __init__(self, completion: NaiveCompletion, events: Events) -> None:
        self.completion = completion
        self.events = events
        self.day = demo_data.DEMO_DATE.isoformat()
        self.groups = list(CONCURRENT_INVOCATIONS)
        self.waiting: list[dict[str, Any]] = []
        self.seen = 0

    def feed(self, all_events: Sequence[dict[str, Any]]) -> None:
        """Take the completion messages published since the last call; handle every
        group whose messages have all arrived."""
        for ev in all_events[self.seen :]:
            if ev["event"] == "completion-message":
                self.waiting.append(ev)
        self.seen = len(all_events)
        while self.groups and len(self.waiting) >= self.groups[0]:
            self._handle(self.groups.pop(0))

    def drain(self) -> None:
        """Handle what is left (a replay that published fewer messages than planned)."""
        while self.waiting:
            self._handle(min(len(self.waiting), self.groups.pop(0) if self.groups else 1))

    def _handle(self, size: int) -> None:
        batch, self.waiting = self.waiting[:size], self.waiting[size:]
        reads = [self.completion.state(self.day) for _ in batch]
        if size > 1:
            self.events.emit("invocations", size=size, count=reads[0].get("_completed_count", 0))
        for message, read in zip(batch, reads, strict=True):
            count = self.completion.write(self.day, message["table"], message["rows"], read)
            self.events.emit(
                "completion",
                table=message["table"],
                count=count,
                duplicate=message.get("duplicate", False),
                lost=size > 1 and message is not batch[0],
            )


# --------------------------------------------------------------------------- workers


@dataclass
class WorkerConfig:
    """What one demo process needs; passed as JSON on its command line."""

    mode: str
    role: str
    dir: str
    store: str
    warehouse: str
    completion: str
    on_busy: str = "wait"
    ttl: float = 15.0

    def events(self, who: str | None = None) -> Events:
        return Events(Path(self.dir) / f"events-{self.mode}.jsonl", who or self.role)


def _games_for_role(role: str) -> list[demo_data.Game]:
    games = demo_data.games_for()
    return games[: demo_data.FIRST_BATCH_GAMES] if role == "instance-1" else games


def _completion_client(url: str) -> Any:
    """A Firestore client, or the SQLite document client for ``sqlite:///path``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from ..completion.docstore import SQLiteDocumentClient

        return SQLiteDocumentClient(parts.path)
    if parts.scheme == "firestore":
        from google.cloud import firestore

        return firestore.Client(project=parts.netloc)
    raise ConfigError(f"bad completion URL {url!r}: expected sqlite:///path or firestore://PROJECT")


def _gate(cfg: WorkerConfig, events: Events) -> Callable[[], None]:
    """Instance 1 stays mid-save until instance 2 has reached its own save."""
    if cfg.role != "instance-1":
        return lambda: None

    def wait_for_instance_2() -> None:
        events.emit("mid-save")
        if cfg.mode == "unguarded":
            events.wait_for(_is("instance-2", "merge-started"))
        elif cfg.on_busy == "refuse":
            events.wait_for(_is("instance-2", "refused"))
        elif events.wait_for(_is("instance-2", "lease-wait")) is not None:
            time.sleep(0.15)  # let its acquisition attempt reach the store

    return wait_for_instance_2


def _worker_unguarded(cfg: WorkerConfig, events: Events) -> None:
    target = WarehouseTarget.parse(cfg.warehouse)
    jobs = DmlJobs(Path(cfg.dir) / f"dml-jobs-{cfg.mode}.db")
    saver = NaiveSaver(target, jobs, events, mid_save=_gate(cfg, events))
    day = demo_data.DEMO_DATE
    tables = [PGS] if cfg.role != "others" else list(demo_data.EXPECTED_PROCESSORS[1:])
    games = _games_for_role(cfg.role)
    events.emit("ready")
    events.wait_for(_is(DEMO, "go", target=cfg.role), timeout=60)
    for table in tables:
        rows = demo_data.table_rows(table, games)
        events.emit("running", table=table, games=len(games), rows=len(rows))
        saver.save(table, rows, day)
        # Published to Pub/Sub; the orchestrator counts it (see NaiveOrchestrator).
        events.emit("completion-message", table=table, rows=len(rows))
    if cfg.role == "others":
        # Pub/Sub delivers at least once: the same completion message arrives again.
        events.emit("completion-message", table=tables[0], rows=20, duplicate=True)


def _publish(events: Events, day: str) -> str:
    message_id = f"msg-{uuid.uuid4().hex[:8]}"
    events.emit("trigger", game_date=day, message_id=message_id)
    return message_id


def _worker_guarded(cfg: WorkerConfig, events: Events) -> None:
    # Long: one guarded instance's run, step by step in the order the timeline
    # shows it to the reader of the demo.
    from ..completion.tracker import CompletionTracker
    from ..leases import LeaseHooks, guarded, register_hooks

    store_url = cfg.store
    target = WarehouseTarget.parse(cfg.warehouse)
    warehouse = _library_warehouse(target, events)
    tracker = CompletionTracker(
        _completion_client(cfg.completion),
        phase=PHASE,
        expected=list(demo_data.EXPECTED_PROCESSORS),
        publish=lambda day, state: _publish(events, day),
    )
    register_hooks(
        LeaseHooks(
            acquired=lambda lease: events.emit(
                "lease-acquired", key=lease.key, fence=lease.fence, owner=lease.owner
            ),
            released=lambda lease: events.emit("lease-released", key=lease.key, fence=lease.fence),
            lost=lambda lease: events.emit("lease-lost", key=lease.key, fence=lease.fence),
        )
    )
    wait = 30.0 if cfg.on_busy == "wait" else 0.0
    games = _games_for_role(cfg.role)
    mid_save = _gate(cfg, events)

    class Processor:
        """The demo's guarded analytics processor (examples/analytics_base.py, condensed)."""

        def __init__(self, table: str) -> None:
            self.table = table
            self.execution_id = f"{cfg.role}-{uuid.uuid4().hex[:8]}"

        @guarded(lambda self: self.table, store=store_url, ttl=cfg.ttl, wait=wait)
        def run(self, opts: dict[str, Any]) -> bool:
            rows = demo_data.table_rows(self.table, games)
            events.emit("running", table=self.table, games=len(games), rows=len(rows))
            result = _library_save(warehouse, target, self.table, rows, mid_save)
            events.emit(
                "merged",
                table=self.table,
                rows=len(rows),
                inserted=result["inserted"],
                updated=result["updated"],
                attempts=result["attempts"],
                fence=result["fence"],
            )
            # Recorded while the lease is held, so completion never runs ahead of data.
            state = tracker.record(
                opts["end_date"],
                self.table,
                execution_id=self.execution_id,
                record_count=len(rows),
            )
            events.emit("completion", table=self.table, count=state.count)
            return True

    day = demo_data.DEMO_DATE.isoformat()
    opts = {"start_date": day, "end_date": day}
    events.emit("ready")
    events.wait_for(_is(DEMO, "go", target=cfg.role), timeout=60)
    tables = [PGS] if cfg.role != "others" else list(demo_data.EXPECTED_PROCESSORS[1:])
    executions: dict[str, str] = {}
    for table in tables:
        processor = Processor(table)
        executions[table] = processor.execution_id
        for delivery in range(1, 200):
            if cfg.role == "instance-2":
                events.emit("lease-wait", table=table, delivery=delivery)
            try:
                processor.run(opts)
                break
            except LockBusy as busy:
                # The push endpoint answers 409 and Pub/Sub redelivers after a backoff.
                events.emit("refused", table=table, holder=busy.holder, delivery=delivery)
                time.sleep(0.25)
    if cfg.role == "others":
        # Pub/Sub delivers at least once: the same completion message arrives again.
        first = tables[0]
        state = tracker.record(day, first, execution_id=executions[first], record_count=20)
        events.emit("completion", table=first, count=state.count, duplicate=True)


def _library_warehouse(target: WarehouseTarget, events: Events) -> Any:
    """The warehouse safe_merge writes through, reporting every statement it sends."""
    from ..writes.warehouse import as_warehouse

    wh = as_warehouse(target.bigquery() if target.kind == "bigquery" else target.path)
    merge = wh.merge

    def recording_merge(plan: Any, **options: Any) -> Any:
        try:
            outcome = merge(plan, **options)
        except Exception as exc:
            events.emit("merge-attempt-failed", table=plan.table, kind=wh.classify(exc))
            raise
        sent = list(outcome.statements)
        deletes = sum(1 for sql in sent if "DELETE" in sql.upper())
        events.emit("statements", table=plan.table, count=len(sent), deletes=deletes)
        return outcome

    setattr(wh, "merge", recording_merge)  # noqa: B010 - instance-level wrapper
    return wh


def _library_save(
    warehouse: Any,
    target: WarehouseTarget,
    table: str,
    rows: list[dict[str, Any]],
    mid_save: Callable[[], None],
) -> dict[str, Any]:
    from ..leases import current_lease
    from ..writes.dedup import dedupe_rows
    from ..writes.merge import safe_merge

    spec = TABLES[table]
    deduped, _report = dedupe_rows(rows, keys=spec.keys, order_by=spec.order_by, keep="last")
    mid_save()
    lease = current_lease()
    result = safe_merge(
        warehouse,
        target.table(table),
        deduped,
        keys=spec.keys,
        partition_field=spec.partition_field,
    )
    return {
        "inserted": result.inserted,
        "updated": result.updated,
        "attempts": result.attempts,
        "fence": lease.fence if lease else None,
    }


def _worker_main(argv: Sequence[str]) -> int:
    cfg = WorkerConfig(**json.loads(argv[0]))
    events = cfg.events()
    try:
        if cfg.mode == "unguarded":
            _worker_unguarded(cfg, events)
        else:
            _worker_guarded(cfg, events)
    except BaseException as exc:
        events.emit("error", error=f"{type(exc).__name__}: {exc}"[:300])
        raise
    events.emit("done")
    return 0


# --------------------------------------------------------------------------- the demo


class DemoFailed(GuardError):
    """The demo could not run a replay (a process failed to start, a store is down)."""


@dataclass
class RunResult:
    """What one replay produced, as written to summary.json."""

    mode: str
    player_rows: int = 0
    unique_keys: int = 0
    duplicates: int = 0
    other_tables: dict[str, dict[str, int]] = field(default_factory=dict)
    delete_statements: int = 0
    statements_sent: int = 0
    merge_conflicts: int = 0
    fallbacks: int = 0
    conflicts_retried: int = 0
    lease_handoffs: int = 0
    refusals: int = 0
    second_instance: str = ""
    second_instance_waited: float = 0.0
    fences: list[int] = field(default_factory=list)
    completion_count: int = 0
    completion_entries: int = 0
    completion_expected: int = len(demo_data.EXPECTED_PROCESSORS)
    completion_derived: bool = False
    triggers: int = 0
    health: str = ""
    health_exit_code: int | None = None
    errors: list[str] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Why the replay is not clean (empty when it is)."""
        expected_rows = sum(g.player_count for g in demo_data.games_for())
        found = list(self.errors)
        if self.player_rows != expected_rows or self.unique_keys != expected_rows:
            found.append(
                f"{PGS}: {self.player_rows} rows, {self.unique_keys} unique, "
                f"expected {expected_rows}"
            )
        if self.duplicates:
            found.append(f"{PGS}: {self.duplicates} duplicate rows")
        if self.delete_statements:
            found.append(f"{self.delete_statements} DELETE statement(s) sent")
        for table, t in self.other_tables.items():
            if t["duplicates"] or t["rows"] != t["expected"]:
                found.append(f"{table}: {t['rows']} rows ({t['duplicates']} duplicate)")
        if self.completion_count != self.completion_expected:
            found.append(f"completion {self.completion_count}/{self.completion_expected}")
        if self.triggers != 1:
            found.append(f"{self.triggers} phase-4 triggers, expected 1")
        failed = {role: code for role, code in self.exit_codes.items() if code != 0}
        if failed and not self.errors:
            found.append(f"processes exited with {failed}")
        return found

    @property
    def clean(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["clean"] = self.clean
        return out


_STORY = {
    "instance-1": "15:00:06",
    "instance-2": "15:00:24",
    "others": "15:00:06",
}


def _describe(ev: dict[str, Any]) -> str | None:
    """One progress line for an event, or None for events not worth a line."""
    e = ev["event"]
    tbl = ev.get("table", "")
    expected = len(demo_data.EXPECTED_PROCESSORS)
    if e == "go":
        return f"[bold]{ev['target']}[/] starts (story time {_STORY.get(ev['target'], '')})"
    if e == "running":
        return f"{tbl}: {ev['rows']} rows from {ev['games']} game(s)"
    if e == "merge-started":
        return f"MERGE job started on {tbl} ({ev['rows']} rows)"
    if e == "merge-failed":
        return f"[red]MERGE failed[/]: {ev['error']}"
    if e == "delete":
        return f"[red]DELETE FROM {tbl} WHERE game_date = X[/]  (fallback, anti-pattern)"
    if e == "insert":
        return f"[red]INSERT {ev['rows']} rows into {tbl}[/]"
    if e == "merged":
        extra = ""
        if "attempts" in ev:
            extra = f" in {ev['attempts']} attempt(s), fence {ev['fence']}"
        return f"[green]MERGE {tbl}[/]: {ev['rows']} rows{extra}"
    if e == "lease-acquired":
        return f"lease {ev['key']} acquired, fence {ev['fence']}"
    if e == "lease-released":
        return f"lease {ev['key']} released"
    if e == "lease-wait" and ev.get("delivery", 1) == 1:
        return "asks for the lease on the date (instance-1 holds it)"
    if e == "refused":
        return f"[yellow]LockBusy[/] -> HTTP 409, Pub/Sub redelivers (delivery {ev['delivery']})"
    if e == "completion-message":
        dup = " again (duplicate Pub/Sub delivery)" if ev.get("duplicate") else ""
        return f"publishes completion of {tbl}{dup}"
    if e == "invocations":
        return (
            f"[yellow]{ev['size']} invocations at once[/], each reads "
            f"_completed_count = {ev['count']}"
        )
    if e == "completion" and ev.get("lost"):
        return (
            f"[red]completion {tbl}: writes count {ev['count']}/{expected}[/] "
            "(same value: the other invocation's update is lost)"
        )
    if e == "completion":
        dup = " (duplicate delivery)" if ev.get("duplicate") else ""
        return f"completion {tbl}: count {ev['count']}/{expected}{dup}"
    if e == "trigger":
        return f"[bold magenta]phase 4 triggered[/] ({ev['message_id']})"
    if e == "error":
        return f"[bold red]error[/]: {ev['error']}"
    return None


def _wait_started(
    mode: str, role: str, events: Events, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait until the process is ready; fail at once (with its last line) if it exits."""
    give_up = time.monotonic() + 60
    while events.wait_for(_started(role), timeout=0.05) is None:
        if proc.poll() is not None or time.monotonic() > give_up:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            last = lines[-1] if lines else "no output"
            raise DemoFailed(f"the {mode} replay's {role} process did not start: {last}")
    started = events.wait_for(_started(role), timeout=0)
    if started is not None and started["event"] == "error":
        raise DemoFailed(f"the {mode} replay's {role} process failed: {started['error']}")


def _replay(
    mode: str,
    base: WorkerConfig,
    target: WarehouseTarget,
    console: Any,
) -> RunResult:
    # Long: starting, watching and stopping the replay's processes is one story;
    # its steps share the processes and their logs.
    started = time.monotonic()
    folder = Path(base.dir)
    events = Events(folder / f"events-{mode}.jsonl")
    if events.path.exists():
        events.path.unlink()
    for stale in (f"dml-jobs-{mode}.db",):
        with contextlib.suppress(FileNotFoundError):
            (folder / stale).unlink()
    target.create_tables()
    orchestrator = None
    if mode == "unguarded":
        orchestrator_events = Events(events.path, ORCHESTRATOR)
        naive = NaiveCompletion(
            folder / "naive-completion.db",
            publish=lambda day: _publish(orchestrator_events, day),
        )
        naive.initialise(demo_data.DEMO_DATE.isoformat())
        orchestrator = NaiveOrchestrator(naive, orchestrator_events)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Any] = {}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    worker = [sys.executable, "-m", WORKER_MODULE, "worker"]
    for role in ROLES:
        cfg = WorkerConfig(**{**base.__dict__, "mode": mode, "role": role})
        logs[role] = open(folder / f"{mode}-{role}.log", "wb")  # noqa: SIM115
        procs[role] = subprocess.Popen(
            [*worker, json.dumps(cfg.__dict__)],
            stdout=logs[role],
            stderr=subprocess.STDOUT,
            env=env,
        )

    shown = 0

    def show() -> None:
        nonlocal shown
        seen = events.all()
        if orchestrator is not None:
            orchestrator.feed(seen)
            seen = events.all()
        for ev in seen[shown:]:
            line = _describe(ev)
            if line:
                console.print(f"  {ev['t'] - t0:6.2f}s  [cyan]{ev['who']:<10}[/] {line}")
        shown = len(seen)

    t0 = time.time()
    try:
        # Every process is warm (imports done, data built) before the timeline starts.
        for role in ROLES:
            _wait_started(mode, role, events, procs[role], folder / f"{mode}-{role}.log")
        t0 = time.time()
        events.emit("go", target="instance-1")
        events.emit("go", target="others")
        show()
        # Instance 2 arrives while instance 1 is mid-save: the story's 18 s.
        events.wait_for(
            lambda ev: ev["who"] == "instance-1" and ev["event"] in ("mid-save", "error", "done")
        )
        events.emit("go", target="instance-2")
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs.values()):
            show()
            if time.monotonic() > deadline:
                raise DemoFailed(f"the {mode} replay did not finish within 120 s")
            time.sleep(0.02)
        show()
        if orchestrator is not None:
            orchestrator.drain()
            show()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs.values():
            f.close()
        if orchestrator is not None:
            orchestrator.completion.close()
    return _measure(mode, base, target, events, procs, time.monotonic() - started)


def _second_instance(mode: str, evs: Sequence[dict[str, Any]], res: RunResult) -> str:
    """What the second instance of player_game_summary did, from its own events."""
    mine = [ev for ev in evs if ev["who"] == "instance-2"]
    failed = [ev["error"] for ev in mine if ev["event"] == "error"]
    if failed:
        return f"failed: {failed[0]}"
    if not any(ev["event"] in ("merged", "insert") for ev in mine):
        return "did not run"
    if mode == "unguarded":
        return "ran alongside"
    if res.refusals:
        return f"refused {res.refusals}x, then ran"
    if res.second_instance_waited:
        return f"waited {res.second_instance_waited:.2f}s"
    return "ran after instance-1"


def _measure(
    mode: str,
    base: WorkerConfig,
    target: WarehouseTarget,
    events: Events,
    procs: dict[str, subprocess.Popen[bytes]],
    seconds: float,
) -> RunResult:
    # Long: each row of the closing table is one query; they read best side by side.
    evs = events.all()
    day = demo_data.DEMO_DATE
    res = RunResult(mode=mode, seconds=round(seconds, 2))
    pgs = target.measure(PGS, day)
    res.player_rows, res.unique_keys, res.duplicates = (
        pgs["rows"],
        pgs["unique_keys"],
        pgs["duplicates"],
    )
    games = demo_data.games_for()
    res.other_tables = {
        t: {**target.measure(t, day), "expected": len(demo_data.table_rows(t, games))}
        for t in demo_data.EXPECTED_PROCESSORS[1:]
    }
    # Naive path: its own DELETEs; guarded path: DELETEs among the statements it sent.
    res.delete_statements = sum(1 for ev in evs if ev["event"] == "delete") + sum(
        int(ev["deletes"]) for ev in evs if ev["event"] == "statements"
    )
    res.statements_sent = sum(int(ev["count"]) for ev in evs if ev["event"] == "statements")
    res.merge_conflicts = sum(1 for ev in evs if ev["event"] == "merge-failed") + sum(
        1 for ev in evs if ev["event"] == "merge-attempt-failed" and ev["kind"] == "conflict"
    )
    res.fallbacks = sum(1 for ev in evs if ev["event"] == "merge-failed")
    res.conflicts_retried = sum(
        max(0, int(ev.get("attempts", 1)) - 1) for ev in evs if ev["event"] == "merged"
    )
    res.triggers = sum(1 for ev in evs if ev["event"] == "trigger")
    res.refusals = sum(1 for ev in evs if ev["event"] == "refused")
    res.errors = [f"{ev['who']}: {ev['error']}" for ev in evs if ev["event"] == "error"]
    res.exit_codes = {role: int(p.returncode) for role, p in procs.items()}
    holders: dict[str, str] = {}
    for ev in evs:
        if ev["event"] == "lease-acquired":
            if ev["key"] in holders and holders[ev["key"]] != ev["who"]:
                res.lease_handoffs += 1
            holders[ev["key"]] = ev["who"]
            if ev["key"].startswith(PGS):
                res.fences.append(int(ev["fence"]))
    waits = [ev for ev in evs if ev["who"] == "instance-2" and ev["event"] == "lease-wait"]
    got = [ev for ev in evs if ev["who"] == "instance-2" and ev["event"] == "lease-acquired"]
    if waits and got:
        res.second_instance_waited = round(got[0]["t"] - waits[0]["t"], 2)
    res.second_instance = _second_instance(mode, evs, res)
    from ..completion.tracker import CompletionTracker

    completion_url = (
        base.completion if mode == "guarded" else f"sqlite://{base.dir}/naive-completion.db"
    )
    tracker = CompletionTracker(
        _completion_client(completion_url),
        phase=PHASE,
        expected=list(demo_data.EXPECTED_PROCESSORS),
    )
    state = tracker.state(day)
    res.completion_entries = state.count
    if mode == "guarded":
        res.completion_count = state.count
        res.completion_derived = True
    else:
        res.completion_count = int(state.stored_count or 0)
    res.health, res.health_exit_code = _health(tracker, base.warehouse)
    return res


def _health(tracker: Any, warehouse_url: str) -> tuple[str, int | None]:
    """What ``processor-guard health`` says about the replay's warehouse and document."""
    from ..completion.health import run_health
    from ..writes.inspect import open_warehouse

    try:
        source = open_warehouse(warehouse_url)
    except GuardError as exc:
        return f"not run: {exc}", None
    try:
        report = run_health(demo_data.DEMO_DATE, tracker=tracker, warehouse=source)
    finally:
        source.close()
    return report.status, report.exit_code


def _table(results: dict[str, RunResult]) -> Any:
    from rich import box
    from rich.table import Table

    u, g = results["unguarded"], results["guarded"]
    table = Table(
        title="2026-02-03 replayed: the old pattern vs processor_guard",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("", no_wrap=True)
    table.add_column("unguarded", justify="right", no_wrap=True)
    table.add_column("guarded", justify="right", no_wrap=True)

    def bad(value: Any, ok: bool) -> str:
        return f"[green]{value}[/]" if ok else f"[red]{value}[/]"

    expected = sum(gm.player_count for gm in demo_data.games_for())
    of = len(demo_data.EXPECTED_PROCESSORS)
    table.add_row(
        "player_game_summary rows",
        bad(u.player_rows, u.player_rows == expected),
        bad(g.player_rows, g.player_rows == expected),
    )
    table.add_row("unique players", str(u.unique_keys), str(g.unique_keys))
    table.add_row(
        "duplicate rows", bad(u.duplicates, u.duplicates == 0), bad(g.duplicates, g.duplicates == 0)
    )
    table.add_row(
        "DELETE statements sent",
        bad(u.delete_statements, u.delete_statements == 0),
        bad(g.delete_statements, g.delete_statements == 0),
    )
    table.add_row("write conflicts hit", str(u.merge_conflicts), str(g.merge_conflicts))
    table.add_row(
        "conflict -> DELETE + INSERT",
        bad(u.fallbacks, u.fallbacks == 0),
        bad(g.fallbacks, g.fallbacks == 0),
    )
    table.add_row("conflict -> MERGE again", str(u.conflicts_retried), str(g.conflicts_retried))
    table.add_row("lease hand-offs", "no lease", str(g.lease_handoffs))
    table.add_row("second instance", u.second_instance, g.second_instance)
    table.add_row(
        "completion count",
        bad(f"{u.completion_count}/{of} stored", u.completion_count == of),
        bad(f"{g.completion_count}/{of} derived", g.completion_count == of),
    )
    table.add_row(
        "processors finished",
        f"{u.completion_entries}/{of}",
        f"{g.completion_entries}/{of}",
    )
    table.add_row(
        "phase-4 triggers", bad(u.triggers, u.triggers == 1), bad(g.triggers, g.triggers == 1)
    )
    table.add_row(
        "health (exit code)",
        bad(f"{u.health} ({u.health_exit_code})", u.health == "ok"),
        bad(f"{g.health} ({g.health_exit_code})", g.health == "ok"),
    )
    table.add_row("seconds", f"{u.seconds:.1f}", f"{g.seconds:.1f}")
    return table


def _redacted(url: str) -> str:
    """The URL with any password replaced, for screens and files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def cli_command() -> str:
    """How to run ``processor-guard`` from any shell: this interpreter's console script
    when it has one, else ``python -m processor_guard`` with this interpreter."""
    script = Path(sys.executable).with_name("processor-guard")
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m processor_guard"


def _preflight(store_url: str, warehouse: str | None) -> None:
    """Fail before any replay runs when a backend is missing or cannot be reached."""
    from ..stores import open_store

    if warehouse is None or warehouse.startswith("duckdb:"):
        with needs_extra("duckdb", "the demo's local warehouse (DuckDB)"):
            import duckdb  # noqa: F401 - the replays need it; fail before they start
    store = open_store(store_url)  # a bad URL fails here, with the supported schemes
    try:
        store.holder("processor-guard-demo:preflight:2026-02-03")
    except StoreUnavailable as exc:
        raise DemoFailed(
            f"the lease store {_redacted(store_url)} cannot be reached, so nothing was run: {exc}"
        ) from None
    finally:
        store.close()


def demo_console(**options: Any) -> Any:
    """The demo's rich console: markup for its own colours, no automatic highlighting
    (which would colour fragments such as the ``0.`` of ``0.00s``)."""
    from rich.console import Console

    return Console(highlight=False, **options)


def run_demo(
    directory: str | Path | None = None,
    *,
    store: str | None = None,
    warehouse: str | None = None,
    on_busy: str = "wait",
    keep: bool = False,
    console: Any = None,
) -> dict[str, Any]:
    """Replay the incident unguarded then guarded; returns the summary.

    The working folder is ``directory`` (kept, with ``summary.json``) or a new
    temporary folder, removed at the end unless ``keep``.
    """

    if on_busy not in ("wait", "refuse"):
        raise ConfigError(f"on_busy must be 'wait' or 'refuse', got {on_busy!r}")
    if store is not None and store.strip().lower().startswith("memory:"):
        raise ConfigError(
            f"--store {store!r}: a memory store lives inside one process, and the demo's "
            "instances are separate processes; use sqlite://, redis:// or firestore://"
        )
    if warehouse is not None:
        WarehouseTarget.parse(warehouse)
    console = console or demo_console()
    if directory is not None:
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--dir {str(directory)!r} is not a directory")
        folder.mkdir(parents=True, exist_ok=True)
        folder = folder.resolve()
        keep = True
    else:
        folder = Path(tempfile.mkdtemp(prefix="processor-guard-demo-")).resolve()
    try:
        return _run_in(folder, store, warehouse, on_busy, keep, console)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _run_in(
    folder: Path, store: str | None, warehouse: str | None, on_busy: str, keep: bool, console: Any
) -> dict[str, Any]:
    # Long: the unguarded instance replays the incident's code path as it was, step
    # by step, so the reader can follow it against the handoff.
    store_url = store or f"sqlite://{folder}/leases.db"
    _preflight(store_url, warehouse)
    completion_url = f"sqlite://{folder}/completion.db"
    if store_url.startswith("firestore://"):
        completion_url = f"firestore://{urlsplit(store_url).netloc}"
    for name in ("completion.db", "naive-completion.db"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    console.print(
        f"[bold]processor_guard demo[/]: game date {demo_data.DEMO_DATE}, 10 games, "
        f"348 player rows, two instances of player_game_summary 18 s apart (compressed)."
    )
    console.print(
        f"  folder       {folder}\n  lease store  {_redacted(store_url)}\n"
        f"  completion   {completion_url}",
        soft_wrap=True,
    )
    results: dict[str, RunResult] = {}
    for mode in MODES:
        wh_url = warehouse or f"duckdb://{folder}/{mode}.duckdb"
        target = WarehouseTarget.parse(wh_url)
        base = WorkerConfig(
            mode=mode,
            role="",
            dir=str(folder),
            store=store_url,
            warehouse=wh_url,
            completion=completion_url,
            on_busy=on_busy,
        )
        title = (
            "without the guard: MERGE, then DELETE + INSERT; a stored counter"
            if mode == "unguarded"
            else "with guarded + dedupe_rows + safe_merge + CompletionTracker"
        )
        console.rule(f"[bold]{mode}[/]")
        console.print(f"  {title}\n  warehouse {_redacted(wh_url)}", soft_wrap=True)
        results[mode] = _replay(mode, base, target, console)
    console.print()
    console.print(_table(results))
    summary = {
        "game_date": demo_data.DEMO_DATE.isoformat(),
        "store": _redacted(store_url),
        "completion": completion_url,
        "warehouse": _redacted(warehouse or f"duckdb://{folder}/<mode>.duckdb"),
        "expected_player_rows": sum(g.player_count for g in demo_data.games_for()),
        "unguarded": results["unguarded"].to_dict(),
        "guarded": results["guarded"].to_dict(),
        "clean": results["guarded"].clean,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    problems = results["guarded"].problems()
    if problems:
        console.print(f"[red]guarded run NOT clean[/]: {'; '.join(problems)}", soft_wrap=True)
    else:
        console.print("[green]guarded run clean[/]")
    if not keep:
        console.print("(temporary files removed; --keep or --dir DIR keeps them to inspect)")
        return summary
    console.print(f"Files kept in {folder} (summary.json, logs, databases).", soft_wrap=True)
    if not warehouse and completion_url.startswith("sqlite://"):
        console.print("See what each replay left behind:")
        for mode, doc in (("unguarded", "naive-completion.db"), ("guarded", "completion.db")):
            console.print(
                f"  {cli_command()} health --date {demo_data.DEMO_DATE} "
                f"--warehouse {shlex.quote(f'duckdb://{folder}/{mode}.duckdb')} "
                f"--completion {shlex.quote(f'sqlite://{folder}/{doc}')}",
                markup=False,
                soft_wrap=True,
            )
    return summary


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Working folder, kept afterwards (default: a temporary folder, removed).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary folder and say where it is.")
@click.option(
    "--store",
    help="Lease store URL (default: sqlite:///DIR/leases.db); redis://..., firestore://PROJECT.",
)
@click.option(
    "--warehouse",
    help="duckdb:///path/file.duckdb (default, one file per replay) or bigquery://PROJECT/DATASET.",
)
@click.option(
    "--on-busy",
    type=click.Choice(["wait", "refuse"]),
    default="wait",
    show_default=True,
    help="Second instance waits for the lease, or is refused (409) and redelivered.",
)
def demo_command(
    directory: str | None, keep: bool, store: str | None, warehouse: str | None, on_busy: str
) -> None:
    """Replay the 2026-02-03 incident without and with the guard.

    Needs DuckDB for its local warehouse: pip install 'processor-guard[duckdb]'.
    Exit 0 if the guarded run is clean, 1 if not (3 could not run, 4 usage error).
    """
    summary = run_demo(directory, store=store, warehouse=warehouse, on_busy=on_busy, keep=keep)
    if not summary["clean"]:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        sys.exit(_worker_main(sys.argv[2:]))
    demo_command()

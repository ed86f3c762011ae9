"""Test data for the completion, health and CLI tests: a DuckDB warehouse of one game date."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from processor_guard import CompletionState
from processor_guard.demo_data import (
    COLUMNS,
    DEMO_DATE,
    EXPECTED_PROCESSORS,
    create_table_sql,
    games_for,
    table_rows,
)

PROCESSED_AT = dt.datetime(2026, 2, 4, 15, 0, 6, tzinfo=dt.timezone.utc)


def rows_for(table: str, game_date: dt.date = DEMO_DATE) -> list[dict[str, Any]]:
    """The seeded rows of ``table`` for every game of the date."""
    return table_rows(table, games_for(game_date), game_date=game_date, processed_at=PROCESSED_AT)


def insert(conn: Any, table: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert rows (columns in COLUMNS order); returns how many."""
    names = [c for c, _ in COLUMNS[table]]
    data = [[r.get(c) for c in names] for r in rows]
    row_marks = "(" + ", ".join("?" for _ in names) + ")"
    # One multi-row INSERT per chunk: DuckDB's executemany runs row by row (slow).
    for start in range(0, len(data), 100):
        chunk = data[start : start + 100]
        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES " + ", ".join(
            row_marks for _ in chunk
        )
        conn.execute(sql, [v for row in chunk for v in row])
    return len(data)


def build_duckdb(
    path: Path,
    *,
    tables: Iterable[str] = EXPECTED_PROCESSORS,
    duplicates: dict[str, int] | None = None,
    game_date: dt.date = DEMO_DATE,
) -> dict[str, int]:
    """A DuckDB file with the date's rows for ``tables`` (all five tables exist).

    ``duplicates[table] = n`` inserts the first ``n`` rows a second time. Returns the
    row count per table.
    """
    counts: dict[str, int] = {}
    conn = duckdb.connect(str(path))
    try:
        for table in EXPECTED_PROCESSORS:
            conn.execute(create_table_sql(table))
        for table in tables:
            rows = rows_for(table, game_date)
            extra = rows[: (duplicates or {}).get(table, 0)]
            counts[table] = insert(conn, table, rows) + insert(conn, table, extra)
    finally:
        conn.close()
    return counts


class Recorder:
    """A publish callable that records every call; can fail the next ``fail_next`` calls."""

    def __init__(self, fail_next: int = 0) -> None:
        self.calls: list[tuple[str, CompletionState]] = []
        self.failures = 0
        self.fail_next = fail_next
        self._lock = threading.Lock()

    def __call__(self, game_date: str, state: CompletionState) -> str:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.failures += 1
                raise ConnectionError("pubsub unavailable (injected)")
            self.calls.append((game_date, state))
            return f"msg-{len(self.calls)}"


def _bq_literal(value: Any, kind: str) -> str:
    if value is None:
        return f"CAST(NULL AS {kind})"
    if kind == "BOOL":
        return "TRUE" if value else "FALSE"
    if kind in ("INT64", "FLOAT64"):
        return repr(value) if kind == "FLOAT64" else str(int(value))
    if kind == "NUMERIC":
        return f"NUMERIC '{value}'"
    if kind in ("DATE", "TIMESTAMP"):
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        return f"{kind} '{text}'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def bq_insert(client: Any, table: str, short_name: str, rows: Iterable[dict[str, Any]]) -> None:
    """INSERT rows with literal values (the emulator rejects streaming inserts and loads)."""
    columns = COLUMNS[short_name]
    values = ["(" + ", ".join(_bq_literal(r.get(c), t) for c, t in columns) + ")" for r in rows]
    names = ", ".join(c for c, _ in columns)
    client.query(f"INSERT INTO `{table}` ({names}) VALUES {', '.join(values)}").result()

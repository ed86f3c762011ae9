"""Rows carrying columns the table lacks: refused, added first, or left out with a report,
on DuckDB and the BigQuery emulator; never silently."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from fixtures.pgs_rows import DUCKDB_PGS
from processor_guard import InvalidRows, safe_merge
from processor_guard.writes.warehouse import as_warehouse

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")


def _rows() -> list[dict[str, Any]]:
    """Three columns the table does not have yet, as upstream's processors emit them."""
    return [
        {"game_date": DAY, "player_lookup": f"p{n}", "points": n,
         "shot_zones_source": "pbp" if n else None, "paint_rate": None if n == 1 else 0.5 + n,
         "quality_flags": ["estimated"] * n}
        for n in range(3)
    ]  # fmt: skip


def _columns(client: Any, table: str) -> dict[str, Any]:
    return {c.name: c for c in as_warehouse(client).schema(table, refresh=True)}


def test_refused_by_default_naming_row_and_column(pgs: tuple[Any, str]) -> None:
    client, table = pgs
    with pytest.raises(InvalidRows, match=r"row 0: column 'shot_zones_source' is not in .*'add'"):
        safe_merge(client, table, _rows(), keys=KEYS)
    assert "shot_zones_source" not in _columns(client, table)
    assert as_warehouse(client).count_rows(table) == 0


def test_added_as_nullable_columns_of_the_values_type(caplog: pytest.LogCaptureFixture) -> None:
    """DuckDB only: bqemulator 1.4.0 updates a table's schema but not its storage (nor
    runs ALTER TABLE), so a write into an added column cannot be shown there; the next
    test shows the BigQuery schema update itself."""
    import duckdb

    client, table = duckdb.connect(), "main.player_game_summary"
    client.execute(DUCKDB_PGS.format(name=table))
    with caplog.at_level(logging.WARNING, logger="processor_guard"):
        result = safe_merge(client, table, _rows(), keys=KEYS, new_columns="add")
    assert result.added_columns == ["paint_rate", "quality_flags", "shot_zones_source"]
    assert "added NULLABLE columns" in caplog.text
    columns = _columns(client, table)
    assert (columns["shot_zones_source"].type, columns["shot_zones_source"].required) == (
        "STRING", False
    )  # fmt: skip
    assert columns["paint_rate"].type == "FLOAT64"
    assert (columns["quality_flags"].type, columns["quality_flags"].repeated) == ("STRING", True)
    wh = as_warehouse(client)
    stored = wh.query(
        f"SELECT player_lookup, shot_zones_source, paint_rate, quality_flags "
        f"FROM {wh.quote_table(table)} ORDER BY player_lookup"
    )
    assert [tuple(r.values()) for r in stored] == [
        ("p0", None, 0.5, []), ("p1", "pbp", None, ["estimated"]),
        ("p2", "pbp", 2.5, ["estimated", "estimated"]),
    ]  # fmt: skip
    again = safe_merge(client, table, _rows(), keys=KEYS, new_columns="add")
    assert (again.added_columns, again.updated) == ([], 3)  # the table has them now


def test_dropped_with_a_report(pgs: tuple[Any, str], caplog: pytest.LogCaptureFixture) -> None:
    client, table = pgs
    with caplog.at_level(logging.WARNING, logger="processor_guard"):
        result = safe_merge(client, table, _rows(), keys=KEYS, new_columns="drop")
    assert result.dropped_columns == ["paint_rate", "quality_flags", "shot_zones_source"]
    assert result.inserted == 3
    assert "leaving out columns it lacks" in caplog.text
    assert "paint_rate" not in _columns(client, table)


def test_a_new_column_whose_type_cannot_be_inferred_is_refused(pgs: tuple[Any, str]) -> None:
    client, table = pgs
    rows = [{"game_date": DAY, "player_lookup": "p", "always_null": None, "mixed": 1}]
    rows.append({"game_date": DAY, "player_lookup": "q", "always_null": None, "mixed": "x"})
    with pytest.raises(InvalidRows, match=r"new column 'always_null'.*type is unknown"):
        safe_merge(client, table, rows, keys=KEYS, new_columns="add")
    with pytest.raises(InvalidRows, match=r"new column 'mixed'.*mix types"):
        safe_merge(client, table, [{**r, "always_null": 1} for r in rows], keys=KEYS,
                   new_columns="add")  # fmt: skip
    assert {"always_null", "mixed"}.isdisjoint(_columns(client, table))


@pytest.mark.bigquery
def test_bigquery_adds_nullable_columns_to_the_schema(bigquery_emulator: Any) -> None:
    from processor_guard.writes.warehouse import Column

    client = bigquery_emulator.client()
    table = bigquery_emulator.create_player_game_summary(client)
    wh = as_warehouse(client)
    wh.add_columns(table, [
        Column("shot_zones_source", "STRING"), Column("quality_flags", "STRING", repeated=True),
        Column("zone", "STRUCT", fields=(Column("paint", "INT64"), Column("tags", "STRING",
                                                                         repeated=True))),
        Column("points", "STRING"),  # already there: left as it is
    ])  # fmt: skip
    fields = {f.name: f for f in client.get_table(table).schema}
    assert (fields["shot_zones_source"].field_type, fields["shot_zones_source"].mode) == (
        "STRING", "NULLABLE"
    )  # fmt: skip
    assert fields["quality_flags"].mode == "REPEATED"
    zone = fields["zone"]
    assert (zone.field_type, [(f.name, f.mode) for f in zone.fields]) == (
        "RECORD", [("paint", "NULLABLE"), ("tags", "REPEATED")]
    )  # fmt: skip
    assert fields["points"].field_type in ("INT64", "INTEGER")
    assert list(fields).count("points") == 1


def test_an_added_timestamp_column_keeps_the_instant_whatever_the_session_zone() -> None:
    """BigQuery's TIMESTAMP is an instant: the column added on DuckDB is TIMESTAMPTZ (a
    plain TIMESTAMP is a wall-clock type), and a connection set to another time zone
    stores the instant sent."""
    import duckdb

    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute(DUCKDB_PGS.format(name="main.player_game_summary"))
    tipped = dt.datetime(2026, 2, 4, 0, 30, tzinfo=dt.timezone.utc)
    rows = [{"game_date": DAY, "player_lookup": "p1", "points": 3, "tipped_at": tipped}]
    safe_merge(conn, "main.player_game_summary", rows, keys=KEYS, new_columns="add")
    (kind,) = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE column_name = 'tipped_at'"
    ).fetchone()
    (epoch,) = conn.execute("SELECT epoch(tipped_at) FROM main.player_game_summary").fetchone()
    assert (kind, epoch) == ("TIMESTAMP WITH TIME ZONE", tipped.timestamp())

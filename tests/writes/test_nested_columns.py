"""ARRAY and STRUCT columns (nested too) on DuckDB and the BigQuery emulator, on every
path: DuckDB's list-of-structs parameter, BigQuery's inline script and its staging load.
NULL struct fields round-trip; BigQuery's ARRAY rules hold before anything is sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from processor_guard import ConfigError, InvalidRows, safe_merge
from processor_guard.writes.warehouse import as_warehouse

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")
UTC = dt.timezone.utc

DUCKDB_NESTED = """CREATE TABLE {name} (
    game_date DATE NOT NULL, player_lookup VARCHAR NOT NULL, points BIGINT,
    quality_issues VARCHAR[], data_sources VARCHAR[],
    detail STRUCT(a BIGINT, tags VARCHAR[], inner_s STRUCT(x DOUBLE, seen_at TIMESTAMP)),
    history STRUCT(n BIGINT, d DATE)[], processed_at TIMESTAMP
)"""


def _bigquery_nested(emulator: Any, client: Any) -> str:
    from google.cloud import bigquery

    field = bigquery.SchemaField
    name = f"{emulator.new_dataset(client)}.nested"
    table = bigquery.Table(
        name,
        schema=[
            field("game_date", "DATE", mode="REQUIRED"),
            field("player_lookup", "STRING", mode="REQUIRED"),
            field("points", "INT64"),
            field("quality_issues", "STRING", mode="REPEATED"),
            field("data_sources", "STRING", mode="REPEATED"),
            field("detail", "RECORD", fields=[
                field("a", "INT64"),
                field("tags", "STRING", mode="REPEATED"),
                field("inner_s", "RECORD",
                      fields=[field("x", "FLOAT64"), field("seen_at", "TIMESTAMP")]),
            ]),
            field("history", "RECORD", mode="REPEATED",
                  fields=[field("n", "INT64"), field("d", "DATE")]),
            field("processed_at", "TIMESTAMP"),
        ],
    )  # fmt: skip
    client.create_table(table)
    return name


@pytest.fixture(
    params=[
        "duckdb",
        pytest.param("bigquery-inline", marks=pytest.mark.bigquery),
        pytest.param("bigquery-staging", marks=pytest.mark.bigquery),
    ]
)
def nested(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """(client, table, extra safe_merge arguments) for a table with nested columns."""
    if request.param == "duckdb":
        import duckdb

        conn = duckdb.connect()
        conn.execute(DUCKDB_NESTED.format(name="main.nested"))
        yield conn, "main.nested", {}
        conn.close()
        return
    emulator = request.getfixturevalue("bigquery_emulator")
    client = emulator.client()
    extra = {"staging_threshold_bytes": 0} if request.param.endswith("staging") else {}
    yield client, _bigquery_nested(emulator, client), extra


def _rows() -> list[dict[str, Any]]:
    stamp = dt.datetime(2026, 2, 3, 23, tzinfo=UTC)
    return [
        {"game_date": DAY, "player_lookup": "full", "points": 10,
         "quality_issues": ["late_boxscore", "it's \"quoted\""], "data_sources": ["nbac", "bdl"],
         "detail": {"a": 1, "tags": ["x", "y"],
                    "inner_s": {"x": 1.5, "seen_at": dt.datetime(2026, 2, 3, 20, tzinfo=UTC)}},
         "history": [{"n": 1, "d": DAY}, {"n": 2, "d": None}], "processed_at": stamp},
        # NULL struct fields, a NULL inner struct, NULL arrays (stored as empty ones)
        {"game_date": DAY, "player_lookup": "null_fields", "points": None,
         "quality_issues": None, "data_sources": [],
         "detail": {"a": None, "tags": None, "inner_s": None},
         "history": [{"n": None, "d": None}], "processed_at": stamp},
        # A NULL struct, and a struct whose inner struct holds only NULLs
        {"game_date": DAY, "player_lookup": "null_struct", "points": 3,
         "quality_issues": [], "data_sources": ["nbac"],
         "detail": None, "history": [], "processed_at": stamp},
        {"game_date": DAY, "player_lookup": "inner_nulls", "points": 4,
         "quality_issues": ["delete me"], "data_sources": ["nbac"],
         "detail": {"a": 7, "tags": [], "inner_s": {"x": None, "seen_at": None}},
         "history": [], "processed_at": stamp},
    ]  # fmt: skip


def _utc(value: Any) -> Any:
    """Stored values in one form: naive timestamps (DuckDB) read as UTC."""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, list):
        return [_utc(v) for v in value]
    if isinstance(value, dict):
        return {k: _utc(v) for k, v in value.items()}
    return value


def _stored(client: Any, table: str) -> dict[str, dict[str, Any]]:
    wh = as_warehouse(client)
    rows = wh.query(f"SELECT * FROM {wh.quote_table(table)}")
    return {r["player_lookup"]: {k: _utc(v) for k, v in r.items()} for r in rows}


EXPECTED_NULLS = {
    "null_fields": {
        "quality_issues": [], "data_sources": [],
        "detail": {"a": None, "tags": [], "inner_s": None},
        "history": [{"n": None, "d": None}],
    },
    "null_struct": {"quality_issues": [], "detail": None, "history": []},
    "inner_nulls": {
        "quality_issues": ["delete me"],
        "detail": {"a": 7, "tags": [], "inner_s": {"x": None, "seen_at": None}},
    },
}  # fmt: skip


def test_arrays_and_structs_round_trip_with_null_fields(
    nested: tuple[Any, str, dict[str, Any]],
) -> None:
    client, table, extra = nested
    result = safe_merge(client, table, _rows(), keys=KEYS, **extra)
    assert (result.inserted, result.updated) == (4, 0)
    if extra:
        assert result.path == "staging"
    stored = _stored(client, table)
    full = stored["full"]
    assert full["quality_issues"] == ["late_boxscore", 'it\'s "quoted"']
    assert full["data_sources"] == ["nbac", "bdl"]
    assert full["detail"] == {
        "a": 1, "tags": ["x", "y"],
        "inner_s": {"x": 1.5, "seen_at": dt.datetime(2026, 2, 3, 20, tzinfo=UTC)},
    }  # fmt: skip
    assert full["history"] == [{"n": 1, "d": DAY}, {"n": 2, "d": None}]
    for key, expected in EXPECTED_NULLS.items():
        for column, value in expected.items():
            assert stored[key][column] == value, (key, column)


def test_update_sets_array_and_struct_columns(nested: tuple[Any, str, dict[str, Any]]) -> None:
    client, table, extra = nested
    safe_merge(client, table, _rows(), keys=KEYS, **extra)
    later = dt.datetime(2026, 2, 4, 1, tzinfo=UTC)
    update = [
        {"game_date": DAY, "player_lookup": "full", "quality_issues": [],
         "detail": {"a": 2, "tags": ["z"], "inner_s": None},
         "history": [{"n": 3, "d": DAY}], "processed_at": later},
        {"game_date": DAY, "player_lookup": "null_struct", "quality_issues": ["x"],
         "detail": {"a": None, "tags": ["t"], "inner_s": {"x": 2.0, "seen_at": None}},
         "history": None, "processed_at": later},
    ]  # fmt: skip
    result = safe_merge(client, table, update, keys=KEYS, **extra)
    assert (result.inserted, result.updated) == (0, 2)
    stored = _stored(client, table)
    assert stored["full"]["quality_issues"] == []
    assert stored["full"]["data_sources"] == ["nbac", "bdl"]  # not carried: left alone
    assert stored["full"]["detail"] == {"a": 2, "tags": ["z"], "inner_s": None}
    assert stored["full"]["history"] == [{"n": 3, "d": DAY}]
    assert stored["null_struct"]["detail"] == {
        "a": None, "tags": ["t"], "inner_s": {"x": 2.0, "seen_at": None}
    }  # fmt: skip
    assert stored["null_struct"]["history"] == []
    assert len(stored) == 4


def test_dedup_keeps_the_newest_row_of_rows_with_arrays(
    nested: tuple[Any, str, dict[str, Any]],
) -> None:
    client, table, extra = nested
    rows = _rows()
    resent = {**rows[0], "quality_issues": ["resent"],
              "processed_at": dt.datetime(2026, 2, 4, tzinfo=UTC)}  # fmt: skip
    result = safe_merge(client, table, [resent, *rows], keys=KEYS, **extra)
    assert (result.inserted, result.dedup.dropped_rows, result.dedup.conflicting_keys) == (4, 1, 1)
    assert _stored(client, table)["full"]["quality_issues"] == ["resent"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quality_issues": ["ok", None]}, r"row 1, column 'quality_issues'.*element 1 is NULL"),
        ({"quality_issues": "late"}, r"row 1, column 'quality_issues'.*expected a list"),
        ({"detail": {"a": 1, "nope": 2}}, r"row 1, column 'detail'.*no field 'nope'"),
        ({"detail": {"a": "x"}}, r"row 1, column 'detail'.*field 'a'"),
        ({"history": [{"n": 1}, None]}, r"row 1, column 'history'.*element 1 is NULL"),
        ({"detail": {"tags": [None]}}, r"row 1, column 'detail'.*field 'tags'.*NULL"),
    ],
)
def test_invalid_nested_values_are_refused_naming_row_and_column(
    nested: tuple[Any, str, dict[str, Any]], change: dict[str, Any], message: str
) -> None:
    client, table, extra = nested
    rows = _rows()
    rows[1] = {**rows[1], **change}
    with pytest.raises(InvalidRows, match=message):
        safe_merge(client, table, rows, keys=KEYS, **extra)
    assert as_warehouse(client).count_rows(table) == 0


def test_an_array_column_cannot_be_a_key(nested: tuple[Any, str, dict[str, Any]]) -> None:
    client, table, extra = nested
    with pytest.raises(ConfigError, match="'quality_issues' is an ARRAY or STRUCT"):
        safe_merge(client, table, _rows(), keys=("game_date", "quality_issues"), **extra)

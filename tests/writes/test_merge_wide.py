"""The real table's shape on the emulator: staging for big batches, update-only passes,
NUMERIC scales, JSON the same on every path."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from fixtures.pgs_wide import create_wide_table, wide_rows
from processor_guard import InvalidRows, safe_merge
from processor_guard.writes.warehouse import as_warehouse

pytestmark = pytest.mark.bigquery
DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")


@pytest.fixture
def wide(bigquery_emulator: Any) -> tuple[Any, str]:
    client = bigquery_emulator.client()
    return client, create_wide_table(client, bigquery_emulator.new_dataset(client))


def _stored(client: Any, table: str, columns: str) -> list[dict[str, Any]]:
    wh = as_warehouse(client)
    return wh.query(f"SELECT {columns} FROM {wh.quote_table(table)} ORDER BY player_lookup")


@pytest.mark.slow
def test_3000_rows_of_79_columns_go_through_staging(wide: tuple[Any, str]) -> None:
    client, table = wide
    result = safe_merge(client, table, wide_rows(DAY, 3000), keys=KEYS, fence=2)
    assert (result.path, result.inserted, result.jobs) == ("staging", 3000, 2)
    assert as_warehouse(client).count_rows(table) == 3000


def test_update_only_pass_needs_no_required_columns_and_reports_new_keys(
    wide: tuple[Any, str],
) -> None:
    client, table = wide
    safe_merge(client, table, wide_rows(DAY, 10), keys=KEYS)
    second_pass = [
        {"game_date": DAY.isoformat(), "player_lookup": f"player{n:05d}", "stat_01": 1000 + n,
         "processed_at": "2026-02-05T01:00:00+00:00"}
        for n in (3, 4, 99)
    ]  # fmt: skip
    result = safe_merge(client, table, second_pass, keys=KEYS, update_only=True)
    assert (result.inserted, result.updated) == (0, 2)
    assert result.missing_keys == [{"game_date": DAY, "player_lookup": "player00099"}]
    stored = _stored(client, table, "player_lookup, stat_01, game_id")
    assert len(stored) == 10
    assert {r["player_lookup"]: r["stat_01"] for r in stored}["player00003"] == 1003
    assert all(r["game_id"] == "20260203_BKN_MIL" for r in stored)
    with pytest.raises(InvalidRows, match="REQUIRED column 'game_id'"):
        safe_merge(client, table, second_pass, keys=KEYS)  # an insert would lack game_id


def test_numeric_at_the_columns_scale_and_an_error_naming_row_and_column(
    wide: tuple[Any, str],
) -> None:
    client, table = wide
    rows = wide_rows(DAY, 2)
    rows[0]["usage_rate"] = 0.1 + 0.2  # 0.30000000000000004: a float's 17 digits
    rows[1]["usage_rate"] = Decimal("0.1235")  # rounded half away from zero to 3 digits
    safe_merge(client, table, rows, keys=KEYS)
    stored = _stored(client, table, "usage_rate")
    assert [r["usage_rate"] for r in stored] == [Decimal("0.300"), Decimal("0.124")]


def test_a_numeric_that_does_not_fit_names_row_and_column() -> None:
    """On DuckDB: the emulator's table metadata carries no NUMERIC precision."""
    import duckdb

    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE t (game_date DATE NOT NULL, player_lookup VARCHAR NOT NULL, "
        "minutes_played DECIMAL(5, 1))"
    )
    rows = [
        {"game_date": DAY, "player_lookup": f"p{n}", "minutes_played": "31.5"} for n in range(3)
    ]
    rows[2]["minutes_played"] = Decimal("12345.5")  # 4 digits fit before the point
    with pytest.raises(InvalidRows, match=r"does not fit NUMERIC\(5, 1\)") as info:
        safe_merge(conn, "t", rows, keys=KEYS, order_by=None)
    assert (info.value.row_index, info.value.column) == (2, "minutes_played")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_json_is_stored_the_same_inline_and_staged(wide: tuple[Any, str]) -> None:
    client, table = wide
    safe_merge(client, table, wide_rows(DAY, 2), keys=KEYS)
    later = dt.date(2026, 2, 4)
    safe_merge(client, table, wide_rows(later, 2), keys=KEYS, staging_threshold_bytes=1)
    stored = _stored(client, table, "game_date, TO_JSON_STRING(source_meta) AS meta")
    metas = {(r["game_date"], json.dumps(json.loads(r["meta"]), sort_keys=True)) for r in stored}
    assert {m for _, m in metas} == {json.dumps({"pass": 1, "source": "gamebook"})}

"""The SQL safe_merge sends: literal rendering, statement shapes, and never DELETE."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.pgs_rows import DUCKDB_PGS, game_rows
from processor_guard import safe_merge
from processor_guard.writes.warehouse import (
    BigQueryWarehouse,
    Column,
    MergePlan,
    as_warehouse,
    render_string_literal,
)

DAY = dt.date(2026, 2, 3)
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
).filter(lambda s: all((ord(c) >= 0x20 and ord(c) != 0x7F) or c in "\n\r\t" for c in s))


@given(text=_text | st.sampled_from(["delete", "DeLeTe", "x'delete\\", "\\'", "ddelete"]))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_string_literal_round_trips_on_the_emulator(bigquery_emulator: Any, text: str) -> None:
    literal = render_string_literal(text)
    assert "delete" not in literal.lower()
    wh = as_warehouse(bigquery_emulator.client())
    assert wh.query(f"SELECT {literal} AS s")[0]["s"] == text


@pytest.mark.parametrize("bad", ["\x00", "a\x01b", "\x7f", "\ud800"])
def test_string_literal_refuses_control_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        render_string_literal(bad)


class _NoClient:
    project = "p"


def _plan(fence: int | None) -> MergePlan:
    columns = (
        Column("game_date", "DATE", True),
        Column("player_lookup", "STRING", True),
        Column("points", "INT64"),
        Column("processed_at", "TIMESTAMP"),
    )
    rows = [
        {
            "game_date": DAY,
            "player_lookup": "x'delete",
            "points": 1,
            "processed_at": dt.datetime(2026, 2, 3, tzinfo=dt.timezone.utc),
        }
    ]
    return MergePlan(
        "p.ds.player_game_summary", ("game_date", "player_lookup"), "game_date", columns, rows,
        (DAY,), fence=fence, order_by="processed_at",
    )  # fmt: skip


def test_fenced_script_shape() -> None:
    wh = BigQueryWarehouse(_NoClient())
    plan = _plan(7)
    script = wh.script(plan, "SELECT 1")
    claim = script.index("MERGE INTO `p`.`ds`.`player_game_summary__pg_guard`")
    begin = script.index("BEGIN TRANSACTION;")
    assert claim < begin < script.index("COMMIT TRANSACTION;")  # the claim is outside
    assert "ERROR(" in script and "fence > 7" in script
    guard_update = "UPDATE `p`.`ds`.`player_game_summary__pg_guard` SET writes = writes + 1"
    target_merge = script.index("MERGE INTO `p`.`ds`.`player_game_summary` AS T")
    assert begin < script.index(guard_update) < target_merge
    assert not re.search(r"\b(ASSERT|RAISE|DELETE|TRUNCATE)\b", script, re.IGNORECASE)
    assert "T.game_date IN (DATE '2026-02-03')" in script
    assert "UPDATE SET points = S.points, processed_at = S.processed_at" in script
    assert "S.processed_at >= T.processed_at" in script


def test_unfenced_script_still_updates_the_guard_row() -> None:
    script = BigQueryWarehouse(_NoClient()).script(_plan(None), "SELECT 1")
    assert "UPDATE `p`.`ds`.`player_game_summary__pg_guard` SET writes" in script
    assert "ERROR(" not in script and "fence" not in script.split("BEGIN TRANSACTION;")[0]


def test_update_only_script_has_no_insert() -> None:
    plan = _plan(None)
    plan.update_only = True
    script = BigQueryWarehouse(_NoClient()).script(plan, "SELECT 1")
    merge = script[script.index("MERGE INTO `p`.`ds`.`player_game_summary` AS T") :]
    assert "WHEN NOT MATCHED" not in merge.split(";")[0]
    assert "SET pg_missing = ARRAY(SELECT AS STRUCT S.game_date" in script


def test_no_statement_sent_contains_delete(sent_sql: list[str]) -> None:
    """Runs last (the plugin reorders it): checks every statement of the session."""
    import duckdb

    conn = duckdb.connect()
    conn.execute(DUCKDB_PGS.format(name="player_game_summary"))
    rows = [dict(r, player_full_name="Delete Me") for r in game_rows(DAY, 0)]
    safe_merge(conn, "player_game_summary", rows, keys=("game_date", "player_lookup"), fence=1)
    assert sent_sql
    offenders = [s for s in sent_sql if re.search(r"DELETE|TRUNCATE", s, re.IGNORECASE)]
    assert offenders == []

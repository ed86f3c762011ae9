"""Fixtures shared by the write-path tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.pgs_rows import DUCKDB_PGS


@pytest.fixture(params=["duckdb", pytest.param("bigquery", marks=pytest.mark.bigquery)])
def pgs(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """(client, table): an empty player_game_summary on DuckDB and on the emulator."""
    if request.param == "bigquery":
        emulator = request.getfixturevalue("bigquery_emulator")
        client = emulator.client()
        yield client, emulator.create_player_game_summary(client)
        return
    import duckdb

    conn = duckdb.connect()
    conn.execute(DUCKDB_PGS.format(name="main.player_game_summary"))
    yield conn, "main.player_game_summary"
    conn.close()

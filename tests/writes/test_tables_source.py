"""Issue 14, item 4: each table's key is checked against upstream's save code."""

from __future__ import annotations

from processor_guard.tables import TABLES


def test_every_table_names_its_upstream_key_source() -> None:
    for spec in TABLES.values():
        assert spec.source.startswith("najicham/nba-stats-scraper data_processors/analytics/")
        assert "PRIMARY_KEY_FIELDS" in spec.source and spec.name in spec.source
        for key in spec.keys[1:]:
            assert key in spec.source  # the non-date key column is upstream's

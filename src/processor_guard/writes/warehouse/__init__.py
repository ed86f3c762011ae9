"""Warehouse adapters: one small interface that BigQuery and DuckDB both implement.

``as_warehouse(obj)`` picks the adapter: a ``google.cloud.bigquery.Client``, or
anything with its methods (a wrapper, a mock), gives :class:`BigQueryWarehouse`; a
``duckdb`` connection, a database path (``str`` or ``Path``) or ``"duckdb:///path"``
gives :class:`DuckDBWarehouse`; a :class:`Warehouse` is returned as is.

Queries take named parameters written ``@name`` on both engines. Nothing here ever
sends a ``DELETE``: writes are MERGEs, staging tables are dropped, not emptied.
Every save runs the statements of ``sql.write_steps`` (see there for why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .base import GUARD_SUFFIX, Warehouse, add_statement_observer
from .bigquery import BigQueryWarehouse
from .duckdb import DuckDBWarehouse
from .plan import Column, MergeOutcome, MergePlan
from .sql import render_string_literal

__all__ = [
    "BIGQUERY_CLIENT_METHODS",
    "GUARD_SUFFIX",
    "BigQueryWarehouse",
    "Column",
    "DuckDBWarehouse",
    "MergeOutcome",
    "MergePlan",
    "Warehouse",
    "add_statement_observer",
    "as_warehouse",
    "render_string_literal",
]


#: The BigQuery client methods the adapter calls: an object with all of them is taken
#: for a client (a wrapped, instrumented or mocked one).
BIGQUERY_CLIENT_METHODS = (
    "query",
    "get_table",
    "update_table",
    "create_table",
    "delete_table",
    "load_table_from_file",
    "cancel_job",
)


def as_warehouse(obj: Any, **options: Any) -> Warehouse:
    """The adapter for a BigQuery client (or anything with its methods), a DuckDB
    connection or path, or a Warehouse."""
    if isinstance(obj, Warehouse):
        return obj
    if isinstance(obj, (str, Path)):
        return DuckDBWarehouse(obj, **options)
    module = type(obj).__module__
    if module.startswith(("duckdb", "_duckdb")):
        return DuckDBWarehouse(obj, **options)
    if module.startswith("google.cloud.bigquery") or all(
        callable(getattr(obj, name, None)) for name in BIGQUERY_CLIENT_METHODS
    ):
        return BigQueryWarehouse(obj, **options)
    raise ConfigError(
        f"cannot write to a {type(obj).__name__}: pass a google.cloud.bigquery.Client "
        f"(or an object with its methods: {', '.join(BIGQUERY_CLIENT_METHODS)}), "
        "a duckdb connection, a DuckDB file path or a Warehouse"
    )

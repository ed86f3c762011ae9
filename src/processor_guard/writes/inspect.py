"""Reading a warehouse table back: row counts and duplicate keys per game date.

``open_warehouse`` turns a URL into a :class:`WarehouseSource`; ``count_rows`` and
``find_duplicates`` are what health checks and reconciliation ask of the data.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._extras import needs_extra
from ..dates import parse_game_date
from ..errors import ConfigError
from ..tables import TableSpec, resolve_table
from .warehouse import Warehouse

__all__ = [
    "BIGQUERY_ENDPOINT_ENV",
    "DuplicateKey",
    "WarehouseSource",
    "as_source",
    "count_rows",
    "find_duplicates",
    "jsonable",
    "open_warehouse",
]

BIGQUERY_ENDPOINT_ENV = "BIGQUERY_EMULATOR_HOST"


@dataclass(frozen=True)
class DuplicateKey:
    """One key held by more than one row: the key's column values and the row count."""

    key: dict[str, Any]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": {k: jsonable(v) for k, v in self.key.items()}, "count": self.count}


@dataclass(frozen=True)
class WarehouseSource:
    """A warehouse adapter plus the dataset (BigQuery) its tables live in."""

    warehouse: Warehouse
    dataset: str | None = None

    def table(self, spec: TableSpec) -> str:
        """The table name to query for ``spec``."""
        return f"{self.dataset}.{spec.name}" if self.dataset else spec.name

    def close(self) -> None:
        self.warehouse.close()


def as_source(obj: Any, *, dataset: str | None = None) -> WarehouseSource:
    """A WarehouseSource from one, a Warehouse, a BigQuery client, a DuckDB connection or path."""
    if isinstance(obj, WarehouseSource):
        return obj if dataset is None else WarehouseSource(obj.warehouse, dataset)
    from .warehouse import as_warehouse

    return WarehouseSource(as_warehouse(obj), dataset)


def open_warehouse(url: str) -> WarehouseSource:
    """Open ``duckdb:///path/to/file.db`` or ``bigquery://PROJECT/DATASET``.

    For BigQuery, ``?endpoint=http://127.0.0.1:9050`` (or $BIGQUERY_EMULATOR_HOST, as the
    demo uses) points the client at an emulator with anonymous credentials.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"bad warehouse URL {url!r}: use duckdb:///path/to/file.db or bigquery://PROJECT/DATASET"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "duckdb":
        path = parts.path
        if parts.netloc:
            path = f"{parts.netloc}{path}"
        if not path or path == "/":
            raise ConfigError(f"bad warehouse URL {url!r}: duckdb needs a file path")
        if Path(path).is_dir():
            raise ConfigError(f"warehouse {url!r}: {path!r} is a directory, not a DuckDB file")
        if not Path(path).is_file():
            raise ConfigError(f"warehouse {url!r}: DuckDB file {path!r} does not exist")
        with needs_extra("duckdb", "the duckdb:// warehouse"):
            import duckdb  # noqa: F401 - the adapter imports it on first use; fail here
        from .warehouse import DuckDBWarehouse

        return WarehouseSource(DuckDBWarehouse(path))
    if scheme == "bigquery":
        project, dataset = parts.netloc, parts.path.strip("/")
        if not project or not dataset or "/" in dataset:
            raise ConfigError(f"bad warehouse URL {url!r}: use bigquery://PROJECT/DATASET")
        query_endpoint = parse_qs(parts.query).get("endpoint") or [""]
        endpoint = query_endpoint[0] or os.environ.get(BIGQUERY_ENDPOINT_ENV)
        with needs_extra("bigquery", "the bigquery:// warehouse"):
            from google.cloud import bigquery

        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                endpoint = f"http://{endpoint}"
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials

            client = bigquery.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options=ClientOptions(api_endpoint=endpoint),
            )
        else:
            client = bigquery.Client(project=project)
        from .warehouse import BigQueryWarehouse

        return WarehouseSource(BigQueryWarehouse(client), dataset)
    raise ConfigError(
        f"bad warehouse URL {url!r}: unknown scheme {parts.scheme!r} (duckdb://, bigquery://)"
    )


def count_rows(
    client: Any, table_spec: TableSpec | str, game_date: object, *, dataset: str | None = None
) -> int:
    """Rows of the table for one game date; 0 when the table does not exist."""
    spec = resolve_table(table_spec)
    day = parse_game_date(game_date)
    src = as_source(client, dataset=dataset)
    table = src.table(spec)
    if not src.warehouse.table_exists(table):
        return 0
    return src.warehouse.count_rows(table, spec.partition_field, day)


def find_duplicates(
    client: Any,
    table_spec: TableSpec | str,
    game_date: object,
    *,
    dataset: str | None = None,
    limit: int = 10_000,
) -> list[DuplicateKey]:
    """Keys of ``table_spec`` held by more than one row on ``game_date``, worst first.

    ``client``: a BigQuery client (pass ``dataset``), a DuckDB connection or file path,
    a :class:`~processor_guard.warehouse.Warehouse` or a :class:`WarehouseSource`.
    A missing table has no duplicates.
    """
    spec = resolve_table(table_spec)
    day = parse_game_date(game_date)
    src = as_source(client, dataset=dataset)
    table = src.table(spec)
    if not src.warehouse.table_exists(table):
        return []
    rows = src.warehouse.duplicate_keys(table, spec.keys, spec.partition_field, day, limit=limit)
    return [DuplicateKey({k: row[k] for k in spec.keys}, int(row["row_count"])) for row in rows]


def jsonable(value: Any) -> Any:
    """``value`` with dates as ISO strings and unknown objects as text, for JSON output."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)

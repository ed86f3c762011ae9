"""The plan of one MERGE (what ``safe_merge`` validated) and what the MERGE did."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Column", "MergeOutcome", "MergePlan"]


@dataclass(frozen=True)
class Column:
    """A table column (or a STRUCT's field): name, BigQuery type name (normalised;
    ``STRUCT`` for a RECORD) and whether it is REQUIRED.

    ``repeated``: an ARRAY of that type. ``fields``: a STRUCT's fields, in order.
    """

    name: str
    type: str
    required: bool = False
    native_type: str = ""
    #: NUMERIC/BIGNUMERIC: digits in all and after the point (BigQuery's defaults
    #: when the column declares none: NUMERIC(38, 9), BIGNUMERIC(76, 38)).
    precision: int | None = None
    scale: int | None = None
    repeated: bool = False
    fields: tuple[Column, ...] = ()

    @property
    def is_scalar(self) -> bool:
        """Neither an ARRAY nor a STRUCT: a value that can be compared, so a key."""
        return not self.repeated and self.type != "STRUCT"


@dataclass
class MergePlan:
    """One validated, deduplicated batch ready to MERGE (built by ``safe_merge``)."""

    table: str
    keys: tuple[str, ...]
    partition_field: str | None
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    partition_values: tuple[Any, ...]
    fence: int | None = None
    order_by: str | None = None
    staging_threshold_bytes: int = 4_000_000
    staging_ttl: dt.timedelta = dt.timedelta(hours=1)
    #: Update stored keys only: new keys are reported in ``missing_keys``, not inserted.
    update_only: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def update_columns(self) -> tuple[str, ...]:
        """Columns the batch carries that are not keys: the only ones UPDATE touches."""
        return tuple(c.name for c in self.columns if c.name not in self.keys)


@dataclass
class MergeOutcome:
    """What one MERGE attempt did."""

    inserted: int
    updated: int
    skipped: int = 0
    jobs: int = 0
    bytes_sent: int = 0
    path: str = ""
    statements: list[str] = field(default_factory=list)
    #: update-only saves: keys of the batch with no stored row (nothing written for them).
    missing_keys: list[dict[str, Any]] = field(default_factory=list)

"""Pre-write dedup: one row per key, the newest (or oldest) by ``order_by``.

Rules:

- Key values compare after normalising: a ``date`` equals its ``"YYYY-MM-DD"``
  string; timestamps (``datetime`` or ISO strings such as ``2026-02-03T10:00:00Z``)
  compare as instants, a naive value being read as UTC.
- ``keep="last"`` keeps the row with the greatest ``order_by`` value, ``"first"`` the
  least. A missing or None ``order_by`` sorts below every value. ``order_by`` values
  compare like key values (timestamps as instants).
- Ties on ``order_by`` are broken by the row's canonical serialisation (JSON of all
  columns, sorted by name, values normalised as above): ``"last"`` keeps the row whose
  serialisation sorts greatest, ``"first"`` the least. So the kept rows never depend
  on the order of the input.
- Output rows keep the input order of each key's first appearance.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from typing import Any

from ._values import parse_instant
from .errors import ConfigError, InvalidRows
from .tables import TABLES, TableSpec

__all__ = ["TABLES", "DedupReport", "TableSpec", "dedupe_rows"]

log = logging.getLogger(__name__)

_TS_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_TS_LIKE_ANY = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", re.MULTILINE)


@dataclass
class DedupReport:
    """What ``dedupe_rows`` did; ``conflicting_keys`` counts duplicates that disagree."""

    input_rows: int
    output_rows: int
    dropped_rows: int
    duplicate_keys: int
    conflicting_keys: int
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str) or not keys:
        raise ConfigError(f"keys must be a non-empty sequence of column names: {keys!r}")
    out = tuple(keys)
    if not all(isinstance(k, str) and k for k in out):
        raise ConfigError(f"keys must be non-empty column names: {keys!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"keys repeat a column: {keys!r}")
    return out


def _norm_value(value: object) -> Hashable:
    """Key normal form: dates as ISO text, timestamps as UTC instants in ISO text."""
    if isinstance(value, dt.datetime):
        return parse_instant(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and _TS_LIKE.match(value):
        try:
            return parse_instant(value).isoformat()
        except ValueError:
            return value
    return value


def _order_value(value: object) -> tuple[Any, ...]:
    """A totally ordered form of an ``order_by`` value (None lowest, instants compared)."""
    if value is None:
        return (0,)
    if isinstance(value, dt.datetime):
        return (1, 0, parse_instant(value))
    if isinstance(value, dt.date):
        return (1, 0, dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc))
    if isinstance(value, str):
        try:
            if _TS_LIKE.match(value) or len(value) == 10:
                return (1, 0, parse_instant(value))
        except ValueError:
            pass
        return (1, 2, value)
    if isinstance(value, bool):
        return (1, 1, int(value))
    if isinstance(value, (int, float, Decimal)):
        return (1, 1, value)
    return (1, 3, repr(value))


_order_cached = functools.lru_cache(maxsize=65536)(_order_value)


def _canon(value: object) -> object:
    if isinstance(value, (dt.date, str)):
        return _norm_value(value)
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


def _content(row: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> str:
    """Canonical serialisation of a row (the tie-break and the conflict comparison)."""
    return json.dumps(
        {k: _canon(v) for k, v in row.items() if k not in skip},
        sort_keys=True,
        default=repr,
        separators=(",", ":"),
    )


def _locate_bad_row(rows: Sequence[Any], keys: tuple[str, ...]) -> InvalidRows:
    """The InvalidRows for the first row whose key is missing, None, empty or unhashable."""
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return InvalidRows(f"row {i} is a {type(row).__name__}, not a mapping", row_index=i)
        for k in keys:
            if k not in row:
                return InvalidRows(f"row {i} has no key column {k!r}", row_index=i, column=k)
            value = row[k]
            if value is None or value == "":
                return InvalidRows(
                    f"row {i} has an empty key value in column {k!r}: {value!r}",
                    row_index=i,
                    column=k,
                )
            try:
                hash(value)
            except TypeError:
                return InvalidRows(
                    f"row {i} has an unhashable key value in column {k!r}: {value!r}",
                    row_index=i,
                    column=k,
                )
    return InvalidRows("a row has an invalid key")  # pragma: no cover - caller saw one


def dedupe_rows(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    order_by: str | None = "processed_at",
    keep: str = "last",
    *,
    copy: bool = True,
) -> tuple[list[dict[str, Any]], DedupReport]:
    """One row per key (newest by ``order_by`` for ``keep="last"``) and a report.

    Returns new dicts (``copy=False`` returns the kept input mappings themselves, for
    callers that will not modify them); never mutates the input. Raises InvalidRows
    naming the row and column when a key column is missing, None or empty.
    """
    keys = _check_keys(keys)
    if keep not in ("last", "first"):
        raise ConfigError(f"keep must be 'last' or 'first': {keep!r}")
    data: Sequence[Any] = rows if isinstance(rows, (list, tuple)) else list(rows)
    getter = itemgetter(*keys)

    # Hot loop: group on the raw key tuple; only duplicates take a slower path.
    best: dict[Any, Any] = {}
    dups: list[Any] = []
    first_seen = best.setdefault
    add_dup = dups.append
    try:
        for row in data:
            if first_seen(getter(row), row) is not row:
                add_dup(row)
    except (KeyError, TypeError, IndexError) as exc:
        raise _locate_bad_row(data, keys) from exc

    single = len(keys) == 1
    # Distinct values per key column (C-level passes; zip(*keys) is far slower).
    columns = [set(best)] if single else [set(map(itemgetter(j), best)) for j in range(len(keys))]
    rekey = False
    for distinct in columns:
        if None in distinct or "" in distinct:
            raise _locate_bad_row(data, keys)
        if len(distinct) > 1 and _needs_normalising(distinct):
            normal = {_norm_value(v) for v in distinct}
            if len(normal) != len(distinct):
                rekey = True

    if rekey:
        # Some raw keys collide once normalised (e.g. a date and its ISO string).
        key_of = _normalised_getter(keys)
        best = {}
        dups = []
        for row in data:
            if best.setdefault(key_of(row), row) is not row:
                dups.append(row)
    else:
        key_of = getter

    duplicate_keys = 0
    conflicting = 0
    examples: list[dict[str, Any]] = []
    if dups:
        groups: dict[Any, list[Any]] = {}
        for row in dups:
            k = key_of(row)
            group = groups.get(k)
            if group is None:
                groups[k] = [best[k], row]
            else:
                group.append(row)
        skip = (*keys, order_by) if order_by else keys
        pick = max if keep == "last" else min
        last = keep == "last"
        ob = order_by
        duplicate_keys = len(groups)
        for k, group in groups.items():
            if ob is not None and len(group) == 2:
                # The common case, kept tight: one re-delivery of a row.
                first, second = group
                a, b = _order_key(first.get(ob)), _order_key(second.get(ob))
                if a == b:
                    best[k] = _choose(group, ob, pick)
                else:
                    best[k] = first if (a > b) == last else second
                same = second == first or (
                    ob in first and ob in second and {**second, ob: first[ob]} == first
                )
            else:
                best[k] = _choose(group, ob, pick)
                same = False
            if not same and _values_differ(group, skip):
                conflicting += 1
                if len(examples) < 3:
                    key = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
                    diff = _differing_columns(group, skip)
                    examples.append({"key": key, "rows": len(group), "differs": diff})

    out = [dict(r) for r in best.values()] if copy else list(best.values())
    report = DedupReport(
        input_rows=len(data),
        output_rows=len(out),
        dropped_rows=len(data) - len(out),
        duplicate_keys=duplicate_keys,
        conflicting_keys=conflicting,
        conflict_examples=examples,
    )
    if conflicting:
        log.warning(
            "dedup on %s: %d key(s) had duplicates with different values "
            "(an upstream problem); examples: %s",
            ",".join(keys),
            conflicting,
            examples,
        )
    return out, report


def _choose(group: list[Any], order_by: str | None, pick: Any) -> Any:
    """The kept row of a key's group: extreme ``order_by``, ties by canonical content."""
    if order_by is not None and len(group) == 2:
        first, second = group
        a, b = _order_key(first.get(order_by)), _order_key(second.get(order_by))
        if a != b:
            return first if pick(a, b) is a else second
    if order_by is not None:
        ranked = [(_order_key(r.get(order_by)), r) for r in group]
        top = pick(o for o, _ in ranked)
        tied = [r for o, r in ranked if o == top]
    else:
        tied = group
    return tied[0] if len(tied) == 1 else pick(tied, key=_content)


def _values_differ(group: list[Any], skip: tuple[str, ...]) -> bool:
    """Whether rows of a group differ outside the key and ``order_by`` columns."""
    first = group[0]
    for other in group[1:]:
        aligned = dict(other)
        for col in skip:
            if col in first:
                aligned[col] = first[col]
            else:
                aligned.pop(col, None)
        if aligned != first:
            for col in first.keys() | other.keys():
                a, b = first.get(col), other.get(col)
                if col not in skip and a != b and _canon(a) != _canon(b):
                    return True
    return False


def _differing_columns(group: list[Any], skip: tuple[str, ...]) -> dict[str, list[Any]]:
    """Non-key columns (``order_by`` aside) whose normalised values differ in a group."""
    columns = sorted({c for r in group for c in r} - set(skip))
    out: dict[str, list[Any]] = {}
    for col in columns:
        values = {json.dumps(_canon(r.get(col)), default=repr) for r in group}
        if len(values) > 1:
            out[col] = [r.get(col) for r in group][:4]
    return out


def _order_key(value: object) -> tuple[Any, ...]:
    try:
        return _order_cached(value)
    except TypeError:  # unhashable
        return _order_value(value)


def _needs_normalising(distinct: set[Any]) -> bool:
    """Whether a column's distinct values hold temporal values that may collide."""
    kinds = set(map(type, distinct))
    if any(issubclass(k, dt.date) for k in kinds):
        return True
    if str not in kinds:
        return False
    strings = distinct if kinds == {str} else [v for v in distinct if isinstance(v, str)]
    return _TS_LIKE_ANY.search("\n".join(strings)) is not None


def _normalised_getter(keys: tuple[str, ...]) -> Any:
    if len(keys) == 1:
        (only,) = keys

        def one(row: Mapping[str, Any]) -> Hashable:
            return _norm_value(row[only])

        return one

    def many(row: Mapping[str, Any]) -> tuple[Hashable, ...]:
        return tuple(_norm_value(row[k]) for k in keys)

    return many

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
import json
import logging
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from typing import Any

from ._values import parse_instant
from .errors import ConfigError, InvalidRows
from .tables import TABLES, TableSpec

__all__ = ["TABLES", "DedupReport", "TableSpec", "dedupe_rows"]

log = logging.getLogger(__name__)

# ASCII digits only: a key string that does not start with 0-9 is never a timestamp.
_TS_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", re.ASCII)
_TS_LIKE_ANY = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", re.ASCII | re.MULTILINE)


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


def _canon(value: object) -> object:
    """A value's normal form for the content comparison (JSON-friendly)."""
    kind = type(value)
    if kind is int or kind is bool or value is None:
        return value
    if kind is str:
        # Only a string starting with a digit can be a timestamp.
        return _norm_value(value) if "0" <= value[:1] <= "9" else value  # type: ignore[index]
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


def _located(rows: Sequence[Any], keys: tuple[str, ...]) -> InvalidRows:
    """``_locate_bad_row`` where a bad key value was seen."""
    found = _locate_bad_row(rows, keys)
    return found or InvalidRows("a row has an invalid key")  # pragma: no cover


def _locate_bad_row(rows: Sequence[Any], keys: tuple[str, ...]) -> InvalidRows | None:
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
    return None


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
    first = data[0] if data else None
    best: dict[Any, Any] = {}
    fold, firsts, conflicted = _folder(best, keys, order_by, keep)
    grouped = None
    if (
        len(keys) == 2
        and isinstance(first, Mapping)
        and keys[0] in first
        and type(first.get(keys[1])) is str
    ):
        # The analytics tables' shape (a date, then a name): validation and the
        # normalisation screen ride along in the one pass.
        tx = type(first[keys[0]])
        grouped = _group_screened(best, fold, data, keys, tx)
        if grouped is not None:
            dups, dup_keys, odd = grouped
            rekey = _screened_rekey(best, data, odd, keys, tx)
    if grouped is None:
        best = {}
        fold, firsts, conflicted = _folder(best, keys, order_by, keep)
        dups, dup_keys = _group(best, fold, data, keys, itemgetter(*keys))
        rekey = _checked_rekey(best, data, keys)
    if rekey:
        # Some raw keys collide once normalised (e.g. a date and its ISO string).
        best = {}
        fold, firsts, conflicted = _folder(best, keys, order_by, keep)
        dups, dup_keys = _group(best, fold, data, keys, _normalised_getter(keys))

    duplicate_keys, conflicting = len(firsts), len(conflicted)
    examples: list[dict[str, Any]] = []
    if conflicted:
        chosen = list(conflicted)[:3]
        examples = _examples(firsts, dups, dup_keys, keys, order_by, chosen)

    out = list(map(dict, best.values())) if copy else list(best.values())
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


def _group(
    best: dict[Any, Any], fold: Any, data: Sequence[Any], keys: tuple[str, ...], key_of: Any
) -> tuple[list[Any], list[Any]]:
    """Fill ``best`` (one row per key, duplicates folded in); the duplicates and their keys."""
    dups: list[Any] = []
    dup_keys: list[Any] = []
    first_seen = best.setdefault
    add_dup = dups.append
    add_key = dup_keys.append
    try:
        for row in data:
            k = key_of(row)
            kept = first_seen(k, row)
            if kept is not row:
                fold(k, kept, row)
                add_dup(row)
                add_key(k)
    except (KeyError, TypeError, IndexError) as exc:
        bad = _locate_bad_row(data, keys)
        if bad is None:
            raise
        raise bad from exc
    return dups, dup_keys


def _checked_rekey(best: dict[Any, Any], data: Sequence[Any], keys: tuple[str, ...]) -> bool:
    """Validate the distinct key values; whether some only collide once normalised."""
    if len(keys) == 1:
        columns: list[Any] = [best]
    else:
        columns = [set(map(itemgetter(j), best)) for j in range(len(keys))]
    for distinct in columns:
        if None in distinct or "" in distinct:
            raise _located(data, keys)
    return any(_collides(distinct) for distinct in columns)


def _collides(distinct: Any) -> bool:
    """Whether distinct values of a key column are fewer once normalised."""
    return _may_collide(distinct) and len({_norm_value(v) for v in distinct}) != len(distinct)


def _group_screened(
    best: dict[Any, Any], fold: Any, data: Sequence[Any], keys: tuple[str, ...], first_type: type
) -> tuple[list[Any], list[Any], list[Any]] | None:
    """``_group`` for two keys whose second is text, also returning the rows to look at.

    A row is set aside when its first key value is falsy or not of ``first_type``,
    or its second sorts below ``":"`` (empty, or starts with a digit as a timestamp
    would). Every other row has valid keys that normalise to themselves, except that
    the first column needs a look unless it holds dates. None when a second key value
    does not compare with text (not a str): the caller takes the general path.
    """
    dups: list[Any] = []
    dup_keys: list[Any] = []
    odd: list[Any] = []
    first_seen = best.setdefault
    add_dup = dups.append
    add_key = dup_keys.append
    add_odd = odd.append
    a, b = keys
    tx = first_type
    try:
        if tx is dt.date:
            for row in data:
                x = row[a]
                y = row[b]
                if type(x) is not tx or y < ":":  # a date is never falsy
                    add_odd(row)
                k = (x, y)
                kept = first_seen(k, row)
                if kept is not row:
                    fold(k, kept, row)
                    add_dup(row)
                    add_key(k)
        else:
            for row in data:
                x = row[a]
                y = row[b]
                if type(x) is not tx or not x or y < ":":
                    add_odd(row)
                k = (x, y)
                kept = first_seen(k, row)
                if kept is not row:
                    fold(k, kept, row)
                    add_dup(row)
                    add_key(k)
    except (KeyError, IndexError) as exc:
        bad = _locate_bad_row(data, keys)
        if bad is None:
            raise
        raise bad from exc
    except TypeError:
        return None  # not text, unhashable, or a row that is not a mapping
    return dups, dup_keys, odd


def _screened_rekey(
    best: dict[Any, Any],
    data: Sequence[Any],
    odd: list[Any],
    keys: tuple[str, ...],
    first_type: type,
) -> bool:
    """``_checked_rekey`` after ``_group_screened``: mostly the set-aside rows only."""
    xs: set[Any] = set(map(itemgetter(keys[0]), odd))
    ys: set[Any] = set(map(itemgetter(keys[1]), odd))
    if None in xs or "" in xs or None in ys or "" in ys:
        raise _located(data, keys)
    if first_type is dt.date and not any(isinstance(v, (dt.datetime, str)) for v in xs):
        rekey = False  # dates (beside non-temporal values) never collide
    else:
        rekey = _collides(set(map(itemgetter(0), best)))
    # Second column: a value that is or may equal a normalised timestamp or date
    # starts with a digit (or is not a str), so any collision lies within ``ys``.
    return rekey or _collides(ys)


def _folder(
    best: dict[Any, Any], keys: tuple[str, ...], order_by: str | None, keep: str
) -> tuple[Callable[[Any, Any, Any], None], dict[Any, Any], dict[Any, None]]:
    """A function folding a duplicate into its key's kept row in ``best``.

    Also returns the first row of each duplicated key and the conflicting keys, both
    filled as it runs. Allocates no container per key: a long-lived object per
    duplicate key would trigger full garbage collections over the whole batch.
    """
    last = keep == "last"
    ob = order_by
    skip = (*keys, ob) if ob is not None else keys
    firsts: dict[Any, Any] = {}
    first_of = firsts.setdefault
    conflicted: dict[Any, None] = {}
    orders: dict[Any, tuple[Any, ...]] = {}

    def fold(k: Any, kept: Any, row: Any) -> None:
        first = first_of(k, kept)
        newer: bool | None = None
        if ob is not None:
            a, b = row.get(ob), kept.get(ob)
            if a != b:
                try:
                    oa, ob_ = orders[a], orders[b]
                except (KeyError, TypeError):
                    oa, ob_ = _order_of(a, orders), _order_of(b, orders)
                if oa != ob_:
                    newer = oa > ob_
        if newer is None:
            # Tie on order_by: the canonical content decides; an equal one keeps `kept`.
            if row != kept:
                ca, cb = _content(row), _content(kept)
                if ca != cb and (ca > cb) == last:
                    best[k] = row
        elif newer == last:
            best[k] = row
        if (
            k not in conflicted
            and row != first
            and (ob is None or ob not in row or ob not in first or {**row, ob: first[ob]} != first)
            and _values_differ(first, row, skip)
        ):
            conflicted[k] = None

    return fold, firsts, conflicted


def _examples(
    firsts: dict[Any, Any],
    dups: list[Any],
    dup_keys: list[Any],
    keys: tuple[str, ...],
    order_by: str | None,
    chosen: list[Any],
) -> list[dict[str, Any]]:
    """A few conflicting keys with their row count and differing columns, for the log."""
    skip = (*keys, order_by) if order_by else keys
    groups: dict[Any, list[Any]] = {k: [firsts[k]] for k in chosen}
    for k, row in zip(dup_keys, dups, strict=True):
        group = groups.get(k)
        if group is not None:
            group.append(row)
    return [
        {
            "key": dict(zip(keys, k if len(keys) > 1 else (k,), strict=True)),
            "rows": len(group),
            "differs": _differing_columns(group, skip),
        }
        for k, group in groups.items()
    ]


def _order_of(value: object, cache: dict[Any, tuple[Any, ...]]) -> tuple[Any, ...]:
    """``_order_value`` memoised in ``cache`` (a dict: no per-entry container)."""
    try:
        return cache[value]
    except KeyError:
        result = cache[value] = _order_value(value)
        return result
    except TypeError:  # unhashable
        return _order_value(value)


def _may_collide(distinct: Any) -> bool:
    """Whether two distinct values of a key column may be one key once normalised."""
    if len(distinct) < 2:
        return False
    try:
        text = "\n".join(distinct)
    except TypeError:
        kinds = set(map(type, distinct))
        if any(issubclass(k, dt.date) for k in kinds):
            # Only dates: never equal unless equal already. Else (datetimes, dates
            # beside strings) the caller compares the normalised values.
            return kinds != {dt.date}
        text = "\n".join(v for v in distinct if isinstance(v, str))
    # Only strings written as timestamps can collide (one instant, two spellings).
    return ":" in text and _TS_LIKE_ANY.search(text) is not None


def _values_differ(
    first: Mapping[str, Any], other: Mapping[str, Any], skip: tuple[str, ...]
) -> bool:
    """Whether two rows differ outside ``skip`` (normalised values; absent means None)."""
    for col, a in first.items():
        if col not in skip:
            b = other.get(col)
            if a != b and _canon(a) != _canon(b):
                return True
    for col, b in other.items():
        if col not in first and col not in skip and b is not None and _canon(b) is not None:
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


def _normalised_getter(keys: tuple[str, ...]) -> Any:
    if len(keys) == 1:
        (only,) = keys

        def one(row: Mapping[str, Any]) -> Hashable:
            return _norm_value(row[only])

        return one

    def many(row: Mapping[str, Any]) -> tuple[Hashable, ...]:
        return tuple(_norm_value(row[k]) for k in keys)

    return many

"""Pre-write dedup: one row per key, the newest (or oldest) by ``order_by``.

Rules:

- Key values compare as given, with two exceptions: a ``date`` equals its
  ``"YYYY-MM-DD"`` string, and ``datetime`` values compare as instants (a naive one
  read as UTC). A string is compared as a string, as BigQuery compares STRING
  columns: ``"2026-02-03T10:00:00Z"`` and ``"2026-02-03 10:00:00+00:00"`` are two
  keys. Without a schema a TIMESTAMP written as text cannot be told from a STRING;
  ``safe_merge`` converts values to their column's type before dedup, so there a
  TIMESTAMP key compares as an instant and a STRING key as text.
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
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from operator import itemgetter
from typing import Any, NoReturn

from ..dates import parse_instant
from ..errors import ConfigError, InvalidRows
from ..tables import TABLES, TableSpec

__all__ = ["TABLES", "DedupReport", "TableSpec", "dedupe_rows"]

log = logging.getLogger(__name__)

_NO_VALUE = object()

# ASCII digits only: an order_by string that does not start with 0-9 is never a timestamp.
_TS_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", re.ASCII)


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
    """Key normal form: dates as ISO text, datetimes as aware UTC instants, else as given."""
    if isinstance(value, dt.datetime):
        return parse_instant(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _text_of(value: object) -> object:
    """Content normal form of a string: a timestamp spelling as its UTC instant's ISO text."""
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
        return _text_of(value) if "0" <= value[:1] <= "9" else value  # type: ignore[index]
    if isinstance(value, dt.datetime):
        return parse_instant(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return _text_of(value)
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


def _raise_located(data: Sequence[Any], keys: tuple[str, ...], exc: Exception) -> NoReturn:
    """Raise the InvalidRows naming the bad row behind ``exc``, else ``exc`` itself."""
    bad = _locate_bad_row(data, keys)
    if bad is None:
        raise exc
    raise bad from exc


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
    grouped = _group(data, _Rule(keys, order_by, keep == "last"))
    duplicate_keys, conflicted = grouped.duplicate_keys(), grouped.conflicted
    examples: list[dict[str, Any]] = []
    if conflicted:
        examples = _examples(grouped, keys, order_by, list(conflicted)[:3])
    kept = grouped.kept()
    out = list(map(dict, kept)) if copy else kept
    report = DedupReport(
        input_rows=len(data),
        output_rows=len(out),
        dropped_rows=len(data) - len(out),
        duplicate_keys=duplicate_keys,
        conflicting_keys=len(conflicted),
        conflict_examples=examples,
    )
    if conflicted:
        log.warning(
            "dedup on %s: %d key(s) had duplicates with different values "
            "(an upstream problem); examples: %s",
            ",".join(keys),
            len(conflicted),
            examples,
        )
    return out, report


@dataclass(frozen=True)
class _Rule:
    """What makes rows one key and which of them is kept."""

    keys: tuple[str, ...]
    order_by: str | None
    last: bool


class _Grouped:
    """Each key's kept row, held in ``slots``, and the later rows of each key.

    ``slots`` is a list of rows in order of first appearance (a key's slot: its
    position) or a dict from key to row, whose order is the same (slot: the key).
    Grouping passes call ``fold`` for each row after the first of its key, while that
    row is still in cache.
    """

    __slots__ = (
        "conflicted",
        "firsts",
        "later",
        "later_first",
        "ranks",
        "rule",
        "skip",
        "slots",
    )

    def __init__(self, slots: list[Any] | dict[Any, Any], rule: _Rule) -> None:
        self.slots = slots
        self.rule = rule
        self.skip = (*rule.keys, rule.order_by) if rule.order_by is not None else rule.keys
        self.later: list[Any] = []
        self.later_first: list[Any] = []
        self.firsts: dict[Any, Any] = {}  # slot -> first row, once its kept row changed
        self.ranks: dict[Any, tuple[Any, ...]] = {}
        # Conflicting keys by the identity of their first row: no container per key,
        # since long-lived objects on the scale of a large batch set off full collections.
        self.conflicted: dict[int, None] = {}

    def fold(self, row: Any, slot: Any) -> None:
        """Fold ``row``, a row after the first of the key in ``slot``."""
        slots, ob = self.slots, self.rule.order_by
        current = slots[slot]
        first = self.firsts.get(slot, current)
        self.later.append(row)
        self.later_first.append(first)
        newer: bool | None = None
        if ob is not None:
            a, b = row.get(ob), current.get(ob)
            if a != b:
                ra, rb = _rank(a, self.ranks), _rank(b, self.ranks)
                if ra != rb:
                    newer = ra > rb
        if newer is None and row != current:
            # Tie on order_by: the canonical content decides; an equal one keeps `current`.
            ca, cb = _content(row), _content(current)
            newer = ca > cb if ca != cb else None
        if newer is not None and newer == self.rule.last:
            self.firsts[slot] = first
            slots[slot] = row
        if (
            id(first) not in self.conflicted
            and (
                _beside(row, first, ob)
                if ob is not None and ob in row and ob in first
                else row != first
            )
            and _values_differ(first, row, self.skip)
        ):
            self.conflicted[id(first)] = None

    def duplicate_keys(self) -> int:
        """How many keys had more than one row."""
        return len(set(map(id, self.later_first)))

    def kept(self) -> list[Any]:
        """The kept rows, in order of each key's first appearance."""
        return self.slots if isinstance(self.slots, list) else list(self.slots.values())


def _group(data: Sequence[Any], rule: _Rule) -> _Grouped:
    """Group by raw key values, or by normalised ones when some collide once normalised."""
    keys = rule.keys
    first = data[0] if data else None
    if (
        len(keys) == 2
        and isinstance(first, Mapping)
        and keys[0] in first
        and type(first.get(keys[1])) is str
    ):
        # The analytics tables' shape (a date, then a name): validation and the
        # normalisation screen ride along in the one pass.
        tx = type(first[keys[0]])
        if _in_runs(data, keys[0]):
            screened = _group_nested(data, rule, tx)
        else:
            screened = _group_screened(data, rule, tx)
        if screened is not None:
            grouped, distinct_firsts, odd = screened
            if _screen_collides(data, keys, tx, distinct_firsts, odd):
                return _group_flat(data, rule, _normalised_getter(keys))[1]
            return grouped
    index, grouped = _group_flat(data, rule, itemgetter(*keys))
    if _checked_rekey(index, data, keys):
        # Some raw keys collide once normalised (e.g. a date and its ISO string).
        grouped = _group_flat(data, rule, _normalised_getter(keys))[1]
    return grouped


def _in_runs(data: Sequence[Any], column: str, sample: int = 256) -> bool:
    """Whether the first rows come in runs of one ``column`` value, as a date's rows do."""
    head = data[:sample]
    try:
        changes = sum(1 for a, b in pairwise(head) if a[column] != b[column])
    except (LookupError, TypeError, ValueError):
        return False  # the grouping pass reports bad rows
    return changes * 8 <= len(head)


def _group_flat(data: Sequence[Any], rule: _Rule, key_of: Any) -> tuple[dict[Any, Any], _Grouped]:
    """Group by ``key_of(row)`` in one dict from key to kept row; the dict and the groups."""
    index: dict[Any, Any] = {}
    grouped = _Grouped(index, rule)
    fold = grouped.fold
    first_seen = index.setdefault
    try:
        for row in data:
            if first_seen(k := key_of(row), row) is not row:
                fold(row, k)
    except (KeyError, TypeError, IndexError) as exc:
        _raise_located(data, rule.keys, exc)
    return index, grouped


_Screened = tuple[_Grouped, Callable[[], Collection[Any]], list[Any]]


def _group_nested(data: Sequence[Any], rule: _Rule, first_type: type) -> _Screened | None:
    """``_group_screened`` for rows in runs of one first key value: one dict per value.

    Small per-value dicts stay in cache and need no key tuples, where one dict of
    tuples for the whole batch costs a cache miss and an allocation per row. The first
    key value is looked up (and screened) only when it changes from one row to the next.
    """
    kept: list[Any] = []
    grouped = _Grouped(kept, rule)
    keep, fold = kept.append, grouped.fold
    odd: list[Any] = []
    add_odd = odd.append
    a, b = keys = rule.keys
    tx = first_type
    groups: dict[Any, dict[Any, int]] = {}
    group: dict[Any, int] = {}
    x_now: object = _NO_VALUE
    n = 0
    try:
        for row in data:
            x = row[a]
            y = row[b]
            if x is not x_now and x != x_now:
                found = groups.get(x)
                group = groups[x] = {} if found is None else found
                x_now = x
                if type(x) is not tx or not x:
                    add_odd(row)
            if y < ":":
                add_odd(row)
            if (at := group.setdefault(y, n)) == n:
                keep(row)
                n += 1
            else:
                fold(row, at)
    except (KeyError, IndexError) as exc:
        _raise_located(data, keys, exc)
    except (TypeError, ValueError):
        # Not text, unhashable, not comparable, or a row that is not a mapping.
        return None
    return grouped, groups.keys, odd


def _group_screened(data: Sequence[Any], rule: _Rule, first_type: type) -> _Screened | None:
    """Group two keys whose second is text; also the distinct first values and odd rows.

    A row is set aside as odd when its first key value is falsy or not of
    ``first_type``, or its second sorts below ``":"`` (empty, or starts with a digit as
    a timestamp would). Every other row has valid keys that normalise to themselves,
    except that the first column needs a look unless it holds dates. None when a
    second key value does not compare with text (not a str): the caller takes the
    general path.
    """
    index: dict[Any, Any] = {}
    grouped = _Grouped(index, rule)
    fold = grouped.fold
    odd: list[Any] = []
    add_odd = odd.append
    a, b = keys = rule.keys
    tx = first_type
    first_seen = index.setdefault
    try:
        for row in data:
            x = row[a]
            y = row[b]
            if type(x) is not tx or not x or y < ":":
                add_odd(row)
            if first_seen(k := (x, y), row) is not row:
                fold(row, k)
    except (KeyError, IndexError) as exc:
        _raise_located(data, keys, exc)
    except TypeError:
        return None
    return grouped, lambda: set(map(itemgetter(0), index)), odd


def _screen_collides(
    data: Sequence[Any],
    keys: tuple[str, ...],
    first_type: type,
    distinct_firsts: Callable[[], Collection[Any]],
    odd: list[Any],
) -> bool:
    """Validate the rows a screened pass set aside; whether some keys collide once normalised."""
    xs: set[Any] = set(map(itemgetter(keys[0]), odd))
    ys: set[Any] = set(map(itemgetter(keys[1]), odd))
    if None in xs or "" in xs or None in ys or "" in ys:
        raise _located(data, keys)
    if first_type is dt.date and not any(isinstance(v, (dt.datetime, str)) for v in xs):
        rekey = False  # dates (beside non-temporal values) never collide
    else:
        rekey = _collides(set(distinct_firsts()))
    # Second column: a value that is or may equal a normalised timestamp or date
    # starts with a digit (or is not a str), so any collision lies within ``ys``.
    return rekey or _collides(ys)


def _checked_rekey(index: dict[Any, Any], data: Sequence[Any], keys: tuple[str, ...]) -> bool:
    """Validate the distinct key values; whether some only collide once normalised."""
    if len(keys) == 1:
        columns: list[Any] = [index]
    else:
        columns = [set(map(itemgetter(j), index)) for j in range(len(keys))]
    for distinct in columns:
        if None in distinct or "" in distinct:
            raise _located(data, keys)
    return any(_collides(distinct) for distinct in columns)


def _collides(distinct: Any) -> bool:
    """Whether distinct values of a key column are fewer once normalised."""
    return _may_collide(distinct) and len({_norm_value(v) for v in distinct}) != len(distinct)


def _rank(value: object, ranks: dict[Any, tuple[Any, ...]]) -> tuple[Any, ...]:
    """``_order_value`` memoised in ``ranks`` (unhashable values are not memoised)."""
    try:
        rank = ranks.get(value)
        if rank is None:
            rank = ranks[value] = _order_value(value)
        return rank
    except TypeError:
        return _order_value(value)


def _beside(row: Mapping[str, Any], first: Mapping[str, Any], order_by: str) -> bool:
    """Whether ``row`` differs from ``first`` other than in ``order_by`` (raw values)."""
    return {**row, order_by: first[order_by]} != first


def _examples(
    grouped: _Grouped, keys: tuple[str, ...], order_by: str | None, chosen: list[int]
) -> list[dict[str, Any]]:
    """A few conflicting keys (by first-row identity) with their rows' differing columns."""
    skip = (*keys, order_by) if order_by else keys
    groups: dict[int, list[Any]] = {}
    for row, first in zip(grouped.later, grouped.later_first, strict=True):
        if id(first) in chosen:
            groups.setdefault(id(first), [first]).append(row)
    return [
        {
            "key": {k: group[0].get(k) for k in keys},
            "rows": len(group),
            "differs": _differing_columns(group, skip),
        }
        for group in groups.values()
    ]


def _may_collide(distinct: Any) -> bool:
    """Whether two distinct values of a key column may be one key once normalised."""
    if len(distinct) < 2:
        return False
    kinds = set(map(type, distinct))
    if not any(issubclass(k, dt.date) for k in kinds):
        return False  # no dates or datetimes: values compare as given (strings as text)
    # Only dates: never equal unless equal already. Else (datetimes, dates beside
    # strings) the caller compares the normalised values.
    return kinds != {dt.date}


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

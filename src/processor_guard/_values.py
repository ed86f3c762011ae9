"""Value normalisation shared by dedup and the warehouse adapters.

Timestamps: a naive ``datetime`` or an ISO string without an offset is read as UTC.
Values from pandas/numpy (numpy scalars and arrays, ``Timestamp``, ``NaT``, ``NA``,
``NaN``) are read as the plain Python value they hold, a missing one as NULL; neither
library is imported here.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any, Protocol

from .dates import UTC, parse_game_date, parse_instant

#: Column types the library can validate and write, by their BigQuery names.
SUPPORTED_TYPES = frozenset(
    {
        "STRING",
        "INT64",
        "FLOAT64",
        "NUMERIC",
        "BIGNUMERIC",
        "BOOL",
        "DATE",
        "DATETIME",
        "TIMESTAMP",
        "TIME",
        "BYTES",
        "JSON",
        "STRUCT",
    }
)

_ALIASES = {
    "INTEGER": "INT64",
    "INT": "INT64",
    "SMALLINT": "INT64",
    "BIGINT": "INT64",
    "TINYINT": "INT64",
    "BYTEINT": "INT64",
    "HUGEINT": "INT64",
    "UBIGINT": "INT64",
    "UINTEGER": "INT64",
    "USMALLINT": "INT64",
    "UTINYINT": "INT64",
    "FLOAT": "FLOAT64",
    "DOUBLE": "FLOAT64",
    "REAL": "FLOAT64",
    "BOOLEAN": "BOOL",
    "VARCHAR": "STRING",
    "TEXT": "STRING",
    "BLOB": "BYTES",
    "DECIMAL": "NUMERIC",
    "BIGDECIMAL": "BIGNUMERIC",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "TIMESTAMPTZ": "TIMESTAMP",
    "RECORD": "STRUCT",
}


def normalise_type(type_name: str) -> str:
    """The BigQuery name of a BigQuery or DuckDB column type (``DECIMAL(18,3)`` -> NUMERIC)."""
    base = type_name.upper().split("(", 1)[0].strip()
    return _ALIASES.get(base, base)


def _parse_date(value: object) -> dt.date:
    text = value.strip() if isinstance(value, str) else value
    return parse_game_date(text, argument="DATE value")


def _pandas_date(value: dt.datetime) -> dt.date | dt.datetime:
    """A naive midnight from pandas/numpy (how they hold a date) as that date."""
    if value.tzinfo is None and value.time() == dt.time():
        return value.date()
    return value


def _parse_timestamp(value: object) -> dt.datetime:
    return parse_instant(value, argument="TIMESTAMP value")


def _parse_datetime(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"expected a datetime or ISO string, got {type(value).__name__}")
    if parsed.tzinfo is not None:
        raise ValueError(f"DATETIME values carry no time zone: {value!r}")
    return parsed


def _parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a bool")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        result = int(value)
    elif isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number")
        result = int(value)
    elif isinstance(value, str):
        result = int(value.strip())
    else:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if not -(2**63) <= result < 2**63:
        raise ValueError(f"{result} is out of INT64 range")
    return result


def _parse_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number, got a bool")
    if isinstance(value, (int, float, Decimal)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError(f"expected a number, got {type(value).__name__}")


#: BigQuery's NUMERIC and BIGNUMERIC when the column declares no precision/scale.
DEFAULT_DECIMAL = {"NUMERIC": (38, 9), "BIGNUMERIC": (76, 38)}


def _at_scale(value: Decimal, kind: str, precision: int | None, scale: int | None) -> Decimal:
    """``value`` rounded (half away from zero, as BigQuery does) to the column's scale.

    ValueError when its integer part needs more digits than the column has.
    """
    default_precision, default_scale = DEFAULT_DECIMAL[kind]
    scale = default_scale if scale is None else scale
    precision = default_precision if precision is None else precision
    rounded = value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    integer_digits = len(str(abs(int(rounded)))) if int(rounded) else 0
    if integer_digits > precision - scale:
        raise ValueError(
            f"{value} does not fit {kind}({precision}, {scale}): at most "
            f"{precision - scale} digits before the point"
        )
    return rounded


def _parse_numeric(value: object) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("expected a number, got a bool")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"NUMERIC cannot hold {value!r}")
        result = Decimal(repr(value))
    elif isinstance(value, (int, Decimal)):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a decimal number") from exc
    else:
        raise TypeError(f"expected a decimal number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"NUMERIC cannot hold {value!r}")
    return result


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError(f"expected a bool, got {value!r}")


def _parse_time(value: object) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        return dt.time.fromisoformat(value.strip())
    raise TypeError(f"expected a time, got {type(value).__name__}")


def _parse_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def _parse_string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _parse_json(value: object) -> str:
    """JSON text. A str is taken as JSON text already (and must parse); anything else
    is serialised, so every path stores the same JSON value."""
    if isinstance(value, str):
        json.loads(value)  # ValueError names the bad text: it would not load either
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_PARSERS: dict[str, Any] = {
    "STRING": _parse_string,
    "INT64": _parse_int,
    "FLOAT64": _parse_float,
    "NUMERIC": _parse_numeric,
    "BIGNUMERIC": _parse_numeric,
    "BOOL": _parse_bool,
    "DATE": _parse_date,
    "DATETIME": _parse_datetime,
    "TIMESTAMP": _parse_timestamp,
    "TIME": _parse_time,
    "BYTES": _parse_bytes,
    "JSON": _parse_json,
}


#: Types whose values need no conversion from pandas/numpy (checked by exact type).
_PLAIN_TYPES = frozenset(
    {str, int, bool, Decimal, dt.date, dt.datetime, dt.time, bytes, list, dict, tuple}
)
_MISSING_TYPE_NAMES = frozenset({"NaTType", "NAType"})


def plain_value(value: object) -> Any:
    """``value`` as a plain Python value: numpy scalars and arrays, pandas ``Timestamp``
    and their missing values (``NaN``, ``NaT``, ``NA``: None) converted, others as given.

    Neither pandas nor numpy is imported: values are recognised by their methods.
    """
    kind = type(value)
    if kind in _PLAIN_TYPES or value is None:
        return value
    if kind is float:
        return None if value != value else value  # NaN: pandas' NULL
    if kind.__name__ in _MISSING_TYPE_NAMES:
        return None
    module = kind.__module__ or ""
    if module.startswith("pandas") and hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()  # a Timestamp (NaT was caught above)
    if module.startswith("numpy"):
        if kind.__name__ == "datetime64":
            if value != value:
                return None
            return value.astype("datetime64[us]").item()  # type: ignore[attr-defined]
        if kind.__name__ == "timedelta64":
            raise TypeError("a numpy timedelta64 has no BigQuery type")
        if hasattr(value, "tolist"):
            return plain_value(value.tolist())  # a scalar gives its Python value
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str) and kind is not str:
        return str(value)
    return value


class FieldShape(Protocol):
    """What coercion needs to know of a column or a STRUCT field (``plan.Column`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def required(self) -> bool: ...
    @property
    def precision(self) -> int | None: ...
    @property
    def scale(self) -> int | None: ...
    @property
    def repeated(self) -> bool: ...
    @property
    def fields(self) -> Sequence[FieldShape]: ...


def _items(value: object) -> list[Any]:
    value = plain_value(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"expected a list for an ARRAY, got {type(value).__name__}")


def coerce_field(value: object, shape: FieldShape) -> Any:
    """``value`` converted to a column's (or STRUCT field's) canonical Python value.

    An ARRAY gives a list (None: ``[]``, as BigQuery stores a NULL array); a NULL
    element is refused, as BigQuery refuses it. A STRUCT gives a dict holding every
    field (an absent field: None); a field it does not have is refused. Errors name
    the element or field, as TypeError or ValueError.
    """
    if not shape.repeated:
        return _coerce_one(value, shape)
    if value is None:
        return []
    out = []
    for n, item in enumerate(_items(value)):
        converted = _coerce_one(item, shape)
        if converted is None:
            raise ValueError(f"element {n} is NULL: a BigQuery ARRAY cannot hold NULL elements")
        out.append(converted)
    return out


def _coerce_one(value: object, shape: FieldShape) -> Any:
    if shape.type != "STRUCT":
        return coerce(value, shape.type, precision=shape.precision, scale=shape.scale)
    value = plain_value(value)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping for a STRUCT, got {type(value).__name__}")
    names = {f.name for f in shape.fields}
    extra = [k for k in value if k not in names]
    if extra:
        raise ValueError(f"the STRUCT has no field {extra[0]!r}")
    out: dict[str, Any] = {}
    for f in shape.fields:
        try:
            out[f.name] = coerce_field(value.get(f.name), f)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise type(exc)(f"field {f.name!r}: {exc}") from exc
        if f.required and out[f.name] is None:
            raise ValueError(f"field {f.name!r} is REQUIRED and missing or None")
    return out


def field_json(value: object, shape: FieldShape, *, struct_as_list: bool = False) -> Any:
    """A coerced value in its JSON form; a STRUCT as an object, or with ``struct_as_list``
    as ``[1, field, ...]`` (the leading 1 tells a NULL struct from one of NULL fields)."""
    if shape.repeated:
        assert isinstance(value, list)
        return [_one_json(v, shape, struct_as_list) for v in value]
    return _one_json(value, shape, struct_as_list)


def _one_json(value: object, shape: FieldShape, struct_as_list: bool) -> Any:
    if shape.type != "STRUCT":
        return to_json_value(value, shape.type)
    if value is None:
        return None
    assert isinstance(value, Mapping)
    if struct_as_list:
        return [1, *(field_json(value.get(f.name), f, struct_as_list=True) for f in shape.fields)]
    return {f.name: field_json(value.get(f.name), f) for f in shape.fields}


def coerce(
    value: object, type_name: str, *, precision: int | None = None, scale: int | None = None
) -> Any:
    """``value`` converted to the canonical Python value of a scalar column type; None
    (and a pandas/numpy missing value) gives None.

    NUMERIC/BIGNUMERIC values are rounded to the column's scale (``precision`` and
    ``scale`` default to BigQuery's). Raises TypeError or ValueError when it cannot
    convert or the value does not fit.
    """
    foreign = type(value) not in _PLAIN_TYPES
    if foreign:
        value = plain_value(value)
    if value is None:
        return None
    kind = normalise_type(type_name)
    if foreign and kind == "DATE" and isinstance(value, dt.datetime):
        value = _pandas_date(value)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise TypeError(f"column type {type_name} is not supported")
    if kind in DEFAULT_DECIMAL:
        with localcontext() as ctx:
            ctx.prec = 80  # BIGNUMERIC's 76 digits must not be rounded by the context
            return _at_scale(parser(value), kind, precision, scale)
    return parser(value)


def to_json_value(value: object, type_name: str) -> Any:
    """A canonical value as it goes into NDJSON or a JSON literal (None -> null)."""
    if value is None:
        return None
    kind = normalise_type(type_name)
    if kind == "TIMESTAMP":
        assert isinstance(value, dt.datetime)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    if kind in ("DATE", "TIME"):
        return value.isoformat()  # type: ignore[attr-defined]
    if kind == "DATETIME":
        assert isinstance(value, dt.datetime)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if kind in ("NUMERIC", "BIGNUMERIC"):
        return format(value, "f")
    if kind == "INT64":
        return str(value)  # strings keep full INT64 precision through JSON
    if kind == "FLOAT64":
        assert isinstance(value, float)
        return value if math.isfinite(value) else repr(value).replace("inf", "Infinity")
    if kind == "BYTES":
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode("ascii")
    return value


_INFERRED = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (Decimal, "NUMERIC"),
    (str, "STRING"),
    (dt.datetime, "TIMESTAMP"),
    (dt.date, "DATE"),
    (dt.time, "TIME"),
    (bytes, "BYTES"),
)


def _kind_of(value: object) -> str:
    for python_type, kind in _INFERRED:
        if isinstance(value, python_type):
            return kind
    raise TypeError(f"no column type is inferred from a {type(value).__name__}")


def infer_type(values: Sequence[object]) -> tuple[str, bool]:
    """The (BigQuery type, is an ARRAY) of a new column, from its values.

    Scalars and lists of scalars only (a datetime gives TIMESTAMP; ints beside floats
    give FLOAT64). ValueError when the values mix types, or are all None or empty.
    """
    kinds: set[str] = set()
    shapes: set[bool] = set()
    for value in values:
        value = plain_value(value)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            shapes.add(True)
            kinds.update(_kind_of(plain_value(v)) for v in value if plain_value(v) is not None)
        else:
            shapes.add(False)
            kinds.add(_kind_of(value))
    if kinds == {"INT64", "FLOAT64"}:
        kinds = {"FLOAT64"}
    if len(shapes) > 1 or len(kinds) > 1:
        raise ValueError(f"its values mix types ({', '.join(sorted(kinds))})")
    if not kinds:
        raise ValueError("every value is None or empty, so its type is unknown")
    return kinds.pop(), shapes.pop()

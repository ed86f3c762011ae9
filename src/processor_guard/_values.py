"""Value normalisation shared by dedup and the warehouse adapters.

Timestamps: a naive ``datetime`` or an ISO string without an offset is read as UTC.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

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
}


def normalise_type(type_name: str) -> str:
    """The BigQuery name of a BigQuery or DuckDB column type (``DECIMAL(18,3)`` -> NUMERIC)."""
    base = type_name.upper().split("(", 1)[0].strip()
    return _ALIASES.get(base, base)


def _parse_date(value: object) -> dt.date:
    text = value.strip() if isinstance(value, str) else value
    return parse_game_date(text, argument="DATE value")


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


def coerce(
    value: object, type_name: str, *, precision: int | None = None, scale: int | None = None
) -> Any:
    """``value`` converted to the canonical Python value of a column type; None stays None.

    NUMERIC/BIGNUMERIC values are rounded to the column's scale (``precision`` and
    ``scale`` default to BigQuery's). Raises TypeError or ValueError when it cannot
    convert or the value does not fit.
    """
    if value is None:
        return None
    kind = normalise_type(type_name)
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

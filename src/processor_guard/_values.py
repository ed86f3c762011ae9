"""Value normalisation shared by dedup and the warehouse adapters.

Timestamps: a naive ``datetime`` or an ISO string without an offset is read as UTC.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from decimal import Decimal, InvalidOperation
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
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


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


def coerce(value: object, type_name: str) -> Any:
    """``value`` converted to the canonical Python value of a column type; None stays None.

    Raises TypeError or ValueError when it cannot convert.
    """
    if value is None:
        return None
    parser = _PARSERS.get(normalise_type(type_name))
    if parser is None:
        raise TypeError(f"column type {type_name} is not supported")
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

"""Values typed as BigQuery types them: NUMERIC/BIGNUMERIC scales, JSON text."""

from __future__ import annotations

from decimal import Decimal

import pytest

from processor_guard._values import coerce


def test_numeric_defaults_to_bigquerys_scale_of_nine() -> None:
    assert coerce(0.1 + 0.2, "NUMERIC") == Decimal("0.300000000")
    assert coerce("0.1234567891", "NUMERIC") == Decimal("0.123456789")
    assert coerce(Decimal("-0.0000000005"), "NUMERIC") == Decimal("-1E-9")  # half away from 0


def test_numeric_at_a_declared_scale_and_precision() -> None:
    assert coerce("31.55", "NUMERIC", precision=5, scale=1) == Decimal("31.6")
    with pytest.raises(ValueError, match=r"does not fit NUMERIC\(5, 1\)"):
        coerce("12345.5", "NUMERIC", precision=5, scale=1)
    with pytest.raises(ValueError, match="at most 29 digits"):
        coerce(10**29, "NUMERIC")


def test_bignumeric_keeps_38_fractional_digits() -> None:
    value = "0." + "1" * 40
    assert coerce(value, "BIGNUMERIC") == Decimal("0." + "1" * 38)


def test_json_text_is_checked_and_objects_serialised_once() -> None:
    assert coerce({"b": 1, "a": [1, None]}, "JSON") == '{"a":[1,null],"b":1}'
    assert coerce('{"a": 1}', "JSON") == '{"a": 1}'
    with pytest.raises(ValueError):
        coerce("{not json", "JSON")

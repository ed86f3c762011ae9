"""Which optional extra provides which package, and the one-line error for a missing one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import MissingDependency

__all__ = ["EXTRAS", "extra_for", "needs_extra"]

#: extra name -> (the top-level module it provides, the distribution to name)
EXTRAS: dict[str, tuple[str, str]] = {
    "redis": ("redis", "redis"),
    "firestore": ("google", "google-cloud-firestore"),
    "bigquery": ("google", "google-cloud-bigquery"),
    "duckdb": ("duckdb", "duckdb"),
    "pubsub": ("google", "google-cloud-pubsub"),
}

_MODULE_EXTRA = {
    "redis": "redis",
    "duckdb": "duckdb",
    "google.cloud.firestore": "firestore",
    "google.cloud.firestore_v1": "firestore",
    "google.cloud.bigquery": "bigquery",
    "google.cloud.pubsub": "pubsub",
    "google.cloud.pubsub_v1": "pubsub",
}


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name from ModuleNotFoundError.name)."""
    name = module or ""
    while name:
        if name in _MODULE_EXTRA:
            return _MODULE_EXTRA[name]
        name = name.rpartition(".")[0]
    return None


@contextlib.contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a ModuleNotFoundError for ``extra``'s package into :class:`MissingDependency`."""
    top_level, distribution = EXTRAS[extra]
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != top_level:
            raise
        raise MissingDependency(feature, distribution, extra) from None

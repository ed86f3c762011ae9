"""Warehouse adapters: one small interface that BigQuery and DuckDB both implement."""

from ._all import *  # noqa: F403 - temporary while the module is split
from ._all import __all__ as __all__

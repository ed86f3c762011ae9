"""The few Firestore names the completion code and the local document store share.

With ``google-cloud-firestore`` installed these are Google's own objects (sentinels,
exception classes, field-path quoting), so a real ``firestore.Client`` and
:class:`~processor_guard.completion.docstore.SQLiteDocumentClient` behave alike.
Without it only the local document store can be in use, and stand-ins with the same
meaning are used, so the embedded default needs no cloud client.
"""

from __future__ import annotations

import functools
import re
from types import ModuleType
from typing import Any

__all__ = [
    "already_exists",
    "conflict_errors",
    "delete_field",
    "failed_precondition",
    "not_found",
    "quote_field",
    "server_timestamp",
    "service_errors",
]


class _Sentinel:
    def __init__(self, meaning: str) -> None:
        self._meaning = meaning

    def __repr__(self) -> str:
        return f"Sentinel: {self._meaning}"


_LOCAL_SERVER_TIMESTAMP = _Sentinel("Value used to set a document field to the server timestamp.")
_LOCAL_DELETE_FIELD = _Sentinel("Value used to delete a field in a document.")


class LocalDocumentError(Exception):
    """Base of the local document store's errors when Google's client is absent."""


class LocalAlreadyExists(LocalDocumentError):
    """``create`` found the document already there."""


class LocalFailedPrecondition(LocalDocumentError):
    """An ``update`` whose ``last_update_time`` precondition no longer holds."""


class LocalNotFound(LocalDocumentError):
    """An ``update`` of a document that does not exist."""


@functools.cache
def _google() -> tuple[ModuleType, ModuleType] | None:
    """(google.api_core.exceptions, google.cloud.firestore_v1), or None if not installed."""
    try:
        from google.api_core import exceptions
        from google.cloud import firestore_v1
    except ImportError:
        return None
    return exceptions, firestore_v1


def server_timestamp() -> Any:
    """The sentinel a write replaces with the server's time."""
    google = _google()
    return google[1].SERVER_TIMESTAMP if google else _LOCAL_SERVER_TIMESTAMP


def delete_field() -> Any:
    """The sentinel that removes a field in an update."""
    google = _google()
    return google[1].DELETE_FIELD if google else _LOCAL_DELETE_FIELD


def already_exists(message: str) -> Exception:
    google = _google()
    error: Exception = google[0].AlreadyExists(message) if google else LocalAlreadyExists(message)
    return error


def failed_precondition(message: str) -> Exception:
    google = _google()
    error: Exception = (
        google[0].FailedPrecondition(message) if google else LocalFailedPrecondition(message)
    )
    return error


def not_found(message: str) -> Exception:
    google = _google()
    error: Exception = google[0].NotFound(message) if google else LocalNotFound(message)
    return error


def conflict_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning another writer got in between a read and a write."""
    google = _google()
    if google:
        return (google[0].AlreadyExists, google[0].FailedPrecondition, google[0].NotFound)
    return (LocalAlreadyExists, LocalFailedPrecondition, LocalNotFound)


def service_errors() -> tuple[type[BaseException], ...]:
    """Errors a document service raises for its own failures (not reachability)."""
    google = _google()
    return (google[0].GoogleAPIError,) if google else (LocalDocumentError,)


_SIMPLE_FIELD = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")


def quote_field(name: str) -> str:
    """One field name as a field path: backquoted unless it is a simple identifier."""
    google = _google()
    if google:
        from google.cloud.firestore_v1.field_path import FieldPath

        return str(FieldPath(name).to_api_repr())
    if _SIMPLE_FIELD.match(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"

"""Leases in Firestore: one document per key, taken by compare-and-set on server time.

Document ``{collection}/{key}`` (key ``scope:YYYY-MM-DD``) holds::

    owner       str | None   holder; None once released or broken
    fence       int          last fence handed out for the key (kept after release)
    expires     timestamp    lease expiry on the server's clock (None when free)
    expire_at   timestamp    expires + ``cleanup_after``: set it as the collection's TTL
                             field and Firestore deletes long-idle documents
    ttl, acquired_at, renewed_at, released_at   for people reading the document

Guarantees:

- Acquire, renew, release and break are one read and one conditional write each
  (release is the write alone while the document is still what this store last wrote
  for the lease: the precondition is that write's update time):
  ``create()`` when the document is absent, else an update with an ``update_time``
  precondition. No read-write transaction is used, so contention never waits on the
  server's lock timeout (about 2 s per conflict on the emulator); a writer that loses
  the race re-reads at once and reports the winner as busy.
- Expiry is judged on the server's clock only. Every read returns the server's
  ``read_time``; a lease is live while ``expires > read_time``, the remaining time is
  ``expires - read_time``, and a new expiry is written as ``read_time + ttl``. That
  read time is earlier than the commit, so the store's expiry can only fall a few
  milliseconds short of ``commit + ttl`` and is still later than the holder's own
  deadline (taken on its monotonic clock before the call). ``SERVER_TIMESTAMP`` would
  record the commit time, but Firestore cannot add the ttl to it in the same write, so
  the expiry and the TTL field could not be set in one step.
- Fences: ``max(stored fence + 1, fence_seed(read_time))``, so they keep increasing
  even when TTL clean-up (or a person) deleted the document.
- Release clears the holder but keeps the document, so the stored fence survives.
- Waiters listen to the key's document (``on_snapshot``) and wake the moment a
  snapshot shows it free; a listener that cannot be set up or breaks leaves the
  waiter sleeping its (jittered, capped) timeout, i.e. plain polling.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, MissingDependency, StoreUnavailable
from .base import AcquireResult, Holder, LeaseStore, ReleaseWaiter, fence_seed
from .firestore_cas import (
    DEFAULT_TIMEOUT,
    CasOutcome,
    compare_and_set,
    is_unavailable,
    read_doc,
    read_retry,
    store_unavailable,
    update_payload,
)

__all__ = ["DEFAULT_COLLECTION", "FirestoreStore"]

DEFAULT_COLLECTION = "processor_guard_leases"
# Acquisitions with unknown outcome remembered for the owner's next call (bounded).
MAX_UNANSWERED = 1024
# Leases whose last written state is remembered for a one-write release (bounded).
MAX_REMEMBERED = 4096
Doc = dict[str, Any]
log = logging.getLogger("processor_guard.stores.firestore")


def _check_key(key: object) -> str:
    """Firestore document ids: non-empty, no '/', not '.', '..' or '__name__'-like."""
    if (
        not isinstance(key, str)
        or not key
        or "/" in key
        or key in (".", "..")
        or (key.startswith("__") and key.endswith("__"))
        or len(key.encode()) > 1500
    ):
        raise ConfigError(f"lease key {key!r} is not a valid Firestore document id")
    return key


def _check_ttl(ttl: object) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 1e9:
        raise ConfigError(f"ttl must be a number of seconds > 0, got {ttl!r}")


def _check_collection(collection: object) -> str:
    if not isinstance(collection, str) or not collection or "/" in collection:
        raise ConfigError(
            f"Firestore collection must be a non-empty name without '/', got {collection!r}"
        )
    return collection


def _live(doc: Doc | None, now: dt.datetime) -> bool:
    """A document holds a live lease at server time ``now``."""
    if not doc or not isinstance(doc.get("owner"), str):
        return False
    expires = doc.get("expires")
    return isinstance(expires, dt.datetime) and expires > now


class _SnapshotWaiter(ReleaseWaiter):
    """Woken by a snapshot listener on the key's document when it shows the key free."""

    def __init__(self, doc_ref: Any, key: str) -> None:
        self._key = key
        self._free = threading.Event()
        self._watch: Any = None
        try:
            self._watch = doc_ref.on_snapshot(self._on_snapshot)
        except Exception as exc:
            log.debug("no release notices for %s, polling instead: %r", key, exc)

    def _on_snapshot(self, docs: list[Any], changes: Any, read_time: dt.datetime) -> None:
        if not any(_live(d.to_dict(), read_time) for d in docs if d.exists):
            self._free.set()

    def wait(self, timeout: float) -> bool:
        woke = self._free.wait(max(timeout, 0.0))
        self._free.clear()
        return woke

    def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.unsubscribe()
            except Exception as exc:
                log.debug("closing the release listener for %s failed: %r", self._key, exc)


class FirestoreStore(LeaseStore):
    """Leases in a Firestore collection (default ``processor_guard_leases``).

    ``timeout`` bounds each Firestore call (reads including their retries), so an
    unreachable server raises StoreUnavailable within seconds. ``cleanup_after`` is how
    long after a lease's expiry its ``expire_at`` TTL field lets Firestore delete the
    document; fences stay monotonic either way. ``listen=False`` makes waiters poll
    instead of listening for releases.
    """

    scheme = "firestore"
    max_key_bytes = 1500  # Firestore document ids

    def __init__(
        self,
        client: Any,
        collection: str = DEFAULT_COLLECTION,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cleanup_after: float = 7 * 86400.0,
        listen: bool = True,
        owns_client: bool = False,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not cleanup_after >= 0:
            raise ConfigError(f"cleanup_after must be >= 0 seconds, got {cleanup_after!r}")
        self.client = client
        self.collection = _check_collection(collection)
        self.timeout = float(timeout)
        self.cleanup_after = dt.timedelta(seconds=cleanup_after)
        self.listen = listen
        self._owns_client = owns_client
        self._coll = client.collection(self.collection)
        # (key, owner) -> fence of an acquisition whose write had no answer.
        self._unanswered: dict[tuple[str, str], int] = {}
        # (key, owner, fence) -> (update time, document) of this store's last write.
        self._last_write: dict[tuple[str, str, int], tuple[dt.datetime, Doc]] = {}

    @classmethod
    def from_project(cls, project: str, collection: str | None = None) -> FirestoreStore:
        """A store with its own client for ``project`` (honours FIRESTORE_EMULATOR_HOST)."""
        if not isinstance(project, str) or not project:
            raise ConfigError(f"Firestore project must be a non-empty string, got {project!r}")
        coll = _check_collection(collection) if collection is not None else DEFAULT_COLLECTION
        try:
            from google.cloud import firestore
        except ImportError:
            raise MissingDependency(
                "the firestore:// lease store", "google-cloud-firestore", "firestore"
            ) from None
        try:
            client = firestore.Client(project=project)
        except Exception as exc:  # google.auth's DefaultCredentialsError and friends
            raise ConfigError(
                f"cannot create a Firestore client for project {project!r}: {exc}"
            ) from exc
        return cls(client, coll, owns_client=True)

    # ------------------------------------------------------------------ helpers

    def _ref(self, key: str) -> Any:
        return self._coll.document(_check_key(key))

    def _cas(
        self,
        key: str,
        decide: Callable[[Doc | None, dt.datetime], Doc | None],
        *,
        max_attempts: int,
        base_delay: float,
    ) -> CasOutcome:
        return compare_and_set(
            self.client,
            self._ref(key),
            decide,
            key=key,
            max_attempts=max_attempts,
            base_delay=base_delay,
            timeout=self.timeout,
        )

    @staticmethod
    def _fence_of(doc: Doc | None) -> int:
        fence = (doc or {}).get("fence")
        return fence if isinstance(fence, int) and not isinstance(fence, bool) else 0

    def _holder(self, key: str, doc: Doc | None, now: dt.datetime) -> Holder | None:
        if doc is None or not _live(doc, now):
            return None
        remaining = (doc["expires"] - now).total_seconds()
        return Holder(key, doc["owner"], self._fence_of(doc), remaining)

    def _next_fence(self, doc: Doc | None, now: dt.datetime) -> int:
        return max(self._fence_of(doc) + 1, fence_seed(now.timestamp()))

    # ------------------------------------------------------------------ LeaseStore

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        _check_ttl(ttl)
        busy: list[Holder | None] = [None]
        # The fence of an earlier call of this owner whose write had no answer: if the
        # document shows it, that write landed and this call takes the lease over.
        unanswered = self._unanswered.pop((key, owner), None)
        tried: list[int] = []

        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            expires = now + dt.timedelta(seconds=ttl)
            if _live(doc, now):
                assert doc is not None
                if unanswered is not None and self._ours(doc, owner, unanswered):
                    tried[:] = [unanswered]
                    doc.update(expires=expires, expire_at=expires + self.cleanup_after)
                    return doc
                busy[0] = self._holder(key, doc, now)
                return None
            tried[:] = [self._next_fence(doc, now)]
            new = dict(doc or {})
            new.update(
                owner=owner,
                fence=tried[0],
                expires=expires,
                expire_at=expires + self.cleanup_after,
                ttl=float(ttl),
                acquired_at=now,
                renewed_at=now,
                released_at=None,
            )
            return new

        # A lost race re-reads at once: the winner then shows as busy.
        try:
            outcome = self._cas(key, decide, max_attempts=4, base_delay=0.0)
        except StoreUnavailable:
            if tried and self._landed(key, owner, tried[0]):
                return AcquireResult(True, fence=tried[0])
            if tried and len(self._unanswered) < MAX_UNANSWERED:
                self._unanswered[(key, owner)] = tried[0]
            raise
        if outcome.written:
            assert outcome.after is not None
            fence = int(outcome.after["fence"])
            self._remember(key, owner, fence, outcome)
            return AcquireResult(True, fence=fence)
        return AcquireResult(False, holder=busy[0])

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        _check_ttl(ttl)

        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            if not self._ours(doc, owner, fence) or not _live(doc, now):
                return None
            assert doc is not None
            expires = now + dt.timedelta(seconds=ttl)
            doc.update(expires=expires, expire_at=expires + self.cleanup_after, renewed_at=now)
            return doc

        outcome = self._cas(key, decide, max_attempts=20, base_delay=0.005)
        if outcome.gave_up:
            raise store_unavailable(TimeoutError("too many conflicting writes"), key, "renew")
        if outcome.written:
            self._remember(key, owner, fence, outcome)
        else:
            self._last_write.pop((key, owner, fence), None)
        return outcome.written

    def _remember(self, key: str, owner: str, fence: int, outcome: CasOutcome) -> None:
        """Keep the state this store last wrote for a lease, for a one-RPC release."""
        if len(self._last_write) >= MAX_REMEMBERED:
            self._last_write.clear()  # leases lost without release: start over
        if outcome.after is not None and outcome.update_time is not None:
            self._last_write[(key, owner, fence)] = (outcome.update_time, outcome.after)

    def _release_as_last_written(self, key: str, owner: str, fence: int) -> bool:
        """Release in one conditional write when the document is still exactly what
        this store last wrote for the lease; False when it changed (or is unknown)."""
        from google.api_core import exceptions as gexc
        from google.cloud.firestore_v1 import SERVER_TIMESTAMP

        last = self._last_write.pop((key, owner, fence), None)
        if last is None:
            return False
        update_time, before = last
        # Unchanged since our write, so still live: its expiry is later than now and
        # bounds the clean-up time without a read of the server's clock.
        after = dict(before, owner=None, expires=None, released_at=SERVER_TIMESTAMP)
        after["expire_at"] = before["expires"] + self.cleanup_after
        try:
            self._ref(key).update(
                update_payload(before, after),
                option=self.client.write_option(last_update_time=update_time),
                retry=None,
                timeout=self.timeout,
            )
        except (gexc.FailedPrecondition, gexc.NotFound):
            return False  # written by someone else since: decide on a fresh read
        except Exception as exc:
            if is_unavailable(exc):
                raise store_unavailable(exc, key, "release") from exc
            raise
        return True

    def release(self, key: str, owner: str, fence: int) -> bool:
        if self._release_as_last_written(key, owner, fence):
            return True

        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            if not self._ours(doc, owner, fence):
                return None
            assert doc is not None
            doc.update(
                owner=None, expires=None, expire_at=now + self.cleanup_after, released_at=now
            )
            return doc

        outcome = self._cas(key, decide, max_attempts=20, base_delay=0.005)
        if outcome.gave_up:
            raise store_unavailable(TimeoutError("too many conflicting writes"), key, "release")
        return outcome.written

    def _landed(self, key: str, owner: str, fence: int) -> bool:
        """After a write with no answer: does the document show it (one read)?"""
        try:
            snap = read_doc(self._ref(key), key=key, timeout=self.timeout)
        except StoreUnavailable:
            return False
        doc = snap.to_dict() if snap.exists else None
        return self._ours(doc, owner, fence) and _live(doc, snap.read_time)

    @staticmethod
    def _ours(doc: Doc | None, owner: str, fence: int) -> bool:
        return doc is not None and doc.get("owner") == owner and doc.get("fence") == fence

    def holder(self, key: str) -> Holder | None:
        snap = read_doc(self._ref(key), key=key, timeout=self.timeout)
        return self._holder(key, snap.to_dict() if snap.exists else None, snap.read_time)

    def holders(self) -> list[Holder]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._coll.where(
            filter=FieldFilter("expires", ">", dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
        )
        try:
            snaps = list(query.stream(retry=read_retry(self.timeout), timeout=self.timeout))
        except Exception as exc:
            if is_unavailable(exc):
                raise store_unavailable(exc, None, f"listing of {self.collection!r}") from exc
            raise
        found = (self._holder(s.id, s.to_dict(), s.read_time) for s in snaps)
        return sorted((h for h in found if h is not None), key=lambda h: h.key)

    def break_lease(self, key: str) -> int:
        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            new = dict(doc or {})
            new.update(
                owner=None,
                fence=self._next_fence(doc, now),
                expires=None,
                expire_at=now + self.cleanup_after,
                released_at=now,
            )
            return new

        outcome = self._cas(key, decide, max_attempts=50, base_delay=0.005)
        if not outcome.written:
            raise store_unavailable(TimeoutError("too many conflicting writes"), key, "break")
        assert outcome.after is not None
        return int(outcome.after["fence"])

    def release_waiter(self, key: str) -> ReleaseWaiter:
        if not self.listen:
            return super().release_waiter(key)
        return _SnapshotWaiter(self._ref(key), key)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        project = getattr(self.client, "project", "?")
        return f"<FirestoreStore {project}/{self.collection}>"

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
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError, MissingDependency, StoreUnavailable
from .base import AcquireResult, Holder, LeaseStore, ReleaseWaiter, fence_seed
from .firestore_cas import (
    CONFLICT,
    DEFAULT_TIMEOUT,
    CasOutcome,
    Read,
    Steps,
    Update,
    cas_steps,
    read_retry,
    run_steps,
    store_unavailable,
    unavailable_raised_as_store_error,
    update_payload,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "FirestoreCollection",
    "FirestoreLeaseSteps",
    "FirestoreStore",
    "check_collection",
    "check_store_settings",
    "new_client",
]

DEFAULT_COLLECTION = "processor_guard_leases"
# Acquisitions with unknown outcome remembered for the owner's next call (bounded).
MAX_UNANSWERED = 1024
# Leases whose last written state is remembered for a one-write release (bounded).
MAX_REMEMBERED = 4096
Doc = dict[str, Any]
T = TypeVar("T")
S = TypeVar("S", bound="FirestoreCollection")
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


def check_collection(collection: object) -> str:
    if not isinstance(collection, str) or not collection or "/" in collection:
        raise ConfigError(
            f"Firestore collection must be a non-empty name without '/', got {collection!r}"
        )
    return collection


def check_store_settings(timeout: object, cleanup_after: object) -> None:
    """ConfigError unless ``timeout`` > 0 and ``cleanup_after`` >= 0 (seconds)."""
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
    if not isinstance(cleanup_after, (int, float)) or not cleanup_after >= 0:
        raise ConfigError(f"cleanup_after must be >= 0 seconds, got {cleanup_after!r}")


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


class FirestoreLeaseSteps:
    """The lease store's logic on one collection, for either client: each operation
    is a generator of Firestore calls (see ``firestore_cas``), run by FirestoreStore on
    a ``Client`` and by AsyncFirestoreStore on an ``AsyncClient``.

    It remembers, per store object, acquisitions and releases whose write had no
    answer (the owner's next identical call answers for them) and the state last
    written for each lease (for a one-write release).
    """

    def __init__(self, coll: Any, *, cleanup_after: float) -> None:
        self.coll = coll
        self.cleanup_after = dt.timedelta(seconds=cleanup_after)
        # (key, owner) -> fence of an acquisition whose write had no answer;
        # (key, owner, fence) -> fence of a release whose write had no answer.
        self._unanswered: dict[tuple[str, str] | tuple[str, str, int], int] = {}
        # (key, owner, fence) -> (update time, document) of this store's last write.
        self._last_write: dict[tuple[str, str, int], tuple[dt.datetime, Doc]] = {}

    def ref(self, key: str) -> Any:
        return self.coll.document(_check_key(key))

    def _cas(
        self,
        key: str,
        decide: Callable[[Doc | None, dt.datetime], Doc | None],
        *,
        max_attempts: int,
        base_delay: float,
    ) -> Steps[CasOutcome]:
        return cas_steps(
            self.ref(key), decide, key=key, max_attempts=max_attempts, base_delay=base_delay
        )

    def _note_unanswered(self, call: tuple[str, str] | tuple[str, str, int], fence: int) -> None:
        if len(self._unanswered) < MAX_UNANSWERED:
            self._unanswered[call] = fence

    @staticmethod
    def _fence_of(doc: Doc | None) -> int:
        fence = (doc or {}).get("fence")
        return fence if isinstance(fence, int) and not isinstance(fence, bool) else 0

    def holder_of(self, key: str, doc: Doc | None, now: dt.datetime) -> Holder | None:
        """The live holder a document shows at server time ``now``."""
        if doc is None or not _live(doc, now):
            return None
        remaining = (doc["expires"] - now).total_seconds()
        return Holder(key, doc["owner"], self._fence_of(doc), remaining)

    def _next_fence(self, doc: Doc | None, now: dt.datetime) -> int:
        return max(self._fence_of(doc) + 1, fence_seed(now.timestamp()))

    @staticmethod
    def _ours(doc: Doc | None, owner: str, fence: int) -> bool:
        return doc is not None and doc.get("owner") == owner and doc.get("fence") == fence

    def try_acquire(self, key: str, owner: str, ttl: float) -> Steps[AcquireResult]:
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
                busy[0] = self.holder_of(key, doc, now)
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
            outcome = yield from self._cas(key, decide, max_attempts=4, base_delay=0.0)
        except StoreUnavailable:
            if tried and (yield from self._landed(key, owner, tried[0])):
                return AcquireResult(True, fence=tried[0])
            if tried:
                self._note_unanswered((key, owner), tried[0])
            raise
        except BaseException:  # cancelled or interrupted: the write may have landed
            if tried:
                self._note_unanswered((key, owner), tried[0])
            raise
        if outcome.written:
            assert outcome.after is not None
            fence = int(outcome.after["fence"])
            self._remember(key, owner, fence, outcome)
            return AcquireResult(True, fence=fence)
        return AcquireResult(False, holder=busy[0])

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> Steps[bool]:
        _check_ttl(ttl)

        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            if not self._ours(doc, owner, fence) or not _live(doc, now):
                return None
            assert doc is not None
            expires = now + dt.timedelta(seconds=ttl)
            doc.update(expires=expires, expire_at=expires + self.cleanup_after, renewed_at=now)
            return doc

        outcome = yield from self._cas(key, decide, max_attempts=20, base_delay=0.005)
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

    def _release_as_last_written(self, key: str, owner: str, fence: int) -> Steps[bool]:
        """Release in one conditional write when the document is still exactly what
        this store last wrote for the lease; False when it changed (or is unknown)."""
        from google.cloud.firestore_v1 import SERVER_TIMESTAMP

        last = self._last_write.pop((key, owner, fence), None)
        if last is None:
            return False
        update_time, before = last
        # Unchanged since our write, so still live: its expiry is later than now and
        # bounds the clean-up time without a read of the server's clock.
        after = dict(before, owner=None, expires=None, released_at=SERVER_TIMESTAMP)
        after["expire_at"] = before["expires"] + self.cleanup_after
        payload = update_payload(before, after)
        # CONFLICT: written by someone else since: decide on a fresh read.
        result = yield Update(self.ref(key), key, payload, update_time, action="release")
        return result is not CONFLICT

    def release(self, key: str, owner: str, fence: int) -> Steps[bool]:
        # An earlier release of this lease had no answer: a document still showing the
        # lease's fence without an owner was freed by it (only the owner releases, and
        # a break or a new holder raises the fence).
        retried = self._unanswered.pop((key, owner, fence), None) is not None
        freed_before = [False]

        def decide(doc: Doc | None, now: dt.datetime) -> Doc | None:
            freed_before[0] = retried and doc is not None and doc.get("owner") is None
            freed_before[0] = freed_before[0] and self._fence_of(doc) == fence
            if not self._ours(doc, owner, fence):
                return None
            assert doc is not None
            doc.update(
                owner=None, expires=None, expire_at=now + self.cleanup_after, released_at=now
            )
            return doc

        try:
            if (yield from self._release_as_last_written(key, owner, fence)):
                return True
            outcome = yield from self._cas(key, decide, max_attempts=20, base_delay=0.005)
        except BaseException:
            self._note_unanswered((key, owner, fence), fence)
            raise
        if outcome.gave_up:
            raise store_unavailable(TimeoutError("too many conflicting writes"), key, "release")
        return outcome.written or freed_before[0]

    def _landed(self, key: str, owner: str, fence: int) -> Steps[bool]:
        """After a write with no answer: does the document show it (one read)?"""
        try:
            snap = yield Read(self.ref(key), key)
        except StoreUnavailable:
            return False
        doc = snap.to_dict() if snap.exists else None
        return self._ours(doc, owner, fence) and _live(doc, snap.read_time)

    def holder(self, key: str) -> Steps[Holder | None]:
        snap = yield Read(self.ref(key), key)
        return self.holder_of(key, snap.to_dict() if snap.exists else None, snap.read_time)

    def live_query(self) -> Any:
        """The query for documents that may hold a live lease (run it, then holders_of)."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return self.coll.where(filter=FieldFilter("expires", ">", epoch))

    def holders_of(self, snaps: list[Any]) -> list[Holder]:
        """The live holders among ``live_query``'s snapshots, sorted by key."""
        found = (self.holder_of(s.id, s.to_dict(), s.read_time) for s in snaps)
        return sorted((h for h in found if h is not None), key=lambda h: h.key)

    def break_lease(self, key: str) -> Steps[int]:
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

        outcome = yield from self._cas(key, decide, max_attempts=50, base_delay=0.005)
        if not outcome.written:
            raise store_unavailable(TimeoutError("too many conflicting writes"), key, "break")
        assert outcome.after is not None
        return int(outcome.after["fence"])


class FirestoreCollection:
    """What a Firestore lease store (sync or async) is built on: the client, the
    collection, the settings and the lease steps on them.

    ``timeout`` bounds each Firestore call (reads including their retries), so an
    unreachable server raises StoreUnavailable within seconds. ``cleanup_after`` is how
    long after a lease's expiry its ``expire_at`` TTL field lets Firestore delete the
    document; fences stay monotonic either way. ``listen=False`` makes waiters poll
    instead of listening for releases (Google's AsyncClient has no listeners: the
    async store always polls).
    """

    #: from_project builds a google.cloud.firestore.AsyncClient rather than a Client.
    async_client: ClassVar[bool] = False

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
        check_store_settings(timeout, cleanup_after)
        self.client = client
        self.collection = check_collection(collection)
        self.timeout = float(timeout)
        self.listen = listen
        self.owns_client = owns_client
        self.steps = FirestoreLeaseSteps(
            client.collection(self.collection), cleanup_after=cleanup_after
        )

    @property
    def cleanup_after(self) -> dt.timedelta:
        return self.steps.cleanup_after

    @classmethod
    def from_project(cls: type[S], project: str, collection: str | None = None) -> S:
        """A store with its own client for ``project`` (honours FIRESTORE_EMULATOR_HOST)."""
        client = new_client(project, asynchronous=cls.async_client)
        return cls(client, collection or DEFAULT_COLLECTION, owns_client=True)

    def __repr__(self) -> str:
        project = getattr(self.client, "project", "?")
        return f"<{type(self).__name__} {project}/{self.collection}>"


class FirestoreStore(FirestoreCollection, LeaseStore):
    """Leases in a Firestore collection (default ``processor_guard_leases``) through a
    ``google.cloud.firestore.Client``; the arguments are FirestoreCollection's."""

    scheme = "firestore"
    max_key_bytes = 1500  # Firestore document ids

    def _run(self, steps: Steps[T]) -> T:
        return run_steps(steps, self.client, timeout=self.timeout)

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        return self._run(self.steps.try_acquire(key, owner, ttl))

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        return self._run(self.steps.renew(key, owner, fence, ttl))

    def release(self, key: str, owner: str, fence: int) -> bool:
        return self._run(self.steps.release(key, owner, fence))

    def holder(self, key: str) -> Holder | None:
        return self._run(self.steps.holder(key))

    def holders(self) -> list[Holder]:
        query = self.steps.live_query()
        with unavailable_raised_as_store_error(None, f"listing of {self.collection!r}"):
            snaps = list(query.stream(retry=read_retry(self.timeout), timeout=self.timeout))
        return self.steps.holders_of(snaps)

    def break_lease(self, key: str) -> int:
        return self._run(self.steps.break_lease(key))

    def release_waiter(self, key: str) -> ReleaseWaiter:
        if not self.listen:
            return super().release_waiter(key)
        return _SnapshotWaiter(self.steps.ref(key), key)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def new_client(project: str, *, asynchronous: bool = False) -> Any:
    """A Firestore ``Client`` (``AsyncClient``) for ``project``; honours
    FIRESTORE_EMULATOR_HOST."""
    if not isinstance(project, str) or not project:
        raise ConfigError(f"Firestore project must be a non-empty string, got {project!r}")
    try:
        from google.cloud import firestore
    except ImportError:
        raise MissingDependency(
            "the firestore:// lease store", "google-cloud-firestore", "firestore"
        ) from None
    try:
        return (firestore.AsyncClient if asynchronous else firestore.Client)(project=project)
    except Exception as exc:  # google.auth's DefaultCredentialsError and friends
        raise ConfigError(
            f"cannot create a Firestore client for project {project!r}: {exc}"
        ) from exc

"""FirestoreStore and compare_and_set on Google's Firestore emulator (real server).

The cross-store conformance suite covers the common contract; these tests cover what
is specific to Firestore: compare-and-set contention without transaction lock waits,
fences after out-of-band deletion, server-time expiry, and a killed emulator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.firestore_emulator import FirestoreEmulator
from fixtures.services import LOOPBACK, free_port, wait_until
from processor_guard import (
    ConfigError,
    LeaseLost,
    LockBusy,
    StoreUnavailable,
    date_lock,
    open_store,
)
from processor_guard.stores import open_async_store
from processor_guard.stores.base import PollingWaiter, fence_seed
from processor_guard.stores.firestore_aio import AsyncFirestoreStore
from processor_guard.stores.firestore_cas import compare_and_set
from processor_guard.stores.firestore_store import DEFAULT_COLLECTION, FirestoreStore

pytestmark = pytest.mark.firestore

KEY = "player_game_summary:2026-02-03"


@pytest.fixture
def collection() -> str:
    return f"leases_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(firestore_client: Any, collection: str) -> Iterator[FirestoreStore]:
    yield FirestoreStore(firestore_client, collection=collection)


def server_now(client: Any) -> dt.datetime:
    """The emulator's current time: the read time of any read."""
    snap: Any = client.collection("clock").document("probe").get()
    return snap.read_time  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- basics


def test_acquire_busy_release_keeps_document_and_fence(
    store: FirestoreStore, firestore_client: Any
) -> None:
    first = store.try_acquire(KEY, "a", 30)
    assert first.acquired and first.fence is not None
    busy = store.try_acquire(KEY, "b", 30)
    assert not busy.acquired and busy.holder is not None
    assert (busy.holder.owner, busy.holder.fence) == ("a", first.fence)
    assert busy.holder.remaining is not None and 0 < busy.holder.remaining <= 30

    assert store.release(KEY, "a", first.fence) is True
    assert store.release(KEY, "a", first.fence) is False  # idempotent
    assert store.holder(KEY) is None

    doc = store.client.collection(store.collection).document(KEY).get().to_dict()
    assert doc["owner"] is None and doc["fence"] == first.fence
    assert isinstance(doc["expire_at"], dt.datetime)  # usable as a Firestore TTL field

    second = store.try_acquire(KEY, "b", 30)
    assert second.acquired and second.fence is not None and second.fence > first.fence


def test_expiry_fields_come_from_server_time(store: FirestoreStore, firestore_client: Any) -> None:
    before = server_now(firestore_client)
    assert store.try_acquire(KEY, "a", 45).acquired
    after = server_now(firestore_client)
    doc = store.client.collection(store.collection).document(KEY).get().to_dict()
    assert before <= doc["acquired_at"] <= after
    assert doc["expires"] - doc["acquired_at"] == dt.timedelta(seconds=45)
    assert doc["expire_at"] - doc["expires"] == store.cleanup_after
    assert doc["fence"] >= fence_seed(before.timestamp())


def test_holders_lists_live_leases_only(store: FirestoreStore) -> None:
    keys = [f"pgs:2026-02-0{d}" for d in range(1, 5)]
    fences = {k: store.try_acquire(k, f"o{i}", 30).fence for i, k in enumerate(keys)}
    store.release(keys[1], "o1", fences[keys[1]])  # type: ignore[arg-type]
    store.break_lease(keys[2])
    assert store.try_acquire(keys[3], "o3", 30).acquired is False
    live = store.holders()
    assert [(h.key, h.owner, h.fence) for h in live] == [
        (keys[0], "o0", fences[keys[0]]),
        (keys[3], "o3", fences[keys[3]]),
    ]


def test_break_lease_frees_and_refuses_the_old_holder(store: FirestoreStore) -> None:
    held = store.try_acquire(KEY, "a", 30)
    assert held.fence is not None
    raised = store.break_lease(KEY)
    assert raised > held.fence and store.holder(KEY) is None
    assert store.renew(KEY, "a", held.fence, 30) is False
    assert store.release(KEY, "a", held.fence) is False
    nxt = store.try_acquire(KEY, "b", 30)
    assert nxt.acquired and nxt.fence is not None and nxt.fence > raised
    assert store.break_lease("never-used:2026-02-03") > 0


def test_bad_keys_collections_and_urls_are_config_errors(firestore_client: Any) -> None:
    store = FirestoreStore(firestore_client)
    assert store.collection == DEFAULT_COLLECTION
    for bad_key in ("a/b", "", "..", "__x__"):
        with pytest.raises(ConfigError, match="document id"):
            store.try_acquire(bad_key, "a", 5)
    with pytest.raises(ConfigError, match="ttl"):
        store.try_acquire(KEY, "a", 0)
    with pytest.raises(ConfigError, match="collection"):
        FirestoreStore(firestore_client, collection="a/b")
    with pytest.raises(ConfigError):
        open_store("firestore://proj/a/b")
    opened = open_store("firestore://processor-guard-test/custom_leases")
    assert isinstance(opened, FirestoreStore) and opened.collection == "custom_leases"
    assert opened.try_acquire(KEY, "a", 5).acquired
    opened.close()


def test_from_project_without_credentials_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud default credentials
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # and no metadata server
    with pytest.raises(ConfigError, match="'some-project'"):
        open_store("firestore://some-project/leases")


# --------------------------------------------------------------------------- contention


def test_simultaneous_acquires_resolve_by_compare_and_set(
    firestore_emulator: FirestoreEmulator, store: FirestoreStore
) -> None:
    """Three clients race for a free key each round: exactly one wins, and every loser
    learns the winner (a re-read after its failed precondition), not a lock timeout."""
    stores = [FirestoreStore(firestore_emulator.client(), store.collection) for _ in range(3)]
    rounds = 25
    barrier = threading.Barrier(3)
    results: list[list[Any]] = [[] for _ in stores]

    def contend(i: int) -> None:
        for r in range(rounds):
            key = f"race:2026-01-{r + 1:02d}"
            barrier.wait()
            results[i].append(stores[i].try_acquire(key, f"owner{i}", 30))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in range(rounds):
        outcomes = [results[i][r] for i in range(3)]
        winners = [i for i, o in enumerate(outcomes) if o.acquired]
        assert len(winners) == 1, outcomes
        fence = outcomes[winners[0]].fence
        for i, o in enumerate(outcomes):
            if i != winners[0]:
                assert o.holder is not None
                assert (o.holder.owner, o.holder.fence) == (f"owner{winners[0]}", fence)


def test_threads_exclude_each_other_with_monotonic_fences(store: FirestoreStore) -> None:
    """3 threads, one shared default owner string: the (owner, fence) pair is the lease."""
    per_thread = 25
    counter = {"value": 0}
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                with date_lock("pgs", "2026-02-03", store=store, ttl=10, wait=60) as lease:
                    value = counter["value"]
                    time.sleep(0.001)  # widen the window a missing lock would expose
                    counter["value"] = value + 1
                    seen.append((value, lease.fence))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counter["value"] == 3 * per_thread
    fences = [fence for _, fence in sorted(seen)]
    assert all(a < b for a, b in itertools.pairwise(fences))


WORKER = r"""
import json, os, sys, time
from pathlib import Path
from processor_guard import date_lock, open_store

url, counter, go, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
store = open_store(url)
while not go.exists():
    time.sleep(0.005)
seen = []
for _ in range(n):
    with date_lock("pgs", "2026-02-03", store=store, ttl=10, wait=120) as lease:
        value = int(counter.read_text())
        time.sleep(0.001)
        counter.write_text(str(value + 1))
        seen.append([value, lease.fence])
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_processes_exclude_each_other_with_monotonic_fences(
    firestore_emulator: FirestoreEmulator, store: FirestoreStore, tmp_path: Path
) -> None:
    per_process = 30
    counter = tmp_path / "counter"
    counter.write_text("0")
    go = tmp_path / "go"
    url = f"firestore://{firestore_emulator.project}/{store.collection}"
    env = {**os.environ, "FIRESTORE_EMULATOR_HOST": firestore_emulator.host}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(counter), str(go), str(per_process)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    go.touch()
    seen: list[tuple[int, int]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()
            seen.extend((v, f) for v, f in json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert int(counter.read_text()) == 3 * per_process == len(seen)
    fences = [fence for _, fence in sorted(seen)]
    assert all(a < b for a, b in itertools.pairwise(fences))


def test_release_wakes_a_listening_waiter(store: FirestoreStore) -> None:
    held = store.try_acquire(KEY, "a", 30)
    assert held.fence is not None
    with store.release_waiter(KEY) as waiter:
        assert waiter.wait(0.3) is False  # still held: only the timeout ends the wait
        timer = threading.Timer(0.2, store.release, args=(KEY, "a", held.fence))
        timer.start()
        assert waiter.wait(30) is True  # a release notice, not the 30 s timeout
        timer.join()
    with store.release_waiter("never-held:2026-02-03") as free:
        assert free.wait(30) is True  # the first snapshot already shows it free


def test_waiting_date_lock_takes_over_when_the_holder_leaves(store: FirestoreStore) -> None:
    order: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with date_lock("pgs", "2026-02-03", store=store, ttl=30, owner="first") as lease:
            holding.set()
            time.sleep(0.3)
            order.append(f"first released {lease.fence}")

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(30)
    with date_lock("pgs", "2026-02-03", store=store, ttl=30, wait=30, owner="second") as lease:
        order.append(f"second acquired {lease.fence}")
    thread.join()
    assert [o.split()[0] for o in order] == ["first", "second"]
    assert int(order[1].split()[-1]) > int(order[0].split()[-1])
    polling = FirestoreStore(store.client, store.collection, listen=False)
    with polling.release_waiter(KEY) as waiter:
        assert isinstance(waiter, PollingWaiter)


# --------------------------------------------------------------------------- fences


def test_fences_stay_monotonic_after_out_of_band_delete(store: FirestoreStore) -> None:
    ref = store.client.collection(store.collection).document(KEY)
    first = store.try_acquire(KEY, "a", 30)
    assert first.fence is not None
    store.release(KEY, "a", first.fence)
    ref.delete()  # e.g. Firestore TTL clean-up
    second = store.try_acquire(KEY, "b", 30)
    assert second.acquired and second.fence is not None and second.fence > first.fence

    ref.delete()  # deleted while held: the holder cannot renew, a successor goes higher
    assert store.renew(KEY, "b", second.fence, 30) is False
    assert store.release(KEY, "b", second.fence) is False
    third = store.try_acquire(KEY, "c", 30)
    assert third.acquired and third.fence is not None and third.fence > second.fence

    ref.delete()
    assert store.break_lease(KEY) > third.fence


def test_stale_owner_and_fence_cannot_renew_or_release(
    store: FirestoreStore, firestore_client: Any
) -> None:
    old = store.try_acquire(KEY, "a", 0.3)
    assert old.fence is not None
    # Expiry is the server's: wait until the store itself reports the key free.
    wait_until(lambda: store.holder(KEY) is None, 10, "lease expiry")
    assert store.renew(KEY, "a", old.fence, 30) is False  # expired, even though unclaimed

    new = store.try_acquire(KEY, "a", 30)  # same owner string, new lease
    assert new.acquired and new.fence is not None and new.fence > old.fence
    assert store.renew(KEY, "a", old.fence, 30) is False
    assert store.release(KEY, "a", old.fence) is False
    other = store.holder(KEY)
    assert other is not None and other.fence == new.fence
    assert store.renew(KEY, "a", new.fence, 30) is True
    assert store.renew(KEY, "b", new.fence, 30) is False
    assert store.release(KEY, "a", new.fence) is True


def test_wall_clock_jumps_change_nothing(
    store: FirestoreStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store reads only server time; this machine's time.time jumping hours either
    way neither expires a live lease nor revives an expired one."""
    import grpc._channel

    real = time.time
    # gRPC turns each call's timeout into an absolute deadline with time.time() and
    # hands it to its C core, which reads the real clock; a real jump moves both, so
    # gRPC keeps the real clock here and only the rest of the process sees the jump.
    real_clock = types.SimpleNamespace(time=real, perf_counter=time.perf_counter)
    monkeypatch.setattr(grpc._channel, "time", real_clock)
    short = store.try_acquire("short:2026-02-03", "a", 0.3)
    assert short.acquired
    wait_until(lambda: store.holder("short:2026-02-03") is None, 10, "lease expiry")
    live = store.try_acquire(KEY, "a", 30)
    assert live.fence is not None
    for jump in (+6 * 3600, -6 * 3600):
        monkeypatch.setattr(time, "time", lambda jump=jump: real() + jump)
        holder = store.holder(KEY)
        assert holder is not None and holder.fence == live.fence
        assert holder.remaining is not None and 0 < holder.remaining <= 30
        assert not store.try_acquire(KEY, "b", 30).acquired
        assert store.holder("short:2026-02-03") is None
        assert store.renew(KEY, "a", live.fence, 30) is True
    monkeypatch.setattr(time, "time", real)
    assert store.release(KEY, "a", live.fence) is True


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_emulator_killed_mid_hold_loses_lease_then_restart_gives_higher_fence(
    firestore_emulator: FirestoreEmulator, collection: str, firestore_client: Any
) -> None:
    store = FirestoreStore(firestore_client, collection=collection, timeout=1.0)
    try:
        with (
            pytest.raises(LeaseLost),
            date_lock("pgs", "2026-02-03", store=store, ttl=1.5) as lease,
        ):
            first = lease.fence
            firestore_emulator.kill()
            assert lease.wait_lost(15), "lease not lost after the emulator died"
            with pytest.raises(LeaseLost):
                lease.check()

        with pytest.raises(StoreUnavailable) as err:
            store.try_acquire(KEY, "b", 5)
        assert err.value.key == KEY

        firestore_emulator.restart()  # comes back empty
        # The old client's channel reconnects on its own schedule; wait for it.
        wait_until(lambda: store.holder(KEY) is None, 60, "client reconnect")
        again = store.try_acquire(lease.key, "b", 5)
        assert again.acquired and again.fence is not None and again.fence > first
    finally:
        firestore_emulator.start()


def test_unreachable_firestore_raises_store_unavailable(
    firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"{LOOPBACK}:{free_port()}")
    client = firestore.Client(project=firestore_emulator.project)
    store = FirestoreStore(client, timeout=1.0)
    for call in (
        lambda: store.try_acquire(KEY, "a", 5),
        lambda: store.renew(KEY, "a", 1, 5),
        lambda: store.release(KEY, "a", 1),
        lambda: store.holder(KEY),
        lambda: store.break_lease(KEY),
    ):
        with pytest.raises(StoreUnavailable) as err:
            call()
        assert err.value.key == KEY
    with pytest.raises(StoreUnavailable):
        store.holders()
    ref = client.collection("c").document("d")
    with pytest.raises(StoreUnavailable):
        compare_and_set(client, ref, lambda doc, now: {"n": 1}, timeout=1.0)
    client.close()


# --------------------------------------------------------------------------- compare_and_set


def test_compare_and_set_counts_exactly_under_thread_contention(firestore_client: Any) -> None:
    ref = firestore_client.collection("counters").document("c1")

    def bump(doc: dict[str, Any] | None, now: dt.datetime) -> dict[str, Any]:
        doc = doc or {"n": 0, "by": {}}
        doc["n"] += 1
        return doc

    per_thread = 60
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                outcome = compare_and_set(firestore_client, ref, bump, max_attempts=100)
                assert outcome.written, outcome
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ref.get().to_dict()["n"] == 3 * per_thread


def test_compare_and_set_retries_a_lost_race_with_backoff(firestore_client: Any) -> None:
    ref = firestore_client.collection("counters").document("c2")
    ref.set({"n": 10, "drop_me": True, "odd.name": 1})
    sleeps: list[float] = []
    calls = {"n": 0}

    def mutate(doc: dict[str, Any] | None, now: dt.datetime) -> dict[str, Any]:
        assert doc is not None
        calls["n"] += 1
        if calls["n"] == 1:
            ref.update({"n": 20})  # another writer gets in between our read and write
        doc["n"] += 1
        del doc["drop_me"]
        return doc

    outcome = compare_and_set(firestore_client, ref, mutate, sleep=sleeps.append)
    assert calls["n"] == 2 and len(sleeps) == 1
    assert outcome.written and outcome.attempts == 2
    assert outcome.before == {"n": 20, "drop_me": True, "odd.name": 1}
    assert outcome.after == {"n": 21, "odd.name": 1}
    assert ref.get().to_dict() == {"n": 21, "odd.name": 1}


def test_compare_and_set_none_writes_nothing_and_creates_when_absent(
    firestore_client: Any,
) -> None:
    ref = firestore_client.collection("counters").document("c3")
    outcome = compare_and_set(firestore_client, ref, lambda doc, now: None)
    assert outcome.before is None and outcome.after is None and not outcome.written
    assert not ref.get().exists
    outcome = compare_and_set(firestore_client, ref, lambda doc, now: {"n": 1})
    assert outcome.before is None and outcome.after == {"n": 1} and outcome.written
    stamp = ref.get().update_time
    outcome = compare_and_set(firestore_client, ref, lambda doc, now: None)
    assert outcome.before == outcome.after == {"n": 1} and not outcome.written
    assert ref.get().update_time == stamp


def test_compare_and_set_gives_up_after_max_attempts(firestore_client: Any) -> None:
    ref = firestore_client.collection("counters").document("c4")
    ref.set({"n": 0})

    def always_raced(doc: dict[str, Any] | None, now: dt.datetime) -> dict[str, Any]:
        assert doc is not None
        ref.update({"n": doc["n"] + 100})
        return {"n": -1}

    outcome = compare_and_set(
        firestore_client, ref, always_raced, max_attempts=3, sleep=lambda s: None
    )
    assert outcome.gave_up and not outcome.written and outcome.attempts == 3
    assert ref.get().to_dict()["n"] == 300


def test_compare_and_set_passes_server_read_time(firestore_client: Any) -> None:
    ref = firestore_client.collection("counters").document("c5")
    before = server_now(firestore_client)
    outcome = compare_and_set(firestore_client, ref, lambda doc, now: {"at": now})
    assert outcome.written and outcome.before is None and outcome.attempts == 1
    assert before <= outcome.read_time <= server_now(firestore_client)
    assert ref.get().to_dict()["at"] == outcome.read_time


# --------------------------------------------------------------------------- lost replies


class _LosesWriteReplies:
    """A Firestore client whose next ``n`` writes reach the server and then raise
    ServiceUnavailable, as a reply lost on the network would (the emulator cannot)."""

    def __init__(self, client: Any, n: int) -> None:
        self._client = client
        self.n = n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def collection(self, name: str) -> Any:
        outer = self

        class Coll:
            def __getattr__(self, attr: str) -> Any:
                return getattr(outer._client.collection(name), attr)

            def document(self, key: str) -> Any:
                return outer._ref(outer._client.collection(name).document(key))

        return Coll()

    def _ref(self, ref: Any) -> Any:
        from google.api_core.exceptions import ServiceUnavailable

        outer = self

        class Ref:
            def __getattr__(self, attr: str) -> Any:
                return getattr(ref, attr)

            def _lose(self, result: Any) -> Any:
                if outer.n > 0:
                    outer.n -= 1
                    raise ServiceUnavailable("reply lost")
                return result

            def create(self, *args: Any, **kwargs: Any) -> Any:
                return self._lose(ref.create(*args, **kwargs))

            def update(self, *args: Any, **kwargs: Any) -> Any:
                return self._lose(ref.update(*args, **kwargs))

        return Ref()


def test_an_acquire_whose_reply_is_lost_gets_its_own_lease(
    firestore_client: Any, collection: str
) -> None:
    store = FirestoreStore(_LosesWriteReplies(firestore_client, 1), collection=collection)
    with date_lock("player_game_summary", "2026-02-03", store=store, ttl=10, owner="me") as lease:
        held = store.holder(KEY)
        assert held is not None and (held.owner, held.fence) == ("me", lease.fence)
    assert store.holder(KEY) is None


def test_a_caller_whose_acquire_failed_ambiguously_is_not_locked_out(
    firestore_client: Any, collection: str
) -> None:
    # The write lands, its reply is lost, and so is the check that follows it.
    lossy = _LosesWriteReplies(firestore_client, 1)
    store = FirestoreStore(lossy, collection=collection)
    real_landed = store.steps._landed

    def not_seen(*args: Any) -> Iterator[Any]:
        return False  # the read-back gets no answer either
        yield  # (a generator of Firestore calls, as the steps it stands in for)

    store.steps._landed = not_seen  # type: ignore[method-assign,assignment]
    with (
        pytest.raises(StoreUnavailable),
        date_lock("player_game_summary", "2026-02-03", store=store, ttl=10, owner="me"),
    ):
        pytest.fail("acquired without an answer")
    store.steps._landed = real_landed  # type: ignore[method-assign]
    orphan = store.holder(KEY)
    assert orphan is not None and orphan.owner == "me"
    with date_lock("player_game_summary", "2026-02-03", store=store, ttl=10, owner="me") as lease:
        assert lease.fence == orphan.fence
    assert store.holder(KEY) is None


# --------------------------------------------------------------------------- AsyncClient


def test_sync_and_async_holders_exclude_each_other(
    store: FirestoreStore, firestore_client: Any, collection: str
) -> None:
    url = f"firestore://{firestore_client.project}/{collection}"
    scope, day = KEY.split(":")

    async def async_is_refused() -> None:
        aio = open_async_store(url)
        assert isinstance(aio, AsyncFirestoreStore)
        with pytest.raises(LockBusy):
            async with date_lock(scope, day, store=aio, ttl=30, owner="async"):
                pytest.fail("the async holder got a key the sync one holds")
        await aio.aclose()

    def sync_is_refused() -> None:
        with pytest.raises(LockBusy), date_lock(scope, day, store=store, ttl=30, owner="sync"):
            pytest.fail("the sync holder got a key the async one holds")

    async def async_holds_while_sync_is_refused(sync_fence: int) -> None:
        aio = open_async_store(url)
        async with date_lock(scope, day, store=aio, ttl=30, owner="async") as lease:
            assert lease.fence > sync_fence
            held = store.holder(KEY)
            assert held is not None and (held.owner, held.fence) == ("async", lease.fence)
            await asyncio.to_thread(sync_is_refused)
        await aio.aclose()

    with date_lock(scope, day, store=store, ttl=30, owner="sync") as lease:
        asyncio.run(async_is_refused())
        assert store.holder(KEY) is not None
    asyncio.run(async_holds_while_sync_is_refused(lease.fence))
    assert store.holder(KEY) is None


def test_an_async_acquire_cancelled_anywhere_never_locks_its_owner_out(
    firestore_client: Any, collection: str
) -> None:
    async def main() -> None:
        aio = AsyncFirestoreStore.from_project(firestore_client.project, collection)
        cut_short = 0
        # Cancelled after 0, 2, 4, ... ms: before the read, between the read and the
        # write, while the write is on its way, after it landed (or once it finished).
        for ms in range(0, 80, 2):
            first = asyncio.create_task(aio.try_acquire(KEY, "me", 30))
            await asyncio.sleep(ms / 1000)
            first.cancel()
            try:
                taken = await first
            except asyncio.CancelledError:
                cut_short += 1
                taken = await aio.try_acquire(KEY, "me", 30)
            assert taken.acquired
            held = await aio.holder(KEY)
            assert held is not None and (held.owner, held.fence) == ("me", taken.fence)
            assert await aio.release(KEY, "me", taken.fence)
            assert await aio.holder(KEY) is None
        assert cut_short > 0
        await aio.aclose()

    asyncio.run(main())

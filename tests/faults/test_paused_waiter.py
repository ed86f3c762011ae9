"""A waiter paused (SIGSTOP) while queued for a key does not keep others from it."""

from __future__ import annotations

import threading
import time

import pytest

from faults.conftest import SharedStore
from faults.procs import HolderProcess
from processor_guard import LeaseStore, date_lock

KEY = "faults:2026-02-03"


def wait_until_queued(store: LeaseStore, seconds: float) -> None:
    """Let the waiter reach its busy loop (on Redis: until it stands in the queue)."""
    queue_key = getattr(store, "queue_key", None)
    client = getattr(store, "client", None)
    deadline = time.monotonic() + seconds
    if queue_key is None or client is None:
        time.sleep(seconds)  # no observable queue: give it time to find the key busy
        return
    while client.zcard(queue_key(KEY)) < 1:
        assert time.monotonic() < deadline, "the waiter never joined the queue"
        time.sleep(0.01)


@pytest.mark.slow
def test_paused_waiter_does_not_block_the_key(shared_store: SharedStore) -> None:
    store = shared_store.open()
    waiter = HolderProcess(["--url", shared_store.url, "--ttl", "5"], shared_store.child_env())
    try:
        with date_lock("faults", "2026-02-03", store=store, ttl=30, owner="first") as first:
            waiter.expect("starting")
            wait_until_queued(store, 1.0)
            waiter.pause()
            got: list[int] = []

            def third() -> None:
                with date_lock("faults", "2026-02-03", store=store, ttl=30, wait=20) as lease:
                    got.append(lease.fence)

            # A third owner queues behind the paused waiter; the release is handed to
            # the paused one first (it is still subscribed), and must not stay with it.
            taker = threading.Thread(target=third)
            taker.start()
            time.sleep(0.2)
        taker.join(30)
        assert not taker.is_alive(), "the key stayed with a paused waiter"
        assert got and got[0] > first.fence
        waiter.resume()
        acquired = waiter.expect("acquired")
        assert acquired["fence"] > got[0]
        waiter.send("go")
        result = waiter.expect("result")
        assert result["check"] == "passed" and result["exit"] == "clean", result
        assert waiter.finish() == 0, waiter.stderr
    finally:
        waiter.stop()
    assert store.holder(KEY) is None

"""The renewal keeper: failures are loud, loss comes by the deadline, forks never renew."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from faults.conftest import SharedStore
from processor_guard import Lease, LeaseHooks, LeaseLost, LeaseStore, MemoryStore, date_lock
from processor_guard.stores.base import AcquireResult, Holder, ReleaseWaiter


class BuggyRenewals(MemoryStore):
    """Renewals raise a non-library exception, as a client bug or a decode error would."""

    def __init__(self, fail_after: int = 0) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.renew_calls = 0

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        self.renew_calls += 1
        if self.renew_calls > self.fail_after:
            raise RuntimeError(f"renewal bug #{self.renew_calls}")
        return super().renew(key, owner, fence, ttl)


class Recording(LeaseStore):
    """Delegates to a store and appends ``pid op`` to a file for every call that writes."""

    def __init__(self, inner: LeaseStore, journal: Path) -> None:
        self.inner = inner
        self.journal = journal

    def _note(self, op: str) -> None:
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {op}\n".encode())
        finally:
            os.close(fd)

    def entries(self) -> list[tuple[int, str]]:
        if not self.journal.exists():
            return []
        lines = self.journal.read_text().split()
        return [(int(pid), op) for pid, op in zip(lines[::2], lines[1::2], strict=True)]

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        self._note("acquire")
        return self.inner.try_acquire(key, owner, ttl)

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        self._note("renew")
        return self.inner.renew(key, owner, fence, ttl)

    def release(self, key: str, owner: str, fence: int) -> bool:
        self._note("release")
        return self.inner.release(key, owner, fence)

    def holder(self, key: str) -> Holder | None:
        return self.inner.holder(key)

    def holders(self) -> list[Holder]:
        return self.inner.holders()

    def break_lease(self, key: str) -> int:
        self._note("break")
        return self.inner.break_lease(key)

    def release_waiter(self, key: str) -> ReleaseWaiter:
        return self.inner.release_waiter(key)


def test_renewal_exception_is_logged_and_lease_lost_by_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BuggyRenewals()
    caplog.set_level(logging.DEBUG, logger="processor_guard")
    lost: list[Lease] = []
    with (
        pytest.raises(LeaseLost) as err,
        date_lock("keeper", "2026-02-03", store=store, ttl=0.6, on_lost=lost.append) as lease,
    ):
        assert lease.wait_lost(5), "renewals kept failing but the lease was never lost"
        # Once lost, the body's own check refuses to go on.
        with pytest.raises(LeaseLost):
            lease.check()
    for _ in range(250):  # the keeper logs the loss and calls on_lost just after the event
        if lost:
            break
        threading.Event().wait(0.02)
    assert lost == [lease]
    assert store.renew_calls >= 2, "the keeper gave up retrying before the deadline"
    failures = [r for r in caplog.records if r.exc_info and "renewal bug" in str(r.exc_info[1])] + [
        r for r in caplog.records if "renewal bug" in r.getMessage()
    ]
    assert failures, "a renewal exception was swallowed without a log record"
    assert all(r.levelno >= logging.WARNING for r in failures)
    assert any(r.levelno == logging.ERROR for r in failures), "an unexpected bug must be ERROR"
    assert any(
        r.levelno == logging.ERROR
        and lease.key in r.getMessage()
        and str(lease.fence) in r.getMessage()
        for r in caplog.records
    ), "the loss itself must be logged at ERROR naming key and fence"
    assert "renewal bug" in err.value.reason


def test_renewals_that_recover_keep_the_lease() -> None:
    class Hiccup(MemoryStore):
        calls = 0

        def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("one-off failure")
            return super().renew(key, owner, fence, ttl)

    store = Hiccup()
    with date_lock("keeper", "2026-02-03", store=store, ttl=0.9) as lease:
        while store.calls < 3:
            assert not lease.wait_lost(0.05)
        lease.check()
    assert store.holder(lease.key) is None


def test_failing_hooks_and_callbacks_are_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    renewed = threading.Event()

    def bad_renewed(lease: Lease) -> None:
        renewed.set()
        raise ValueError("metrics backend down")

    def bad_on_lost(lease: Lease) -> None:
        raise ValueError("pager down")

    store = MemoryStore()
    caplog.set_level(logging.DEBUG, logger="processor_guard")
    hooks = LeaseHooks(renewed=bad_renewed)
    with (
        pytest.raises(LeaseLost),
        date_lock(
            "keeper", "2026-02-03", store=store, ttl=0.3, hooks=hooks, on_lost=bad_on_lost
        ) as lease,
    ):
        assert renewed.wait(3)
        lease.check()  # a failing hook does not cost the lease
        store.break_lease(lease.key)
        assert lease.wait_lost(3)

    def logged(text: str) -> bool:
        return any(
            r.levelno >= logging.ERROR and r.exc_info and text in str(r.exc_info[1])
            for r in list(caplog.records)
        )

    # The loss is signalled first and the callback runs right after, on the keeper.
    for _ in range(100):
        if logged("pager down"):
            break
        threading.Event().wait(0.02)
    assert logged("metrics backend down")
    assert logged("pager down")


def fork_available() -> bool:
    return hasattr(os, "fork")


@pytest.mark.skipif(not fork_available(), reason="needs os.fork")
def test_fork_child_never_renews_nor_releases_parent_lease(
    shared_store: SharedStore, tmp_path: Path
) -> None:
    if shared_store.kind == "firestore":
        pytest.skip("gRPC clients must not be used across fork")
    store = Recording(shared_store.open(), tmp_path / "journal")
    ttl = 1.0
    with date_lock("keeper", "2026-02-03", store=store, ttl=ttl, owner="parent") as lease:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what it saw through the pipe, then leave at once
            code = 0
            try:
                os.close(read_end)
                try:
                    lease.check()
                    code |= 1  # the child was allowed to act on its parent's lease
                except LeaseLost:
                    pass
                code |= 0 if not lease.active else 2
                lease._finish()  # what leaving the inherited block does
                threading.Event().wait(ttl * 1.5)  # long enough for several renewals
                os.write(write_end, bytes([code]))
            finally:
                os._exit(0)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == b"\x00", f"child report bits {report!r}: 1=check passed, 2=still active"
        lease.check()  # the parent still holds it, renewed past several ttls
        held = store.holder(lease.key)
        assert held is not None and (held.owner, held.fence) == ("parent", lease.fence)
    journal = store.entries()
    assert {p for p, _ in journal} == {os.getpid()}, f"the child touched the store: {journal}"
    assert [op for _, op in journal].count("renew") >= 2
    assert store.holder(lease.key) is None

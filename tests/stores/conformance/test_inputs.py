"""Every bad input gives its typed error and writes nothing; unreachable stores say so."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest

from fixtures.services import free_port
from processor_guard import (
    ConfigError,
    GuardError,
    LockBusy,
    StoreUnavailable,
    date_lock,
    guarded,
    open_store,
)
from processor_guard.stores import SUPPORTED_SCHEMES

from .conftest import StoreKit

BAD_DATES = [
    "2026-2-3",
    "20260203",
    "2026-02-30",
    "2026/02/03",
    "",
    dt.datetime(2026, 2, 3),
    None,
    20260203,
]
BAD_SCOPES = ["", "has space", "a/b", "a:b", "ünï", None, 7]
BAD_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"ttl": 0}, "ttl"),
    ({"ttl": -1}, "ttl"),
    ({"ttl": True}, "ttl"),
    ({"ttl": "30"}, "ttl"),
    ({"ttl": math.nan}, "ttl"),
    ({"ttl": math.inf}, "ttl"),
    ({"wait": -0.5}, "wait"),
    ({"wait": True}, "wait"),
    ({"wait": "5"}, "wait"),
    ({"wait": math.nan}, "wait"),
    ({"owner": ""}, "owner"),
    ({"owner": 42}, "owner"),
    ({"ttl": 10, "safety_margin": 10}, "safety_margin"),
    ({"ttl": 10, "safety_margin": -1}, "safety_margin"),
]


def _refused(kit: StoreKit, exc: pytest.ExceptionInfo[ConfigError], what: str) -> None:
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, GuardError)
    assert what in str(exc.value)
    assert kit.store.holders() == [], "a refused call wrote a lease"


@pytest.mark.parametrize("bad", BAD_DATES, ids=repr)
def test_bad_game_dates(kit: StoreKit, bad: object) -> None:
    with pytest.raises(ConfigError) as err, date_lock("pgs", bad, store=kit.store):  # type: ignore[arg-type]
        pytest.fail("body ran")
    _refused(kit, err, "game_date")


@pytest.mark.parametrize("bad", BAD_SCOPES, ids=repr)
def test_bad_scopes(kit: StoreKit, bad: object) -> None:
    with pytest.raises(ConfigError) as err, date_lock(bad, "2026-02-03", store=kit.store):  # type: ignore[arg-type]
        pytest.fail("body ran")
    _refused(kit, err, "scope")


@pytest.mark.parametrize(("kwargs", "what"), BAD_ARGS, ids=lambda v: repr(v))
def test_bad_lock_arguments(kit: StoreKit, kwargs: dict[str, Any], what: str) -> None:
    with (
        pytest.raises(ConfigError) as err,
        date_lock("pgs", "2026-02-03", store=kit.store, **kwargs),
    ):
        pytest.fail("body ran")
    _refused(kit, err, what)


def test_no_store_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCESSOR_GUARD_STORE", raising=False)
    with pytest.raises(ConfigError, match="PROCESSOR_GUARD_STORE"), date_lock("pgs", "2026-02-03"):
        pytest.fail("body ran")


def test_bad_store_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_GUARD_STORE", "etcd://127.0.0.1:2379")
    with pytest.raises(ConfigError, match="etcd"), date_lock("pgs", "2026-02-03"):
        pytest.fail("body ran")


def test_store_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match="store"), date_lock("pgs", "2026-02-03", store=42):  # type: ignore[arg-type]
        pytest.fail("body ran")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "127.0.0.1:6379",
        "redis:/127.0.0.1",
        "etcd://127.0.0.1:2379",
        "redis://",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:99999/0",
        "sqlite://",
        "sqlite:///",
        "firestore://",
        "firestore://project/a/b",
        None,
        42,
    ],
    ids=repr,
)
def test_open_store_rejects_bad_urls(url: Any) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(url)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert repr(url) in message, "the error must name the bad value"
    assert all(f"{scheme}://" in message for scheme in SUPPORTED_SCHEMES)


def test_open_store_builds_each_kind(tmp_path: Path) -> None:
    from processor_guard.stores import MemoryStore
    from processor_guard.stores.redis_store import RedisStore
    from processor_guard.stores.sqlite_store import SQLiteStore

    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("memory://a") is open_store("memory://a")
    assert isinstance(open_store(f"sqlite:///{tmp_path}/l.db"), SQLiteStore)
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/1"):
        store = open_store(url)  # lazy: no connection is made here
        assert isinstance(store, RedisStore)
        store.close()


@pytest.mark.parametrize("on_busy", ["ignore", "", None, True])
def test_guarded_rejects_bad_on_busy(on_busy: Any) -> None:
    with pytest.raises(ConfigError, match="on_busy"):
        guarded("pgs", store="memory://", on_busy=on_busy)


@pytest.mark.parametrize("scope", BAD_SCOPES[:5], ids=repr)
def test_guarded_rejects_bad_scope_when_decorating(scope: Any) -> None:
    with pytest.raises(ConfigError, match="scope"):
        guarded(scope, store="memory://")


def test_guarded_rejects_opts_that_are_not_a_dict() -> None:
    @guarded("pgs", store="memory://")
    def run(self: Any, opts: Any) -> bool:
        return True

    with pytest.raises(ConfigError, match="opts"):
        run(object(), ["2026-02-03"])


@pytest.mark.redis
def test_unreachable_redis_is_store_unavailable_never_busy_or_free() -> None:
    from processor_guard.stores.redis_store import RedisStore

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.try_acquire("pgs:2026-02-03", "me", 5)
        assert err.value.key == "pgs:2026-02-03"
        for call in (
            lambda: store.renew("pgs:2026-02-03", "me", 1, 5),
            lambda: store.release("pgs:2026-02-03", "me", 1),
            lambda: store.holder("pgs:2026-02-03"),
            store.holders,
            lambda: store.break_lease("pgs:2026-02-03"),
            lambda: store.release_waiter("pgs:2026-02-03"),
        ):
            with pytest.raises(StoreUnavailable):
                call()
        for wait in (0, 0.3):
            with (
                pytest.raises(StoreUnavailable) as err2,
                date_lock("pgs", "2026-02-03", store=store, wait=wait),
            ):
                pytest.fail("body ran without a lease")
            assert not isinstance(err2.value, LockBusy)
    finally:
        store.close()


def test_unusable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    from processor_guard.stores.sqlite_store import SQLiteStore

    store = SQLiteStore(tmp_path / "missing-dir" / "leases.db")
    with pytest.raises(StoreUnavailable) as err:
        store.try_acquire("pgs:2026-02-03", "me", 5)
    assert err.value.key == "pgs:2026-02-03"
    with pytest.raises(StoreUnavailable), date_lock("pgs", "2026-02-03", store=store):
        pytest.fail("body ran without a lease")
    with pytest.raises(StoreUnavailable):
        store.holders()

"""Bad store URLs and lease arguments: one-line ConfigErrors naming the argument, no
secret in any message, nothing written."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from processor_guard import ConfigError, MemoryStore, date_lock, open_store
from processor_guard.errors import MissingDependency


def _config_error(call: Any) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret@127.0.0.1/abc", "database"),
        ("redis://127.0.0.1/0?socket_timeout=abc", "socket_timeout"),
        ("redis://:s3cret@127.0.0.1:notaport/0", "port"),
        ("etcd://:s3cret@127.0.0.1:2379", "etcd"),
    ],
)
def test_bad_urls_are_config_errors_without_the_password(url: str, says: str) -> None:
    message = _config_error(lambda: open_store(url))
    assert says in message
    assert "s3cret" not in message


def test_an_upper_case_scheme_is_accepted() -> None:
    from processor_guard.stores.redis_store import RedisStore

    store = open_store("REDIS://127.0.0.1:6379/0")
    assert isinstance(store, RedisStore)
    store.close()


def test_sqlite_in_a_missing_directory_fails_when_opened(tmp_path: Path) -> None:
    message = _config_error(lambda: open_store(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    assert "missing/dir" in message and not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("url", "gone", "extra"),
    [
        ("firestore://project", "google.api_core,google.cloud.firestore", "firestore"),
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
    ],
)
def test_a_missing_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, gone: str, extra: str
) -> None:
    for name in list(sys.modules):
        if name.startswith(("processor_guard.stores.firestore", "processor_guard.stores.redis")):
            monkeypatch.delitem(sys.modules, name)
    for module in gone.split(","):
        # An import of it raises ImportError, even if an earlier test imported it
        # (`from parent import child` reads the parent's attribute first).
        monkeypatch.setitem(sys.modules, module, None)
        parent, _, child = module.rpartition(".")
        if parent and sys.modules.get(parent) is not None:
            monkeypatch.delattr(sys.modules[parent], child, raising=False)
    with pytest.raises(MissingDependency) as err:
        open_store(url)
    message = str(err.value)
    assert "\n" not in message
    assert f"pip install 'processor-guard[{extra}]'" in message


@pytest.mark.redis
def test_a_redis_database_the_server_lacks_is_a_config_error(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    store = open_store(f"redis://:s3cret@{host_port}/99")
    caplog.set_level(logging.DEBUG)
    try:
        message = _config_error(lambda: date_lock("pgs", "2026-02-03", store=store).__enter__())
        assert "database" in message and "s3cret" not in message
        assert all("s3cret" not in r.getMessage() for r in caplog.records)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"safety_margin": "x"}, "safety_margin"),
        ({"safety_margin": True}, "safety_margin"),
        ({"ttl": 1e300}, "ttl"),
        ({"owner": "me\nforged-line"}, "owner"),
        ({"owner": "x" * 5000}, "owner"),
    ],
)
def test_bad_lock_arguments_are_config_errors(kwargs: dict[str, Any], argument: str) -> None:
    store = MemoryStore()
    message = _config_error(
        lambda: date_lock("pgs", "2026-02-03", store=store, **kwargs).__enter__()
    )
    assert argument in message
    assert store.holders() == []


@pytest.mark.parametrize("scope", ["player_game_summary\n", "s" * 5000])
def test_scopes_are_validated_in_full_at_call_time(scope: str) -> None:
    store = MemoryStore()
    message = _config_error(lambda: date_lock(scope, "2026-02-03", store=store).__enter__())
    assert "scope" in message
    assert store.holders() == []


def test_a_store_refuses_keys_longer_than_it_can_hold() -> None:
    class Tiny(MemoryStore):
        max_key_bytes = 16

    store = Tiny()
    message = _config_error(lambda: date_lock("a" * 10, "2026-02-03", store=store).__enter__())
    assert "scope" in message and "16" in message
    assert store.holders() == []

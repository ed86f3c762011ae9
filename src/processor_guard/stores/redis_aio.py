"""Redis lease store on ``redis.asyncio``: RedisStore's scripts and keys, awaited.

The Lua scripts, their keys and arguments, and the reading of their replies all live
in ``redis_store``; this module only sends them through the asyncio client, and keeps
a waiter's queue place and pub/sub channel as RedisStore does (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.exceptions import NoScriptError

from ..errors import StoreUnavailable
from .aio import AsyncLeaseStore, AsyncReleaseWaiter
from .base import AcquireResult, Holder, check_key_bytes
from .redis_store import (
    ACQUIRE_SCRIPT,
    BREAK_SCRIPT,
    HANDOFF_AFTER,
    HANDOVER_OWNER,
    HOLDER_SCRIPT,
    LOST_POLL,
    MAX_UNANSWERED,
    REGISTER_SCRIPT,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    SOCKET_TIMEOUT,
    UNREGISTER_SCRIPT,
    acquire_call,
    acquire_outcome,
    as_store_unavailable,
    as_text,
    break_call,
    check_server_version,
    client_for,
    glob_escape,
    handoff_us,
    key_prefix,
    pack_evalsha,
    parse_holder,
    release_call,
    renew_call,
    unregister_call,
    waiter_channel,
)

__all__ = ["AsyncRedisStore"]

_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)


class _AsyncPubSubWaiter(AsyncReleaseWaiter):
    """One waiter in a key's queue, subscribed to its own channel (see RedisStore)."""

    def __init__(self, store: AsyncRedisStore, key: str) -> None:
        self._store = store
        self.key = key
        self.kp = key_prefix(store.prefix, key)
        self.id = uuid.uuid4().hex
        self.place = ""
        self.queued = False
        self.told = False
        self.lost = False
        self.window_ends = 0.0
        self._pubsub: Any = None

    async def open(self) -> None:
        """Subscribe (confirmed: a notice sent before would reach nobody), then queue."""
        self._pubsub = self._store.client.pubsub()
        try:
            await self._pubsub.subscribe(waiter_channel(self.kp, self.id))
            deadline = time.monotonic() + SOCKET_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise redis.TimeoutError("no SUBSCRIBE confirmation")
                msg = await self._pubsub.get_message(timeout=left)
                if msg is not None and msg.get("type") == "subscribe":
                    break
            with as_store_unavailable(self.key):
                place = await self._store.evalsha(REGISTER_SCRIPT, 1, self.kp + "queue", self.id)
        except _ERRORS as exc:
            await self._discard()
            raise StoreUnavailable(
                f"redis: cannot subscribe to releases of {self.key!r}: {exc}", key=self.key
            ) from exc
        except BaseException:
            await self._discard()
            raise
        self.place = as_text(place)
        self.window_ends = time.monotonic() + self._store.after_us / 1_000_000
        self.queued = True

    async def wait(self, timeout: float) -> bool:
        if self.lost and time.monotonic() < self.window_ends:
            timeout = min(timeout, LOST_POLL)  # see RedisStore's waiter
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = await self._pubsub.get_message(timeout=left)
            except _ERRORS:
                # The next acquisition attempt reports the outage as StoreUnavailable.
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return False
            if msg is not None and msg.get("type") == "message":
                self.told = True
                return True

    async def close(self) -> None:
        if self.queued:
            # It gave up (or failed): leave the queue, pass on anything reserved for it.
            self.queued = False
            with contextlib.suppress(*_ERRORS):
                await self._store.evalsha(
                    UNREGISTER_SCRIPT, *unregister_call(self.kp, self.id, self._store.after_us)
                )
        await self._discard()

    async def _discard(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_ERRORS):
                closing = getattr(pubsub, "aclose", None) or pubsub.reset
                await closing()


class AsyncRedisStore(AsyncLeaseStore):
    """RedisStore on ``redis.asyncio``: same scripts, fences, queue and hand-over, so
    sync and async holders of one key exclude each other. Bound to one event loop
    (that of its client's connections)."""

    scheme = "redis"
    max_key_bytes = 1024

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "processor_guard",
        handoff_after: float = HANDOFF_AFTER,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.after_us = handoff_us(handoff_after)
        # (key, owner) of an acquisition, (key, owner, fence) of a release -> the attempt
        # id of a call whose reply never came (lost, or the caller was cancelled).
        self._unanswered: dict[tuple[str, str] | tuple[str, str, int], str] = {}
        self._shas: dict[str, str] = {}
        pool = client.connection_pool
        direct = (
            type(client) is aioredis.Redis
            and getattr(client, "single_connection_client", False) is False
            and type(pool) is aioredis.ConnectionPool
        )
        self._pool: aioredis.ConnectionPool | None = pool if direct else None
        self._encoding = pool.connection_kwargs.get("encoding", "utf-8")
        self._read_timeout = pool.connection_kwargs.get("socket_timeout")
        self._idle: list[Any] = []
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()  # for aclose()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "processor_guard", handoff_after: float = HANDOFF_AFTER
    ) -> AsyncRedisStore:
        """A store on a new asyncio client for ``url`` (RedisStore's timeouts and retry)."""
        client = client_for(url, aioredis.Redis, Retry)
        return cls(client, prefix=prefix, handoff_after=handoff_after)

    async def evalsha(self, script: str, numkeys: int, *keys_and_args: str | int) -> Any:
        """EVALSHA of one of RedisStore's scripts, loading every script (and checking the
        server's version) when the server does not know it (new or restarted).

        As RedisStore's runner does, a plain pooled client's calls go out on connections
        of the store's own, packed here: redis-py's pool checkout, retry wrapper and
        general packer cost more than the round trip. A broken connection is dropped
        and the call retried once on a new one; a call cut short (a timeout, a
        cancellation) drops its connection, out of step with its replies."""
        if self._pool is None or script not in self._shas:
            return await self._evalsha_by_client(script, numkeys, keys_and_args)
        for attempt in (0, 1):
            conn = self._idle.pop() if self._idle else self._new_connection()
            try:
                try:
                    reply = await self._send(conn, script, numkeys, keys_and_args)
                except NoScriptError:
                    await self._load_scripts()
                    reply = await self._send(conn, script, numkeys, keys_and_args)
            except redis.ResponseError:
                self._idle.append(conn)  # the error reply was read: still in step
                raise
            except redis.ConnectionError:
                await conn.disconnect(nowait=True)
                if attempt:
                    raise
                continue
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise
            self._idle.append(conn)
            return reply
        raise AssertionError("unreachable")

    async def _send(self, conn: Any, script: str, numkeys: int, args: tuple[str | int, ...]) -> Any:
        packed = pack_evalsha(self._shas[script], numkeys, args, self._encoding)
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response(timeout=self._read_timeout)

    def _new_connection(self) -> Any:
        """A connection whose writes have no timeout: with one small command in flight
        the write never waits for the buffer, and redis-py would spend a task per write
        on the timeout. The read has the client's socket timeout (see ``_send``)."""
        assert self._pool is not None
        kwargs = {**self._pool.connection_kwargs, "socket_timeout": None}
        conn = self._pool.connection_class(**kwargs)
        self._conns.add(conn)
        return conn

    async def _evalsha_by_client(
        self, script: str, numkeys: int, keys_and_args: tuple[str | int, ...]
    ) -> Any:
        sha = self._shas.get(script)
        if sha is not None:
            try:
                return await self.client.evalsha(sha, numkeys, *keys_and_args)
            except NoScriptError:
                pass
        await self._load_scripts()
        return await self.client.evalsha(self._shas[script], numkeys, *keys_and_args)

    async def _load_scripts(self) -> None:
        server = await self.client.info("server")
        if isinstance(server, dict) and "redis_version" in server:
            check_server_version(f"redis_version:{server['redis_version']}")
        for text in _SCRIPTS:
            self._shas[text] = as_text(await self.client.script_load(text))

    def check_key(self, key: str) -> None:
        check_key_bytes(key, self.max_key_bytes, self.scheme)

    async def try_acquire(
        self, key: str, owner: str, ttl: float, *, waiter: AsyncReleaseWaiter | None = None
    ) -> AcquireResult:
        queued = waiter if isinstance(waiter, _AsyncPubSubWaiter) and waiter.queued else None
        wid, place = (queued.id, queued.place) if queued is not None else ("", "")
        attempt = self._unanswered.pop((key, owner), None) or os.urandom(8).hex()
        call = acquire_call(key_prefix(self.prefix, key), owner, ttl, wid, place, attempt)
        try:
            with as_store_unavailable(key):
                reply = await self.evalsha(ACQUIRE_SCRIPT, *call)
        except (StoreUnavailable, asyncio.CancelledError):
            # The script may have run: the same call sends this attempt id again.
            if len(self._unanswered) < MAX_UNANSWERED:
                self._unanswered[(key, owner)] = attempt
            raise
        result = acquire_outcome(key, reply)
        if queued is not None:
            if result.acquired:
                queued.queued = False  # the script took it out of the queue
            elif queued.told:
                queued.lost = True
        return result

    async def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        with as_store_unavailable(key):
            call = renew_call(key_prefix(self.prefix, key), owner, fence, ttl)
            return bool(await self.evalsha(RENEW_SCRIPT, *call) == 1)

    async def release(self, key: str, owner: str, fence: int) -> bool:
        kp = key_prefix(self.prefix, key)
        attempt = self._unanswered.pop((key, owner, fence), None) or os.urandom(8).hex()
        try:
            with as_store_unavailable(key):
                call = release_call(kp, owner, fence, self.after_us, attempt)
                return bool(await self.evalsha(RELEASE_SCRIPT, *call) == 1)
        except (StoreUnavailable, asyncio.CancelledError):
            # Sent again with this attempt id, a release that ran answers 1 again.
            if len(self._unanswered) < MAX_UNANSWERED:
                self._unanswered[(key, owner, fence)] = attempt
            raise

    async def holder(self, key: str) -> Holder | None:
        with as_store_unavailable(key):
            reply = await self.evalsha(HOLDER_SCRIPT, 1, key_prefix(self.prefix, key) + "lease")
        if reply is None:
            return None
        found = parse_holder(key, reply)
        return None if found.owner == HANDOVER_OWNER and found.fence == 0 else found

    async def holders(self) -> list[Holder]:
        pattern = glob_escape(f"{self.prefix}:{{") + "*}:lease"
        head = len(self.prefix) + 2
        with as_store_unavailable(None):
            names = {as_text(n) async for n in self.client.scan_iter(match=pattern, count=500)}
        found = [await self.holder(name[head : -len("}:lease")]) for name in sorted(names)]
        return [h for h in found if h is not None]

    async def break_lease(self, key: str) -> int:
        with as_store_unavailable(key):
            call = break_call(key_prefix(self.prefix, key), self.after_us)
            return int(await self.evalsha(BREAK_SCRIPT, *call))

    async def release_waiter(self, key: str) -> AsyncReleaseWaiter:
        """Join ``key``'s queue of waiters; the release wakes the longest-waiting one."""
        waiter = _AsyncPubSubWaiter(self, key)
        await waiter.open()
        return waiter

    async def aclose(self) -> None:
        conns = list(self._conns)
        self._idle.clear()
        self._conns.clear()
        for conn in conns:
            with contextlib.suppress(*_ERRORS):
                await conn.disconnect()
        closing = getattr(self.client, "aclose", None) or self.client.close
        await closing()

    def __repr__(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return f"<AsyncRedisStore {where} prefix={self.prefix!r}>"


_SCRIPTS = (
    ACQUIRE_SCRIPT,
    RENEW_SCRIPT,
    RELEASE_SCRIPT,
    BREAK_SCRIPT,
    HOLDER_SCRIPT,
    REGISTER_SCRIPT,
    UNREGISTER_SCRIPT,
)

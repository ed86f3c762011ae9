"""Redis lease store: one Lua script per operation, server-side expiry, pub/sub hand-off."""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..errors import StoreUnavailable
from .base import AcquireResult, Holder, LeaseStore, ReleaseWaiter

__all__ = ["RedisStore"]

# Every script below keeps a key's lease and fence counter under one hash tag
# (``prefix:{key}:lease`` / ``prefix:{key}:fence``) so they share a cluster slot.
# A lease's value is ``"<fence>:<owner>"``: (owner, fence) identifies a lease, so a
# holder whose lease expired and was re-taken can never renew or release the new one.

# Shared by ACQUIRE and BREAK: the next fence is max(counter + 1, server TIME in µs),
# the fence_seed rule, so fences keep rising even when Redis lost the counter (restart
# without data, eviction) or came back from an old snapshot. Lua numbers are doubles:
# exact up to 2**53 (year 2255 in µs); '%.0f' writes them back without an exponent.
_NEXT_FENCE = """
local function next_fence(counter_key)
    local t = redis.call('TIME')
    local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local stored = tonumber(redis.call('GET', counter_key) or '0')
    if stored and stored + 1 > fence then
        fence = stored + 1
    end
    redis.call('SET', counter_key, string.format('%.0f', fence))
    return fence
end
"""

# KEYS[1] lease key, KEYS[2] fence counter (never expires)
# ARGV[1] owner, ARGV[2] ttl in milliseconds
# Returns the new fence (integer) when acquired, or {"<fence>:<owner>", pttl_ms} of
# the live holder when busy. Expiry is the server's PX, never a client clock.
ACQUIRE_SCRIPT = (
    _NEXT_FENCE
    + """
local held = redis.call('GET', KEYS[1])
if held then
    return {held, redis.call('PTTL', KEYS[1])}
end
local fence = next_fence(KEYS[2])
redis.call('SET', KEYS[1], string.format('%.0f', fence) .. ':' .. ARGV[1], 'PX', ARGV[2])
return fence
"""
)

# KEYS[1] lease key
# ARGV[1] "<fence>:<owner>" of the caller's lease, ARGV[2] ttl in milliseconds
# Returns 1 when the lease was still the caller's and now lasts ttl from now, else 0.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# KEYS[1] lease key
# ARGV[1] "<fence>:<owner>" of the caller's lease, ARGV[2] release channel
# Returns 1 when the caller's lease was deleted (and waiters notified), else 0.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[2], ARGV[1])
    return 1
end
return 0
"""

# KEYS[1] lease key, KEYS[2] fence counter
# ARGV[1] release channel
# Deletes any lease on the key, raises its fence counter and notifies waiters;
# returns the raised fence, above every fence the old holder could carry.
BREAK_SCRIPT = (
    _NEXT_FENCE
    + """
redis.call('DEL', KEYS[1])
local fence = next_fence(KEYS[2])
redis.call('PUBLISH', ARGV[1], 'broken')
return fence
"""
)

# KEYS[1] lease key
# Returns {"<fence>:<owner>", pttl_ms} of the live holder, or nil when free.
HOLDER_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held then
    return {held, redis.call('PTTL', KEYS[1])}
end
return false
"""

# Redis-py's default retries up to 10 times with backoff; a lease store must report an
# unreachable server within seconds, so one immediate retry (a stale pooled
# connection after a server restart) is all it gets.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
_ERRORS = (redis.RedisError, OSError)

# This process's id, refreshed in a forked child: a child must not share the parent's
# sockets, and os.getpid() is a system call we would otherwise pay on every command.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _holder(key: str, reply: Any) -> Holder:
    """A Holder from a script's ``{"<fence>:<owner>", pttl_ms}`` reply."""
    fence, _, owner = _text(reply[0]).partition(":")
    pttl = int(reply[1])
    return Holder(key, owner, int(fence), pttl / 1000 if pttl >= 0 else None)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _PubSubWaiter(ReleaseWaiter):
    """Subscribed to one key's release channel; ``wait`` returns on the first notice."""

    def __init__(self, client: redis.Redis, channel: str, key: str) -> None:
        self._key = key
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            self._pubsub.subscribe(channel)
            # Wait for the confirmation: a release published before the server has
            # processed SUBSCRIBE would otherwise be missed.
            deadline = time.monotonic() + SOCKET_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise redis.TimeoutError("no SUBSCRIBE confirmation")
                msg = self._pubsub.get_message(timeout=left)
                if msg is not None and msg.get("type") == "subscribe":
                    break
        except _ERRORS as exc:
            self._pubsub.close()
            raise StoreUnavailable(
                f"redis: cannot subscribe to releases of {key!r}: {exc}", key=key
            ) from exc

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self._pubsub.get_message(timeout=left)
            except _ERRORS:
                # The next acquisition attempt reports the outage as StoreUnavailable.
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
            if msg is not None and msg.get("type") == "message":
                return True

    def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            self._pubsub.close()


class RedisStore(LeaseStore):
    """Leases in Redis: atomic Lua scripts, fences that never go backwards, and
    release notices over pub/sub so waiters take over as soon as a lease is freed."""

    scheme = "redis"

    def __init__(self, client: redis.Redis, *, prefix: str = "processor_guard") -> None:
        self._client = client
        self._prefix = prefix
        # Own connections only for a plain pooled client; a cluster or single-connection
        # client goes through its own execute path.
        self._direct = (
            type(client) is redis.Redis
            and getattr(client, "connection", None) is None
            and getattr(client.connection_pool, "cache", None) is None
        )
        self._idle: list[Connection] = []
        self._idle_pid = _pid
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()  # for close()
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._break = client.register_script(BREAK_SCRIPT)
        self._holder = client.register_script(HOLDER_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "processor_guard") -> RedisStore:
        """A store on a new client for ``url``, with short timeouts so outages surface fast."""
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix=prefix)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this store talks through."""
        return self._client

    def lease_key(self, key: str) -> str:
        """The Redis key holding ``key``'s lease."""
        return f"{self._prefix}:{{{key}}}:lease"

    def fence_key(self, key: str) -> str:
        """The Redis key holding ``key``'s fence counter."""
        return f"{self._prefix}:{{{key}}}:fence"

    def channel(self, key: str) -> str:
        """The pub/sub channel where releases of ``key`` are announced."""
        return f"{self._prefix}:{{{key}}}:released"

    def _checkout(self) -> Connection:
        """An idle connection of this store (a new one when none is idle)."""
        if self._idle_pid != _pid:  # forked: never touch the parent's sockets
            self._idle, self._idle_pid = [], _pid
        try:
            return self._idle.pop()  # list.pop/append are atomic: no lock needed
        except IndexError:
            pool = self._client.connection_pool
            conn: Connection = pool.connection_class(**pool.connection_kwargs)
            self._conns.add(conn)
            return conn

    def _load_scripts(self, conn: Connection) -> None:
        """Load every script in one round trip (a new or restarted server knows none)."""
        scripts = (self._acquire, self._renew, self._release, self._break, self._holder)
        conn.send_packed_command(  # type: ignore[no-untyped-call]
            [c for s in scripts for c in conn.pack_command("SCRIPT", "LOAD", s.script)]  # type: ignore[no-untyped-call]
        )
        for s in scripts:
            s.sha = _text(conn.read_response())

    def _eval(self, script: Script, numkeys: int, *keys_and_args: str | int) -> Any:
        """EVALSHA, loading the script once if the server does not know it (e.g. restarted).

        Runs on the store's own small set of connections: checking one out of
        redis-py's pool and back costs more than the round trip itself. A broken
        connection is dropped and the call retried once on a new one (a server restart
        leaves every idle connection dead), as redis-py's own single retry does.
        """
        if not self._direct:
            try:
                return self._client.evalsha(script.sha, numkeys, *keys_and_args)
            except NoScriptError:
                script.sha = self._client.script_load(script.script)
                return self._client.evalsha(script.sha, numkeys, *keys_and_args)
        for attempt in (0, 1):
            conn = self._checkout()
            try:
                try:
                    conn.send_command("EVALSHA", script.sha, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]
                    reply = conn.read_response()
                except NoScriptError:
                    self._load_scripts(conn)
                    conn.send_command("EVALSHA", script.sha, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]
                    reply = conn.read_response()
            except redis.ResponseError:
                self._idle.append(conn)  # the error reply was read: still in step
                raise
            except redis.ConnectionError:
                conn.disconnect()  # type: ignore[no-untyped-call]
                if attempt:
                    raise
                continue
            except BaseException:
                # A timeout or an interrupt mid-reply leaves the connection out of step.
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            self._idle.append(conn)
            return reply
        raise AssertionError("unreachable")

    def _unavailable(self, key: str | None, exc: BaseException) -> StoreUnavailable:
        what = f"key {key!r}" if key is not None else "holders"
        return StoreUnavailable(f"redis unreachable for {what}: {exc}", key=key)

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        prefix = f"{self._prefix}:{{{key}}}:"
        try:
            reply = self._eval(
                self._acquire, 2, prefix + "lease", prefix + "fence", owner, int(ttl * 1000) or 1
            )
        except _ERRORS as exc:
            raise self._unavailable(key, exc) from exc
        if type(reply) is int:
            return AcquireResult(True, fence=reply)
        return AcquireResult(False, holder=_holder(key, reply))

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        try:
            reply = self._eval(
                self._renew, 1, self.lease_key(key), f"{fence}:{owner}", int(ttl * 1000) or 1
            )
        except _ERRORS as exc:
            raise self._unavailable(key, exc) from exc
        return bool(reply == 1)

    def release(self, key: str, owner: str, fence: int) -> bool:
        prefix = f"{self._prefix}:{{{key}}}:"
        try:
            reply = self._eval(
                self._release, 1, prefix + "lease", f"{fence}:{owner}", prefix + "released"
            )
        except _ERRORS as exc:
            raise self._unavailable(key, exc) from exc
        return bool(reply == 1)

    def holder(self, key: str) -> Holder | None:
        try:
            reply = self._eval(self._holder, 1, self.lease_key(key))
        except _ERRORS as exc:
            raise self._unavailable(key, exc) from exc
        return None if reply is None else _holder(key, reply)

    def holders(self) -> list[Holder]:
        pattern = _glob_escape(f"{self._prefix}:{{") + "*}:lease"
        head = len(self._prefix) + 2
        found: list[Holder] = []
        try:
            names = sorted({_text(n) for n in self._client.scan_iter(match=pattern, count=500)})
            for name in names:
                h = self.holder(name[head : -len("}:lease")])
                if h is not None:
                    found.append(h)
        except _ERRORS as exc:
            raise self._unavailable(None, exc) from exc
        return found

    def break_lease(self, key: str) -> int:
        try:
            reply = self._eval(
                self._break, 2, self.lease_key(key), self.fence_key(key), self.channel(key)
            )
        except _ERRORS as exc:
            raise self._unavailable(key, exc) from exc
        return int(reply)

    def release_waiter(self, key: str) -> ReleaseWaiter:
        return _PubSubWaiter(self._client, self.channel(key), key)

    def close(self) -> None:
        conns = list(self._conns)
        self._idle.clear()
        self._conns.clear()
        for conn in conns:
            with contextlib.suppress(*_ERRORS):
                conn.disconnect()  # type: ignore[no-untyped-call]
        self._client.close()

    def __repr__(self) -> str:
        kwargs = self._client.get_connection_kwargs()
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return f"<RedisStore {where} prefix={self._prefix!r}>"

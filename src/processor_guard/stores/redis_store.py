"""Redis lease store: one Lua script per operation, server-side expiry, pub/sub hand-off."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import MovedError, NoScriptError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ..errors import ConfigError, StoreUnavailable
from .base import AcquireResult, Holder, LeaseStore, ReleaseWaiter, RenewRequest

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["RedisStore", "ReplicatedRedisStore"]

# Every script below keeps a key's lease, fence counter, waiter queue and woken mark
# under one hash tag (``prefix:{key}:lease`` / ``:fence`` / ``:queue`` / ``:woken``) so
# they share a cluster slot. A lease's value is ``"<fence>:<owner>"``: (owner, fence)
# identifies a lease, so a holder whose lease expired and was re-taken can never renew
# or release the new one. While a lease is handed over to the next waiter the value is
# ``"~<waiter id>"``. The woken mark names the waiter that was told the key is free and
# has not acquired since (it expires in case that waiter died).

# Shared by ACQUIRE and BREAK: the next fence is max(counter + 1, server TIME in µs),
# the fence_seed rule, so fences keep rising even when Redis lost the counter (restart
# without data, eviction) or came back from an old snapshot. Lua numbers are doubles:
# exact up to 2**53 (year 2255 in µs); '%.0f' writes them back without an exponent.
# Since server time alone keeps fences rising, a counter idle for FENCE_KEEP_MS (30
# days) expires: one small key per key taken in the last 30 days, not one forever. The
# counter only matters if the server clock went back by more than that since.
# Scripts that call TIME and then write need effect replication: Redis >= 5 (the
# default from 5 on; checked once per server by _ScriptRunner).
FENCE_KEEP_MS = 30 * 86_400_000
_NEXT_FENCE = f"""
local function next_fence(counter_key)
    local t = redis.call('TIME')
    local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local stored = tonumber(redis.call('GET', counter_key) or '0')
    if stored and stored + 1 > fence then
        fence = stored + 1
    end
    redis.call('SET', counter_key, string.format('%.0f', fence), 'PX', {FENCE_KEEP_MS})
    return fence
end
"""

# Shared by RELEASE, BREAK and UNREGISTER, on a key just freed: bounded barging, as Go's
# sync.Mutex does. Only the longest-waiting live waiter (the queue head) is told, not a
# thundering herd. While it has waited less than ``after_us`` (server TIME against its
# place: the server time it joined the queue) the key stays free and the head stays in
# line: the releaser or a newcomer may take the key first, which saves a cross-process
# wake-up per acquisition. A head already told is not told again while its mark lasts:
# either its attempt comes after this release and sees it, or it found the key re-taken
# by a barger and polls (LOST_POLL) instead of a futile wake-up per release. Once the
# head has waited longer, it leaves the queue and the key is reserved for it for a
# moment: nobody can barge in ahead of it. Waiters that vanished without unregistering
# are skipped (PUBLISH reaches nobody).
_HAND_OVER = """
local function hand_over(lease_key, queue_key, woken_key, channel_prefix, reserve_ms, after_us)
    while true do
        local head = redis.call('ZRANGE', queue_key, 0, 0, 'WITHSCORES')
        if #head == 0 then
            return
        end
        local t = redis.call('TIME')
        local waited = tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(head[2])
        if waited < tonumber(after_us) then
            if redis.call('GET', woken_key) == head[1] then
                return
            end
            if redis.call('PUBLISH', channel_prefix .. head[1], 'released') > 0 then
                redis.call('SET', woken_key, head[1], 'PX', reserve_ms)
                return
            end
            redis.call('ZREM', queue_key, head[1])
        else
            redis.call('ZREM', queue_key, head[1])
            if redis.call('PUBLISH', channel_prefix .. head[1], 'released') > 0 then
                redis.call('SET', lease_key, '~' .. head[1], 'PX', reserve_ms)
                return
            end
        end
    end
end
"""

# KEYS[1] lease key, KEYS[2] fence counter, KEYS[3] waiter queue, KEYS[4] woken mark,
# KEYS[5] attempt mark
# ARGV[1] owner, ARGV[2] ttl in milliseconds,
# ARGV[3] the caller's waiter id ('' when not waiting), ARGV[4] its place in the queue,
# ARGV[5] the call's attempt id
# Returns the new fence (integer) when acquired, or {value, pttl_ms} of the live holder
# (or hand-over) when busy; a busy waiter keeps its place in the queue. Expiry is the
# server's PX, never a client clock. The attempt mark names the call that took the
# lease: the same call sent again (its reply was lost) gets its fence back, with the
# expiry restarted, instead of finding itself "busy".
ACQUIRE_SCRIPT = (
    _NEXT_FENCE
    + """
local held = redis.call('GET', KEYS[1])
if held and redis.call('GET', KEYS[5]) == ARGV[5] then
    local fence = string.match(held, '^(%d+):')
    if fence and held == fence .. ':' .. ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return tonumber(fence)
    end
end
if held and (ARGV[3] == '' or held ~= '~' .. ARGV[3]) then
    if ARGV[3] ~= '' then
        redis.call('ZADD', KEYS[3], 'NX', ARGV[4], ARGV[3])
    end
    return {held, redis.call('PTTL', KEYS[1])}
end
if ARGV[3] ~= '' then
    redis.call('ZREM', KEYS[3], ARGV[3])
    if redis.call('GET', KEYS[4]) == ARGV[3] then
        redis.call('DEL', KEYS[4])
    end
end
local fence = next_fence(KEYS[2])
redis.call('SET', KEYS[1], string.format('%.0f', fence) .. ':' .. ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[2])
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

# KEYS[1] lease key, KEYS[2] waiter queue, KEYS[3] woken mark, KEYS[4] attempt mark
# ARGV[1] "<fence>:<owner>" of the caller's lease, ARGV[2] waiter channel prefix,
# ARGV[3] hand-over reservation in milliseconds, ARGV[4] barging window in microseconds,
# ARGV[5] the call's attempt id
# Returns 1 when the caller's lease was deleted (and the next waiter told), else 0; the
# same call sent again after its reply was lost finds its attempt mark and returns 1.
RELEASE_SCRIPT = (
    _HAND_OVER
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    if redis.call('GET', KEYS[4]) == ARGV[5] then
        return 1
    end
    return 0
end
redis.call('DEL', KEYS[1])
-- A re-sent call comes within seconds (one retry, socket timeouts of seconds).
redis.call('SET', KEYS[4], ARGV[5], 'PX', 60000)
hand_over(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS[1] lease key, KEYS[2] fence counter, KEYS[3] waiter queue, KEYS[4] woken mark
# ARGV[1] waiter channel prefix, ARGV[2] hand-over reservation in milliseconds,
# ARGV[3] barging window in microseconds
# Deletes any lease on the key, raises its fence counter and tells the next waiter;
# returns the raised fence, above every fence the old holder could carry.
BREAK_SCRIPT = (
    _NEXT_FENCE
    + _HAND_OVER
    + """
redis.call('DEL', KEYS[1])
local fence = next_fence(KEYS[2])
hand_over(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
return fence
"""
)

# KEYS[1] waiter queue
# ARGV[1] waiter id
# Queues the waiter (keeping an earlier place); returns its place (server time in µs).
REGISTER_SCRIPT = """
local t = redis.call('TIME')
local place = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('ZADD', KEYS[1], 'NX', place, ARGV[1])
-- Entries of waiters that vanished are dropped when reached; a queue nobody joins
-- again goes away by itself (live waiters re-join on every busy attempt).
redis.call('PEXPIRE', KEYS[1], 86400000)
return redis.call('ZSCORE', KEYS[1], ARGV[1])
"""

# KEYS[1] lease key, KEYS[2] waiter queue, KEYS[3] woken mark
# ARGV[1] waiter id, ARGV[2] waiter channel prefix, ARGV[3] reservation in milliseconds,
# ARGV[4] barging window in microseconds
# A waiter gives up: leaves the queue, and passes on a hand-over reserved for it, or the
# free key it was told about and will not try.
UNREGISTER_SCRIPT = (
    _HAND_OVER
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local held = redis.call('GET', KEYS[1])
local woken = redis.call('GET', KEYS[3]) == ARGV[1]
if woken then
    redis.call('DEL', KEYS[3])
end
if held == '~' .. ARGV[1] or (woken and not held) then
    redis.call('DEL', KEYS[1])
    hand_over(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4])
end
return 1
"""
)

# KEYS[1] lease key
# Returns {value, pttl_ms} of the key, or nil when free.
HOLDER_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held then
    return {held, redis.call('PTTL', KEYS[1])}
end
return false
"""

# A woken waiter answers within milliseconds; if it has died meanwhile, the key is
# free again after this long.
HANDOVER_MS = 250
HANDOVER_OWNER = "(handing over to the next waiter)"
# How often a waiter that was told and lost the key to a barger retries on its own,
# until its barging window ends.
LOST_POLL = 0.01
# RedisStore's default barging window (seconds): while the longest waiter has waited
# less than this, a release leaves the key to whoever comes first (often the releaser,
# which saves a cross-process wake-up per acquisition); past it, the release hands the
# key over to that waiter. It only matters under contention: a release still tells the
# head at once. 8 processes looping on one key (2 cores, benchmarks/bench_locks.py):
# strict FIFO (0) ~1,500/s, 5 ms ~1,860/s, 20 ms ~2,010/s, 100 ms ~2,390/s (as fast as
# unbounded barging, about redis-py Lock's rate) with every process within 0.7x-1.3x
# of the mean; no waiter waits longer than this plus the hand-overs to those ahead.
HANDOFF_AFTER = 0.1

# Redis-py's default retries up to 10 times with backoff; a lease store must report an
# unreachable server within seconds, so one immediate retry (a stale pooled
# connection after a server restart) is all it gets.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
CLIENT_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": SOCKET_TIMEOUT,
}


def client_for(url: str, client_class: Any, retry_class: Any) -> Any:
    """A (sync or asyncio) client for ``url`` with the stores' short timeouts, so outages
    surface fast, and redis-py's single retry on a broken connection."""
    return client_class.from_url(url, **CLIENT_TIMEOUTS, retry=retry_class(NoBackoff(), 1))


# A cluster client's "no node reachable" is not a RedisError.
_ERRORS = (redis.RedisError, RedisClusterException, OSError)
# A single node's (or a Sentinel-managed primary's) client, or a cluster's.
AnyRedis = redis.Redis | RedisCluster
# Oldest server the scripts run correctly on (see _NEXT_FENCE).
MIN_REDIS = (5, 0)
# Longest ttl (seconds) a lease may ask for: PX stays far inside Redis's range.
MAX_TTL = 1e9
# Acquisitions with unknown outcome remembered for the owner's next call (bounded).
MAX_UNANSWERED = 1024
# Subscribed connections kept for the next waiter on the same key.
MAX_IDLE_WAITERS = 8

# This process's id, refreshed in a forked child: a child must not share the parent's
# sockets, and os.getpid() is a system call we would otherwise pay on every command.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def ttl_ms(ttl: float) -> int:
    """A lease ttl as Redis PX: rounded up, plus 1 ms for the server clock's 1 ms step
    (a key set late in a millisecond would otherwise expire up to 1 ms early), so the
    server never expires a lease before its holder's local deadline."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < MAX_TTL:
        raise ConfigError(f"ttl must be a number of seconds in (0, {MAX_TTL:.0e}), got {ttl!r}")
    return math.ceil(ttl * 1000) + 1


def check_server_version(info: str) -> None:
    """ConfigError unless ``INFO server`` text shows Redis >= 5 (MIN_REDIS)."""
    found = re.search(r"^redis_version:(\d+)\.(\d+)", info, re.MULTILINE)
    if found is None:
        return  # a Redis-compatible server that does not say: let its scripts decide
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_REDIS:
        raise ConfigError(
            f"Redis {version[0]}.{version[1]} is not supported: processor_guard needs "
            f"Redis {MIN_REDIS[0]}.{MIN_REDIS[1]} or later (its scripts read the server "
            "time before writing, which needs effect replication)"
        )


def handoff_us(handoff_after: object) -> int:
    """A store's barging window (seconds, see HANDOFF_AFTER) in µs, as the scripts take it."""
    if not isinstance(handoff_after, (int, float)) or not 0 <= handoff_after < 3600:
        raise ConfigError(f"handoff_after must be seconds in [0, 3600), got {handoff_after!r}")
    return round(handoff_after * 1_000_000)


def as_text(value: bytes | str) -> str:
    """A reply as str (clients without decode_responses answer bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def parse_holder(key: str, reply: Any) -> Holder:
    """A Holder from a script's ``{value, pttl_ms}`` reply (fence 0 for a hand-over)."""
    value = as_text(reply[0])
    pttl = int(reply[1])
    remaining = pttl / 1000 if pttl >= 0 else None
    if value.startswith("~"):
        return Holder(key, HANDOVER_OWNER, 0, remaining)
    fence, _, owner = value.partition(":")
    return Holder(key, owner, int(fence), remaining)


class StoreErrorsRaised:
    """The context manager ``as_store_unavailable`` returns (a class: a generator-based
    one costs a microsecond per store call on the fast path)."""

    __slots__ = ("key",)

    def __init__(self, key: str | None) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is None or not isinstance(exc, _ERRORS):
            return
        if "DB index" in str(exc):
            raise ConfigError(f"the store URL's redis database does not exist: {exc}") from None
        what = f"key {self.key!r}" if self.key is not None else "holders"
        raise StoreUnavailable(f"redis unreachable for {what}: {exc}", key=self.key) from exc


def as_store_unavailable(key: str | None) -> StoreErrorsRaised:
    """Raise the block's Redis and socket errors as StoreUnavailable for ``key`` (None when
    listing holders): the one place RedisStore maps them. The message holds the key and
    redis-py's error text (host and port at most), never the URL and its password."""
    return StoreErrorsRaised(key)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# The EVALSHA numkeys, keys and arguments of each script, shared by RedisStore and the
# asyncio store (redis_aio): ``kp`` is ``key_prefix(prefix, key)``.
Call: TypeAlias = "tuple[int, Unpack[tuple[str | int, ...]]]"


def key_prefix(prefix: str, key: str) -> str:
    """The common start of every Redis key (and channel) of one lease key."""
    return f"{prefix}:{{{key}}}:"


def acquire_call(kp: str, owner: str, ttl: float, waiter_id: str, place: str, attempt: str) -> Call:
    """numkeys, keys and arguments of ACQUIRE_SCRIPT."""
    keys = (kp + "lease", kp + "fence", kp + "queue", kp + "woken", kp + "attempt")
    return (5, *keys, owner, ttl_ms(ttl), waiter_id, place, attempt)


def renew_call(kp: str, owner: str, fence: int, ttl: float) -> Call:
    """numkeys, keys and arguments of RENEW_SCRIPT."""
    return (1, kp + "lease", f"{fence}:{owner}", ttl_ms(ttl))


def release_call(kp: str, owner: str, fence: int, after_us: int, attempt: str) -> Call:
    """numkeys, keys and arguments of RELEASE_SCRIPT."""
    keys = (kp + "lease", kp + "queue", kp + "woken", kp + "attempt")
    return (4, *keys, f"{fence}:{owner}", kp + "released:", HANDOVER_MS, after_us, attempt)


def break_call(kp: str, after_us: int) -> Call:
    """numkeys, keys and arguments of BREAK_SCRIPT."""
    keys = (kp + "lease", kp + "fence", kp + "queue", kp + "woken")
    return (4, *keys, kp + "released:", HANDOVER_MS, after_us)


def unregister_call(kp: str, waiter_id: str, after_us: int) -> Call:
    """numkeys, keys and arguments of UNREGISTER_SCRIPT."""
    keys = (kp + "lease", kp + "queue", kp + "woken")
    return (3, *keys, waiter_id, kp + "released:", HANDOVER_MS, after_us)


def acquire_outcome(key: str, reply: Any) -> AcquireResult:
    """ACQUIRE_SCRIPT's reply: the fence when taken, else the holder."""
    if type(reply) is int:
        return AcquireResult(True, fence=reply)
    return AcquireResult(False, holder=parse_holder(key, reply))


def waiter_channel(kp: str, waiter_id: str) -> str:
    """The channel a queued waiter listens on for its release notice."""
    return f"{kp}released:{waiter_id}"


class _PubSubWaiter(ReleaseWaiter):
    """One waiter in a key's queue, subscribed to its own channel; ``wait`` returns when
    the release hands the key over to it.

    Closing hands it back to its store, still subscribed, so the next waiter on the
    key skips the connect and SUBSCRIBE round trips.
    """

    def __init__(self, store: RedisStore, key: str) -> None:
        self._store = store
        self.key = key
        self.id = uuid.uuid4().hex
        self.place = ""
        self.queued = False  # in the key's queue (joined and not yet served or left)
        self.told = False  # a release told it the key was free
        self.lost = False  # told, but a barger took the key first: no new notice comes
        # (monotonic) When its barging window ends: from then on a release hands the
        # key over to it with a notice, so it need not poll.
        self.window_ends = 0.0
        self.registry: dict[str, _PubSubWaiter] | None = None  # its thread's waiters
        self._pid = _pid
        self._pubsub = store.client.pubsub()  # type: ignore[no-untyped-call]
        try:
            self._pubsub.subscribe(waiter_channel(key_prefix(store.prefix, key), self.id))
            # Wait for the confirmation: a hand-over published before the server has
            # processed SUBSCRIBE would reach nobody.
            deadline = time.monotonic() + SOCKET_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise redis.TimeoutError("no SUBSCRIBE confirmation")
                msg = self._pubsub.get_message(timeout=left)
                if msg is not None and msg.get("type") == "subscribe":
                    break
        except _ERRORS as exc:
            self.discard()
            raise StoreUnavailable(
                f"redis: cannot subscribe to releases of {key!r}: {exc}", key=key
            ) from exc

    def drain(self) -> bool:
        """Drop notices that arrived while idle; False when the subscription broke."""
        try:
            while self._pubsub.get_message(timeout=0.0) is not None:
                pass
        except _ERRORS:
            return False
        return True

    def wait(self, timeout: float) -> bool:
        if self.lost and time.monotonic() < self.window_ends:
            # Releases within the barging window no longer tell it (its woken mark
            # stays): poll, so a key left free is not missed for long. After the window
            # the next release reserves the key for it and says so.
            timeout = min(timeout, LOST_POLL)
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
                self.told = True
                return True

    def close(self) -> None:
        if self._pid == _pid:
            self._store._end_wait(self)

    def discard(self) -> None:
        """Unsubscribe and drop the connection for good."""
        if self._pid == _pid:
            with contextlib.suppress(*_ERRORS):
                self._pubsub.close()


# The RESP head of an EVALSHA (``*N``, the command, the sha and numkeys) by (sha,
# numkeys, argument count): a handful of scripts, so a handful of entries.
_evalsha_heads: dict[tuple[str, int, int], str] = {}


def pack_evalsha(sha: str, numkeys: int, args: tuple[str | int, ...], encoding: str) -> bytes:
    """EVALSHA in RESP, packed here: redis-py's general packer costs microseconds."""
    head = _evalsha_heads.get((sha, numkeys, len(args)))
    if head is None:
        nargs = str(numkeys)
        head = f"*{len(args) + 3}\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n${len(nargs)}\r\n{nargs}\r\n"
        _evalsha_heads[(sha, numkeys, len(args))] = head
    if encoding in ("utf-8", "utf8"):
        # ASCII arguments (keys, owners, numbers: the usual case) have as many bytes as
        # characters: pack as text and encode once.
        parts = [head]
        for arg in args:
            text = arg if type(arg) is str else str(arg)
            if not text.isascii():
                break
            parts.append(f"${len(text)}\r\n{text}\r\n")
        else:
            return "".join(parts).encode()
    out = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (len(args) + 3, sha.encode())]
    out.append(b"$%d\r\n%d\r\n" % (len(str(numkeys)), numkeys))
    for arg in args:
        data = arg.encode(encoding) if type(arg) is str else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _ScriptRunner:
    """Runs a store's Lua scripts by EVALSHA, on a small set of connections of its own.

    Checking a connection out of redis-py's pool and back costs more than the round trip
    itself. Only a plain pooled client gets own connections; a cluster, Sentinel or
    single-connection client goes through its own execute path.
    """

    def __init__(self, client: AnyRedis, scripts: tuple[Script, ...]) -> None:
        self._client = client
        self._scripts = scripts
        pool = client.connection_pool if type(client) is redis.Redis else None
        self._direct = (
            pool is not None
            # A Sentinel-managed connection finds the primary in connect(), which the
            # runner's send path bypasses: it would talk to the default localhost:6379.
            and not isinstance(pool, SentinelConnectionPool)
            and getattr(client, "connection", None) is None
            and getattr(pool, "cache", None) is None
        )
        self._pool = pool if self._direct else None
        self._idle: list[Connection] = []
        self._encoding = (
            self._pool.connection_kwargs.get("encoding", "utf-8")
            if self._pool is not None
            else "utf-8"
        )
        self._idle_pid = _pid
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()  # for close()

    def _checkout(self) -> Connection:
        """An idle connection of the runner (a new one when none is idle)."""
        if self._idle_pid != _pid:  # forked: never touch the parent's sockets
            self._idle, self._idle_pid = [], _pid
        try:
            return self._idle.pop()  # list.pop/append are atomic: no lock needed
        except IndexError:
            pool = self._pool
            assert pool is not None  # only the direct path checks connections out
            conn: Connection = pool.connection_class(**pool.connection_kwargs)
            self._conns.add(conn)
            return conn

    def _load_scripts(self, conn: Connection) -> None:
        """Check the server's version and load every script, in one round trip (a new
        or restarted server knows none)."""
        scripts = self._scripts
        conn.send_packed_command(  # type: ignore[no-untyped-call]
            [
                *conn.pack_command("INFO", "server"),  # type: ignore[no-untyped-call]
                *[c for s in scripts for c in conn.pack_command("SCRIPT", "LOAD", s.script)],  # type: ignore[no-untyped-call]
            ]
        )
        info = conn.read_response()
        for s in scripts:
            s.sha = as_text(conn.read_response())
        check_server_version(as_text(info))

    def _pack(self, script: Script, numkeys: int, args: tuple[str | int, ...]) -> bytes:
        return pack_evalsha(script.sha, numkeys, args, self._encoding)

    def evalsha(self, script: Script, numkeys: int, *keys_and_args: str | int) -> Any:
        """EVALSHA, loading the script once if the server does not know it (e.g. restarted).

        A broken connection is dropped and the call retried once on a new one (a server
        restart leaves every idle connection dead), as redis-py's own single retry does.
        """
        if not self._direct:
            try:
                return self._client.evalsha(script.sha, numkeys, *keys_and_args)
            except NoScriptError:
                server = self._client.info("server")
                if isinstance(server, dict) and "redis_version" in server:
                    check_server_version(f"redis_version:{server['redis_version']}")
                script.sha = self._client.script_load(script.script)
                return self._client.evalsha(script.sha, numkeys, *keys_and_args)
        for attempt in (0, 1):
            conn = self._checkout()
            try:
                try:
                    conn.send_packed_command([self._pack(script, numkeys, keys_and_args)], False)  # type: ignore[no-untyped-call]
                    reply = conn.read_response()
                except NoScriptError:
                    self._load_scripts(conn)
                    conn.send_packed_command([self._pack(script, numkeys, keys_and_args)], False)  # type: ignore[no-untyped-call]
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

    def evalsha_many(
        self, script: Script, numkeys: int, calls: list[tuple[str | int, ...]]
    ) -> list[Any]:
        """EVALSHA once per argument list, pipelined in one round trip; each reply, or
        the ResponseError of that call, in order. For idempotent scripts only: after a
        broken connection or an unknown script the whole batch is sent again."""
        if not self._direct:
            return self._pipelined(script, numkeys, calls)
        for attempt in (0, 1, 2):
            conn = self._checkout()
            try:
                conn.send_packed_command([self._pack(script, numkeys, a) for a in calls], False)  # type: ignore[no-untyped-call]
                replies: list[Any] = []
                for _ in calls:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as err:
                        replies.append(err)
                if any(isinstance(r, NoScriptError) for r in replies) and attempt < 2:
                    self._load_scripts(conn)
                    self._idle.append(conn)
                    continue
            except redis.ConnectionError:
                conn.disconnect()  # type: ignore[no-untyped-call]
                if attempt:
                    raise
                continue
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            self._idle.append(conn)
            return replies
        raise AssertionError("unreachable")

    def _pipelined(
        self, script: Script, numkeys: int, calls: list[tuple[str | int, ...]]
    ) -> list[Any]:
        """The batch through the client's own pipeline (cluster, Sentinel, ...)."""
        for attempt in (0, 1):
            pipe = self._client.pipeline(transaction=False)
            for args in calls:
                pipe.evalsha(script.sha, numkeys, *args)
            replies = list(pipe.execute(raise_on_error=False))
            if attempt or not any(isinstance(r, NoScriptError) for r in replies):
                return replies
            script.sha = self._client.script_load(script.script)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Disconnect every connection the runner opened."""
        conns = list(self._conns)
        self._idle.clear()
        self._conns.clear()
        for conn in conns:
            with contextlib.suppress(*_ERRORS):
                conn.disconnect()  # type: ignore[no-untyped-call]


class RedisStore(LeaseStore):
    """Leases in Redis: atomic Lua scripts, fences that never go backwards, expiry on the
    server's clock, and bounded barging: a release wakes the longest-waiting waiter over
    pub/sub; once that waiter has waited ``handoff_after`` seconds (server time), the
    release reserves the key for it instead of leaving it to whoever comes first.

    ``handoff_after=0`` serves waiters strictly first come, first served (every release
    is a hand-over); larger values trade fairness for throughput under contention.
    """

    scheme = "redis"

    def __init__(
        self,
        client: AnyRedis,
        *,
        prefix: str = "processor_guard",
        handoff_after: float = HANDOFF_AFTER,
    ) -> None:
        self._client = client
        # redis-py refuses EVALSHA in a cluster pipeline: a cluster renews one by one.
        self.batch_renewal = not isinstance(client, RedisCluster)
        self._prefix = prefix
        self._after_us = handoff_us(handoff_after)
        self._waiting = threading.local()  # key -> this thread's _PubSubWaiter
        self._idle_waiters: list[_PubSubWaiter] = []
        self._waiters_pid = _pid
        self._waiters_lock = threading.Lock()
        self._closed = False
        # (key, owner) -> attempt id of an acquisition whose reply never came.
        self._unanswered: dict[tuple[str, str], str] = {}
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._break = client.register_script(BREAK_SCRIPT)
        self._holder = client.register_script(HOLDER_SCRIPT)
        self._register = client.register_script(REGISTER_SCRIPT)
        self._unregister = client.register_script(UNREGISTER_SCRIPT)
        self._runner = _ScriptRunner(
            client,
            (
                self._acquire,
                self._renew,
                self._release,
                self._break,
                self._holder,
                self._register,
                self._unregister,
            ),
        )

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "processor_guard", handoff_after: float = HANDOFF_AFTER
    ) -> RedisStore:
        """A store on a new client for ``url`` (see ``client_for``)."""
        return cls(client_for(url, redis.Redis, Retry), prefix=prefix, handoff_after=handoff_after)

    @property
    def prefix(self) -> str:
        """The start of every Redis key this store writes."""
        return self._prefix

    @property
    def client(self) -> AnyRedis:
        """The redis-py client this store talks through."""
        return self._client

    def lease_key(self, key: str) -> str:
        """The Redis key holding ``key``'s lease."""
        return f"{self._prefix}:{{{key}}}:lease"

    def fence_key(self, key: str) -> str:
        """The Redis key holding ``key``'s fence counter."""
        return f"{self._prefix}:{{{key}}}:fence"

    def queue_key(self, key: str) -> str:
        """The Redis key holding ``key``'s queue of waiters."""
        return f"{self._prefix}:{{{key}}}:queue"

    def woken_key(self, key: str) -> str:
        """The Redis key naming the waiter told that ``key`` is free (not yet tried)."""
        return f"{self._prefix}:{{{key}}}:woken"

    def channel(self, key: str) -> str:
        """The pub/sub channel where releases of ``key`` are announced."""
        return f"{self._prefix}:{{{key}}}:released"

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        kp = key_prefix(self._prefix, key)
        # A thread that is waiting for this key (see release_waiter) acquires as that
        # waiter: it may take a hand-over reserved for it and keeps its queue place.
        waiting: dict[str, _PubSubWaiter] | None = getattr(self._waiting, "by_key", None)
        waiter = waiting.get(key) if waiting else None
        wid, place = (waiter.id, waiter.place) if waiter is not None else ("", "")
        # An earlier call of this owner whose outcome is unknown may hold the key: this
        # call sends the same attempt id, so it gets that lease instead of "busy".
        attempt = self._unanswered.pop((key, owner), None) or os.urandom(8).hex()
        try:
            with as_store_unavailable(key):
                reply = self._runner.evalsha(
                    self._acquire, *acquire_call(kp, owner, ttl, wid, place, attempt)
                )
        except StoreUnavailable:
            if len(self._unanswered) < MAX_UNANSWERED:
                self._unanswered[(key, owner)] = attempt
            raise
        result = acquire_outcome(key, reply)
        if result.acquired:
            if waiter is not None and waiting is not None:
                waiter.queued = False  # the script took it out of the queue
                del waiting[key]
        elif waiter is not None and waiter.told:
            waiter.lost = True
        return result

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        # Sent again after a lost reply, the script finds the same value and answers 1.
        with as_store_unavailable(key):
            reply = self._runner.evalsha(
                self._renew, *renew_call(key_prefix(self._prefix, key), owner, fence, ttl)
            )
        return bool(reply == 1)

    def renew_many(self, leases: Sequence[RenewRequest]) -> list[bool | Exception]:
        """Every renewal pipelined in one round trip (one EVALSHA per lease; the keys
        may live on different cluster nodes, so no single script holds them all)."""
        if not leases:
            return []
        if not self.batch_renewal:
            return LeaseStore.renew_many(self, leases)
        calls: list[tuple[str | int, ...]] = [
            renew_call(key_prefix(self._prefix, key), owner, fence, ttl)[1:]
            for key, owner, fence, ttl in leases
        ]
        with as_store_unavailable(leases[0][0]):
            replies = self._runner.evalsha_many(self._renew, 1, calls)
        answers: list[bool | Exception] = []
        for (key, _, _, _), reply in zip(leases, replies, strict=True):
            if isinstance(reply, Exception):
                answers.append(
                    StoreUnavailable(f"redis renewal of {key!r} failed: {reply}", key=key)
                )
            else:
                answers.append(reply == 1)
        return answers

    def release(self, key: str, owner: str, fence: int) -> bool:
        kp = key_prefix(self._prefix, key)
        with as_store_unavailable(key):
            reply = self._runner.evalsha(
                self._release, *release_call(kp, owner, fence, self._after_us, os.urandom(8).hex())
            )
        return bool(reply == 1)

    def holder(self, key: str) -> Holder | None:
        with as_store_unavailable(key):
            reply = self._runner.evalsha(self._holder, 1, self.lease_key(key))
        if reply is None:
            return None
        found = parse_holder(key, reply)
        return None if found.owner == HANDOVER_OWNER and found.fence == 0 else found

    def holders(self) -> list[Holder]:
        pattern = glob_escape(f"{self._prefix}:{{") + "*}:lease"
        head = len(self._prefix) + 2
        found: list[Holder] = []
        with as_store_unavailable(None):
            names = sorted({as_text(n) for n in self._client.scan_iter(match=pattern, count=500)})
        for name in names:
            h = self.holder(name[head : -len("}:lease")])
            if h is not None:
                found.append(h)
        return found

    def break_lease(self, key: str) -> int:
        kp = key_prefix(self._prefix, key)
        with as_store_unavailable(key):
            reply = self._runner.evalsha(self._break, *break_call(kp, self._after_us))
        return int(reply)

    def release_waiter(self, key: str) -> ReleaseWaiter:
        """Join ``key``'s queue of waiters; the release wakes the longest-waiting one."""
        with self._waiters_lock:
            if self._waiters_pid != _pid:
                self._idle_waiters, self._waiters_pid = [], _pid
            found = next((w for w in self._idle_waiters if w.key == key), None)
            if found is not None:
                self._idle_waiters.remove(found)
        if found is not None and not found.drain():
            found.discard()
            found = None
        waiter = found or _PubSubWaiter(self, key)
        try:
            with as_store_unavailable(key):
                place = self._runner.evalsha(self._register, 1, self.queue_key(key), waiter.id)
        except StoreUnavailable:
            waiter.discard()
            raise
        waiter.place = as_text(place)
        waiter.window_ends = time.monotonic() + self._after_us / 1_000_000
        waiter.queued = True
        waiter.told = waiter.lost = False
        by_key: dict[str, _PubSubWaiter] | None = getattr(self._waiting, "by_key", None)
        if by_key is None:
            by_key = self._waiting.by_key = {}
        by_key[key] = waiter
        waiter.registry = by_key
        return waiter

    def _end_wait(self, waiter: _PubSubWaiter) -> None:
        """A waiter is done: leave the queue unless it acquired, then keep it for reuse."""
        registry = waiter.registry
        if registry is not None and registry.get(waiter.key) is waiter:
            del registry[waiter.key]
        if waiter.queued:
            # It gave up (or failed): leave the queue, pass on anything reserved for it.
            waiter.queued = False
            try:
                self._runner.evalsha(
                    self._unregister,
                    *unregister_call(
                        key_prefix(self._prefix, waiter.key), waiter.id, self._after_us
                    ),
                )
            except _ERRORS:
                waiter.discard()  # it expires from the queue: no notice reaches it
                return
        with self._waiters_lock:
            if self._waiters_pid == _pid and not self._closed:
                self._idle_waiters.append(waiter)
                if len(self._idle_waiters) <= MAX_IDLE_WAITERS:
                    return
                waiter = self._idle_waiters.pop(0)  # the least recently used
        waiter.discard()

    def close(self) -> None:
        with self._waiters_lock:
            waiters, self._idle_waiters = self._idle_waiters, []
            self._closed = True
        for waiter in waiters:
            waiter.discard()
        self._runner.close()
        self._client.close()

    def __repr__(self) -> str:
        kwargs = self._client.get_connection_kwargs()
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return f"<RedisStore {where} prefix={self._prefix!r}>"


# WAIT is refused inside scripts and counts only the writes of the connection it is
# sent on, so the replicated store sends it right behind a renewal, on the connection of
# the node that serves the key: replication is one ordered stream, so replicas that
# acknowledged the renewal also have the acquisition before it.
class ReplicatedRedisStore(RedisStore):
    """A RedisStore whose acquisitions and renewals count only once ``replicas``
    replicas of the key's primary acknowledged them (Redis WAIT).

    A failover to an acknowledging replica then keeps the lease: the second instance
    stays busy and the holder's next renewal succeeds on the promoted server. When
    fewer replicas answer within ``replica_timeout`` seconds, an acquisition is
    released again and a renewal fails, both with StoreUnavailable (a renewal is then
    retried until the lease's deadline). WAIT does not make Redis strongly consistent:
    a replica may still be promoted before it applied an acknowledged write; fences
    stay the guarantee.
    """

    def __init__(
        self,
        client: AnyRedis,
        *,
        replicas: int,
        replica_timeout: float = 0.5,
        prefix: str = "processor_guard",
        handoff_after: float = HANDOFF_AFTER,
    ) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"replicas must be an int >= 1, got {replicas!r}")
        if not isinstance(replica_timeout, (int, float)) or not 0 < replica_timeout <= 60:
            raise ConfigError(
                f"replica_timeout must be seconds in (0, 60], got {replica_timeout!r}"
            )
        super().__init__(client, prefix=prefix, handoff_after=handoff_after)
        self.batch_renewal = False
        self.replicas = replicas
        self.replica_timeout = replica_timeout

    def _node_client(self, key: str) -> redis.Redis:
        """The client of the node serving ``key`` (the client itself off a cluster)."""
        client = self.client
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(self.lease_key(key))  # type: ignore[no-untyped-call]
            return client.get_redis_connection(node)
        return client

    def _renew_and_wait(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        """Renew, then WAIT on the same connection; True when renewed (and replicated)."""
        timeout_ms = max(1, round(self.replica_timeout * 1000))
        with as_store_unavailable(key):
            for attempt in (0, 1):
                node = self._node_client(key)
                pipe = node.pipeline(transaction=False)
                pipe.evalsha(
                    self._renew.sha,
                    1,
                    self.lease_key(key),
                    f"{fence}:{owner}",
                    int(ttl * 1000) or 1,
                )
                pipe.execute_command("WAIT", self.replicas, timeout_ms)  # type: ignore[no-untyped-call]
                try:
                    renewed, acknowledged = pipe.execute()
                except NoScriptError:
                    if attempt:
                        raise
                    self._renew.sha = as_text(node.script_load(RENEW_SCRIPT))
                    continue
                except (MovedError, redis.ConnectionError):
                    if attempt or not isinstance(self.client, RedisCluster):
                        raise
                    # The slot moved (a failover): one keyed command through the cluster
                    # client refreshes its slot map, then the renewal goes to the new node.
                    self.holder(key)
                    continue
                break
        if renewed != 1:
            return False
        if int(acknowledged) < self.replicas:
            raise StoreUnavailable(
                f"lease {key!r}: {acknowledged} of {self.replicas} replica(s) acknowledged "
                f"within {self.replica_timeout}s",
                key=key,
            )
        return True

    def try_acquire(self, key: str, owner: str, ttl: float) -> AcquireResult:
        result = super().try_acquire(key, owner, ttl)
        if not result.acquired or result.fence is None:
            return result
        try:
            replicated = self._renew_and_wait(key, owner, result.fence, ttl)
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):
                self.release(key, owner, result.fence)
            raise
        if not replicated:  # gone within a round trip: broken or expired already
            raise StoreUnavailable(f"lease {key!r} vanished right after it was taken", key=key)
        return result

    def renew(self, key: str, owner: str, fence: int, ttl: float) -> bool:
        return self._renew_and_wait(key, owner, fence, ttl)

    def renew_many(self, leases: Sequence[RenewRequest]) -> list[bool | Exception]:
        # Each renewal waits for its replicas: one by one, as the base class does.
        return LeaseStore.renew_many(self, leases)

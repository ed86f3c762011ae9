"""The primary holding a lease's slot is killed mid-hold and a replica is promoted.

What the README's guarantee table says for Redis with replicas, shown on a real Redis
Cluster and a real Sentinel set: replication is asynchronous, so the promoted replica
may not have the lease; a second instance then acquires at once, the first loses its
lease at its next renewal, its write is refused by the fence (StaleFence), and fences
keep rising across the promotion.

Left to chance, the lease is missing on the promoted replica only when the primary
dies within the replication delay (microseconds on loopback). Each round makes it
certain instead: the replica is paused and its replication link dropped just before
the first instance acquires, so the primary's write of the lease never reaches it.
Both are real faults (a stalled replica, a dropped link); nothing is faked.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from faults.test_paused_holder import TABLE, create_table, table_points
from fixtures.redis_topologies import RedisClusterSet, RedisNode, RedisSentinelSet
from fixtures.services import LOOPBACK
from processor_guard import (
    LeaseHooks,
    LeaseLost,
    LeaseStore,
    StaleFence,
    StoreUnavailable,
    date_lock,
    open_store,
    register_hooks,
    safe_merge,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# Per topology; 2 x 10 = 20 failovers in a full run (about 5 s each on 2 cores).
ROUNDS = int(os.environ.get("PROCESSOR_GUARD_FAILOVER_ROUNDS", "10"))
SCOPE, DAY = "failover", "2026-02-03"
KEY = f"{SCOPE}:{DAY}"
# Long enough that the first holder is usually still inside its lease when the replica
# has been promoted (a failover takes ~2.5 s here), so it loses the lease to a renewal
# that finds it gone rather than to its own deadline.
TTL = 12.0


@dataclass
class Topology:
    """How the failover test finds, kills and brings back the primary of the lease."""

    url: str
    primary_of_lease: Callable[[], RedisNode]
    replica_of: Callable[[RedisNode], RedisNode]
    bring_back: Callable[[RedisNode], None]  # restart a killed primary as a replica
    settle: Callable[[], None]  # wait until every primary has a synced replica


@dataclass
class Tally:
    failovers: int = 0
    stale_refused: int = 0
    stale_landed: int = 0
    lost_at_renewal: int = 0
    lost_at_deadline: int = 0
    first_still_active_when_second_acquired: int = 0
    seconds_to_second_acquire: list[float] = field(default_factory=list)
    seconds_to_bring_back: list[float] = field(default_factory=list)
    fences: list[int] = field(default_factory=list)


def cluster_topology(cluster: RedisClusterSet) -> Topology:
    slot = key_slot(f"processor_guard:{{{KEY}}}:lease".encode())

    def bring_back(node: RedisNode) -> None:
        cluster.restart(node)  # its nodes.conf makes it a replica of the promoted one
        cluster.wait_stable()

    return Topology(
        cluster.url,
        lambda: cluster.primary_of_slot(slot),
        lambda primary: cluster.replicas_of(primary)[0],
        bring_back,
        cluster.wait_stable,
    )


def sentinel_topology(sentinels: RedisSentinelSet) -> Topology:
    def bring_back(node: RedisNode) -> None:
        sentinels.restart_as_replica(node)
        sentinels.wait_stable()

    return Topology(
        sentinels.url,
        sentinels.primary,
        lambda primary: next(s for s in sentinels.servers if s is not primary),
        bring_back,
        sentinels.wait_stable,
    )


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Topology:
    if request.param == "cluster":
        return cluster_topology(request.getfixturevalue("redis_cluster"))
    return sentinel_topology(request.getfixturevalue("redis_sentinels"))


def write(db: Path, points: int, fence: int | None = None) -> None:
    """Three rows of the date; under the current lease unless ``fence`` is given."""
    rows = [{"game_date": DAY, "player_lookup": f"player{i}", "points": points} for i in range(3)]
    options = {
        "keys": ("game_date", "player_lookup"),
        "partition_field": "game_date",
        "order_by": None,
    }
    if fence is None:
        safe_merge(str(db), TABLE, rows, **options)  # type: ignore[arg-type]
    else:
        # An empty context (no current lease): only the fence stands between this write
        # and the table, as for a holder whose last check passed before the failover.
        contextvars.Context().run(safe_merge, str(db), TABLE, rows, fence=fence, **options)


def cut_off_replica(primary: RedisNode, replica: RedisNode) -> None:
    """Pause the replica and drop its link: what the primary writes next stays there."""
    replica.pause()
    client = redis.Redis(host=LOOPBACK, port=primary.port, socket_timeout=5)
    try:
        assert int(client.client_kill_filter(_type="replica")) >= 1
    finally:
        client.close()


def acquire_after_failover(store: LeaseStore, deadline: float) -> tuple[int, float]:
    """Take the lease as the second instance once the store answers again."""
    started = time.monotonic()
    while True:
        try:
            result = store.try_acquire(KEY, "second", TTL)
        except StoreUnavailable:
            assert time.monotonic() < deadline, "no primary was promoted in time"
            time.sleep(0.05)
            continue
        assert result.acquired, f"busy after the failover: {result.holder}"
        assert result.fence is not None
        return result.fence, time.monotonic() - started


def one_failover(
    topology: Topology, first: LeaseStore, second: LeaseStore, db: Path, n: int, tally: Tally
) -> None:
    primary = topology.primary_of_lease()
    replica = topology.replica_of(primary)
    cut_off_replica(primary, replica)
    try:
        with (
            pytest.raises(LeaseLost),
            date_lock(SCOPE, DAY, store=first, ttl=TTL, owner="first") as lease,
        ):
            write(db, 1000 + n)  # lands: the first instance holds the date
            primary.kill()
            replica.resume()
            fence, took = acquire_after_failover(second, time.monotonic() + 60)
            if lease.active:
                tally.first_still_active_when_second_acquired += 1
            tally.seconds_to_second_acquire.append(round(took, 2))
            assert fence > lease.fence, (fence, lease.fence)  # rising across the promotion
            tally.fences += [lease.fence, fence]
            write(db, 2000 + n, fence=fence)  # the second instance's write
            try:
                write(db, -n, fence=lease.fence)  # the first instance, late
            except StaleFence:
                tally.stale_refused += 1
            if table_points(db) != [(f"player{i}", 2000 + n) for i in range(3)]:
                tally.stale_landed += 1
            # Its next renewal that reaches the promoted replica finds the lease gone; if
            # the promotion outlasts the lease (a Sentinel election can be retried), its
            # own deadline ends it first.
            assert lease.wait_lost(TTL), "the first instance never noticed the loss"
            if "no longer holds" in lease.lost_reason:
                tally.lost_at_renewal += 1
            else:
                assert "deadline passed" in lease.lost_reason, lease.lost_reason
                tally.lost_at_deadline += 1
        assert second.release(KEY, "second", fence)
    finally:
        replica.resume()
    tally.failovers += 1
    started = time.monotonic()
    topology.bring_back(primary)
    tally.seconds_to_bring_back.append(round(time.monotonic() - started, 2))


def test_failover_loses_the_lease_and_the_fence_refuses_the_old_holder(
    topology: Topology, tmp_path: Path
) -> None:
    db = tmp_path / "warehouse.duckdb"
    create_table(db)
    first, second = open_store(topology.url), open_store(topology.url)
    tally = Tally()
    try:
        for n in range(ROUNDS):
            one_failover(topology, first, second, db, n, tally)
    finally:
        first.close()
        second.close()
    print(f"\nfailover on {topology.url.split(':')[0]}: {tally}")
    assert tally.failovers == ROUNDS
    assert tally.lost_at_renewal + tally.lost_at_deadline == ROUNDS
    assert tally.stale_refused == ROUNDS and tally.stale_landed == 0
    assert tally.fences == sorted(tally.fences) and len(set(tally.fences)) == len(tally.fences)


# --------------------------------------------------------------------------- WAIT
WAIT_ROUNDS = 2
WAIT_TIMEOUT = 1.0
# With WAIT, a renewal succeeds only once the promoted primary has a replica again:
# the lease must outlast the promotion (up to ~9 s when a Sentinel election is retried)
# plus bringing the old primary back as that replica.
WAIT_TTL = 20.0


def test_wait_for_a_replica_closes_the_window(topology: Topology, tmp_path: Path) -> None:
    """``wait_replicas=1``: an acquisition counts only once a replica has it. The cut-off
    replica of the test above now makes the acquisition fail (and leave the key free)
    instead of handing out a lease a failover loses; a lease that was acknowledged
    survives the failover: the second instance stays busy, the holder renews on the
    promoted replica (once a replica is back) and writes with its fence."""
    db = tmp_path / "warehouse.duckdb"
    create_table(db)
    waiting = open_store(f"{topology.url}?wait_replicas=1&wait_timeout={WAIT_TIMEOUT}")
    second = open_store(topology.url)
    renewals: list[int] = []
    unregister = register_hooks(LeaseHooks(renewed=lambda lease: renewals.append(lease.fence)))
    refused = dual_holders = kept = 0
    fences: list[int] = []
    try:
        for n in range(WAIT_ROUNDS):
            primary = topology.primary_of_lease()
            replica = topology.replica_of(primary)
            cut_off_replica(primary, replica)
            try:
                with (
                    pytest.raises(StoreUnavailable, match="0 of 1 replica"),
                    date_lock(SCOPE, DAY, store=waiting, ttl=WAIT_TTL, owner="first"),
                ):
                    pytest.fail("acquired although no replica acknowledged the lease")
                refused += 1
                assert second.holder(KEY) is None  # released again, nobody holds it
            finally:
                replica.resume()
            topology.settle()  # the replica reconnects and catches up

            primary = topology.primary_of_lease()
            with date_lock(SCOPE, DAY, store=waiting, ttl=WAIT_TTL, owner="first") as lease:
                fences.append(lease.fence)
                primary.kill()
                deadline = time.monotonic() + 60
                while True:  # the promoted replica answers: the lease is still there
                    try:
                        busy = second.try_acquire(KEY, "second", WAIT_TTL)
                        break
                    except StoreUnavailable:
                        assert time.monotonic() < deadline, "no primary was promoted in time"
                        time.sleep(0.05)
                if busy.acquired:
                    dual_holders += 1
                assert not busy.acquired and busy.holder is not None
                assert (busy.holder.owner, busy.holder.fence) == ("first", lease.fence)
                renewed_before = len(renewals)
                topology.bring_back(primary)  # WAIT needs a replica of the new primary
                while len(renewals) == renewed_before:
                    assert lease.active, lease.lost_reason
                    time.sleep(0.05)
                write(db, 3000 + n)  # under the lease: lands with its (still valid) fence
                kept += 1
            assert table_points(db) == [(f"player{i}", 3000 + n) for i in range(3)]
    finally:
        unregister()
        waiting.close()
        second.close()
    print(
        f"\nWAIT on {topology.url.split(':')[0]}: refused={refused} kept={kept} "
        f"dual_holders={dual_holders}"
    )
    assert (refused, kept, dual_holders) == (WAIT_ROUNDS, WAIT_ROUNDS, 0)
    assert fences == sorted(fences)

"""The ``guarded`` decorator over a date range, on every store."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from processor_guard import ConfigError, LockBusy, current_lease, guarded
from processor_guard.leases import Lease, LeaseHooks

from .conftest import StoreKit

DAYS = ["2026-02-01", "2026-02-02", "2026-02-03"]


class Events:
    """Lease events in order, as (event, key)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def hooks(self) -> LeaseHooks:
        return LeaseHooks(
            acquired=lambda lease: self.seen.append(("acquired", lease.key)),
            released=lambda lease: self.seen.append(("released", lease.key)),
        )

    def keys(self, event: str) -> list[str]:
        return [k for e, k in self.seen if e == event]


def _processor(kit: StoreKit, events: Events, **options: Any) -> Any:
    class PlayerGameSummary:
        table = "player_game_summary"

        def __init__(self) -> None:
            self.runs: list[dict[str, Any]] = []
            self.held: list[str] = []
            self.innermost: Lease | None = None

        @guarded(lambda self: self.table, store=kit.store, ttl=10, hooks=events.hooks(), **options)
        def run(self, opts: dict[str, Any]) -> bool:
            self.runs.append(opts)
            self.held = sorted(h.key for h in kit.store.holders())
            self.innermost = current_lease()
            if opts.get("fail"):
                raise RuntimeError("transform failed")
            return bool(opts.get("result", True))

    return PlayerGameSummary()


def _keys(days: list[str]) -> list[str]:
    return [f"player_game_summary:{d}" for d in days]


def test_locks_every_date_in_sorted_order_and_releases_in_reverse(kit: StoreKit) -> None:
    events = Events()
    proc = _processor(kit, events)
    assert proc.run({"start_date": DAYS[0], "end_date": DAYS[-1]}) is True
    assert proc.held == _keys(DAYS), "run() did not hold every date of the range"
    assert proc.innermost is not None and proc.innermost.key == _keys(DAYS)[-1]
    assert events.keys("acquired") == _keys(DAYS)
    assert events.keys("released") == _keys(DAYS)[::-1]
    assert kit.store.holders() == []
    assert current_lease() is None


def test_accepts_date_objects_and_a_single_date(kit: StoreKit) -> None:
    events = Events()
    proc = _processor(kit, events)
    assert proc.run({"start_date": dt.date(2026, 2, 2), "end_date": dt.date(2026, 2, 3)})
    assert events.keys("acquired") == _keys(DAYS[1:])
    events.seen.clear()
    assert proc.run({"end_date": "2026-02-03"})  # the live service sends the game date
    assert events.keys("acquired") == _keys(DAYS[2:])


def test_run_result_and_errors_pass_through_and_release_everything(kit: StoreKit) -> None:
    events = Events()
    proc = _processor(kit, events)
    assert proc.run({"start_date": DAYS[0], "end_date": DAYS[1], "result": False}) is False
    with pytest.raises(RuntimeError, match="transform failed"):
        proc.run({"start_date": DAYS[0], "end_date": DAYS[1], "fail": True})
    assert kit.store.holders() == []
    assert events.keys("released") == _keys(DAYS[:2])[::-1] * 2


def test_busy_date_part_way_releases_what_was_taken_and_raises(kit: StoreKit) -> None:
    other = kit.store.try_acquire(_keys(DAYS)[1], "other-instance", 30)
    assert other.acquired
    events = Events()
    proc = _processor(kit, events)
    with pytest.raises(LockBusy) as busy:
        proc.run({"start_date": DAYS[0], "end_date": DAYS[-1]})
    assert busy.value.key == _keys(DAYS)[1] and busy.value.holder == "other-instance"
    assert proc.runs == [], "run() ran without every lease"
    assert events.keys("acquired") == _keys(DAYS)[:1]
    assert events.keys("released") == _keys(DAYS)[:1]
    assert [h.key for h in kit.store.holders()] == [_keys(DAYS)[1]]


def test_on_busy_skip_returns_false_with_a_warning(
    kit: StoreKit, caplog: pytest.LogCaptureFixture
) -> None:
    other = kit.store.try_acquire(_keys(DAYS)[2], "other-instance", 30)
    assert other.acquired
    events = Events()
    proc = _processor(kit, events, on_busy="skip")
    with caplog.at_level(logging.WARNING, logger="processor_guard"):
        assert proc.run({"start_date": DAYS[0], "end_date": DAYS[-1]}) is False
    assert proc.runs == []
    assert any(
        r.levelno == logging.WARNING and _keys(DAYS)[2] in r.getMessage() for r in caplog.records
    )
    assert events.keys("released") == _keys(DAYS)[:2][::-1]
    assert [h.key for h in kit.store.holders()] == [_keys(DAYS)[2]]


@pytest.mark.parametrize(
    "opts",
    [
        {"start_date": "2026-02-03", "end_date": "2026-02-01"},
        {"start_date": "2026-2-1", "end_date": "2026-02-03"},
        {"start_date": dt.datetime(2026, 2, 1), "end_date": "2026-02-03"},
        {"project_id": "nba-props"},
        {"start_date": None, "end_date": None},
    ],
)
def test_bad_opts_are_config_errors_and_lock_nothing(kit: StoreKit, opts: dict[str, Any]) -> None:
    events = Events()
    proc = _processor(kit, events)
    with pytest.raises(ConfigError) as err:
        proc.run(opts)
    assert isinstance(err.value, ValueError)
    assert proc.runs == [] and events.seen == [] and kit.store.holders() == []


def test_scope_callable_must_give_a_valid_scope(kit: StoreKit) -> None:
    @guarded(lambda self: self.table, store=kit.store)
    def run(self: Any, opts: dict[str, Any]) -> bool:
        return True

    class Bad:
        table = "not a scope"

    with pytest.raises(ConfigError, match="scope"):
        run(Bad(), {"start_date": DAYS[0], "end_date": DAYS[0]})
    assert kit.store.holders() == []

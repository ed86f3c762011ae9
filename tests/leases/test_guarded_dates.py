"""``guarded`` for processors that are not ``run(self, opts)`` with start/end dates:
``dates=`` (a key of opts or a callable), the plain-function form, and a guarded
override calling a guarded ``super().run()`` (issue 14, item 5)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from processor_guard import ConfigError, LockBusy, MemoryStore
from processor_guard.leases import current_lease, date_lock, guarded, held_leases, lease_key

FEB = [dt.date(2026, 2, day) for day in (1, 2, 3)]


def keys_held() -> list[str]:
    return [lease.key for lease in held_leases()]


def test_dates_from_a_key_of_opts_one_date_or_a_list_sorted() -> None:
    store = MemoryStore()
    seen: list[list[str]] = []

    class MlbProcessor:
        @guarded("mlb_pitcher_stats", dates="date", store=store)
        def run(self, opts: dict[str, Any]) -> bool:
            seen.append(keys_held())
            return True

    assert MlbProcessor().run({"date": "2026-02-03"}) is True
    assert MlbProcessor().run({"date": ["2026-02-03", FEB[0], "2026-02-03"]}) is True
    assert seen == [
        ["mlb_pitcher_stats:2026-02-03"],
        ["mlb_pitcher_stats:2026-02-01", "mlb_pitcher_stats:2026-02-03"],
    ]
    assert store.holders() == [], "every lease is released after the run"


def test_dates_from_a_callable_of_opts() -> None:
    store = MemoryStore()

    @guarded("pgs", dates=lambda opts: opts["games"].keys(), store=store)
    def process(opts: dict[str, Any]) -> list[str]:
        return keys_held()

    got = process({"games": {"2026-02-02": 1, "2026-02-01": 2}})
    assert got == ["pgs:2026-02-01", "pgs:2026-02-02"]


@pytest.mark.parametrize(
    ("dates", "opts", "message"),
    [
        ("date", {"game_date": "2026-02-03"}, "no 'date'"),
        ("date", {"date": None}, "None"),
        ("date", {"date": []}, "empty"),
        ("date", {"date": "03/02/2026"}, r"opts\['date'\]"),
        ("date", {"date": ["2026-02-03", 7]}, r"opts\['date'\] item"),
        ("date", ["2026-02-03"], "must be a dict"),
        (lambda opts: 20260203, {}, r"dates\(opts\)"),
    ],
)
def test_bad_dates_are_a_config_error_naming_where_they_came_from(
    dates: Any, opts: Any, message: str
) -> None:
    store = MemoryStore()
    ran = []

    @guarded("pgs", dates=dates, store=store)
    def process(opts: Any) -> None:
        ran.append(opts)

    with pytest.raises(ConfigError, match=message):
        process(opts)
    assert ran == [] and store.holders() == []


@pytest.mark.parametrize("dates", ["", 3, b"date"])
def test_a_bad_dates_option_fails_when_decorating(dates: Any) -> None:
    with pytest.raises(ConfigError, match="dates"):
        guarded("pgs", dates=dates, store="memory://")


def test_function_form_scope_callable_gets_opts_and_extra_arguments_pass() -> None:
    store = MemoryStore()

    @guarded(lambda opts: opts["table"], store=store)
    def process(opts: dict[str, Any], factor: int, *, label: str) -> tuple[Any, ...]:
        lease = current_lease()
        assert lease is not None
        return lease.key, factor, label

    opts = {"table": "team_offense", "start_date": "2026-02-03"}
    assert process(opts, 2, label="x") == ("team_offense:2026-02-03", 2, "x")
    assert process.__name__ == "process"


def test_a_function_without_arguments_is_refused_when_decorating() -> None:
    with pytest.raises(ConfigError, match="no positional argument"):

        @guarded("pgs", store="memory://")
        def process() -> None:
            pass


def test_function_form_keeps_one_wait_budget_and_on_busy_skip() -> None:
    store = MemoryStore()
    taken = store.try_acquire("pgs:2026-02-02", "other", 30)
    assert taken.acquired

    @guarded("pgs", dates="date", store=store, wait=0.2, on_busy="skip")
    def skipping(opts: dict[str, Any]) -> bool:
        return True

    @guarded("pgs", dates="date", store=store, wait=0.2)
    def raising(opts: dict[str, Any]) -> bool:
        return True

    opts = {"date": ["2026-02-03", "2026-02-02", "2026-02-01"]}
    assert skipping(opts) is False
    with pytest.raises(LockBusy) as busy:
        raising(opts)
    assert busy.value.key == "pgs:2026-02-02", "dates are locked in ascending order"
    assert [h.key for h in store.holders()] == ["pgs:2026-02-02"], "the others were released"


def test_a_guarded_override_calling_guarded_super_run_reuses_the_held_lease() -> None:
    store = MemoryStore()
    fences: list[int] = []

    class Base:
        @guarded("pgs", store=store)
        def run(self, opts: dict[str, Any]) -> bool:
            lease = current_lease()
            assert lease is not None
            fences.append(lease.fence)
            return True

    class Override(Base):
        @guarded("pgs", store=store)
        def run(self, opts: dict[str, Any]) -> bool:
            lease = current_lease()
            assert lease is not None
            fences.append(lease.fence)
            return super().run(opts)

    assert Override().run({"start_date": "2026-02-03"}) is True
    assert len(fences) == 2 and fences[0] == fences[1], "super().run ran under the same lease"
    assert store.holders() == []


def test_the_held_lease_of_another_store_or_scope_is_not_reused() -> None:
    mine, other = MemoryStore(), MemoryStore()
    inner_keys: list[list[str]] = []

    @guarded("pgs", store=other)
    def inner(opts: dict[str, Any]) -> None:
        inner_keys.append([f"{le.key}@{id(le.store) == id(other)}" for le in held_leases()])

    @guarded("pgs", store=mine)
    def outer(opts: dict[str, Any]) -> None:
        inner(opts)

    outer({"start_date": "2026-02-03"})
    key = lease_key("pgs", "2026-02-03")
    assert inner_keys == [[f"{key}@False", f"{key}@True"]], "the other store was locked too"


def test_an_override_without_guarded_runs_unguarded_the_documented_trap() -> None:
    store = MemoryStore()

    class Base:
        @guarded("pgs", store=store)
        def run(self, opts: dict[str, Any]) -> list[str]:
            return keys_held()

    class Override(Base):
        def run(self, opts: dict[str, Any]) -> list[str]:
            before = keys_held()
            return [*before, "|", *super().run(opts)]

    assert Override().run({"start_date": "2026-02-03"}) == ["|", "pgs:2026-02-03"]


def test_reused_lease_is_still_one_per_process_across_threads() -> None:
    store = MemoryStore()
    started, release = threading.Event(), threading.Event()

    @guarded("pgs", store=store)
    def hold(opts: dict[str, Any]) -> None:
        started.set()
        release.wait(5)

    @guarded("pgs", store=store)
    def other(opts: dict[str, Any]) -> None:
        pytest.fail("ran while another thread held the date")

    worker = threading.Thread(target=hold, args=({"start_date": "2026-02-03"},))
    worker.start()
    assert started.wait(5)
    try:
        with pytest.raises(LockBusy):
            other({"start_date": "2026-02-03"})
    finally:
        release.set()
        worker.join(5)


def test_on_busy_skip_covers_the_dates_lock_not_a_lockbusy_of_the_body() -> None:
    store = MemoryStore()

    @guarded("pgs", dates="date", store=store, on_busy="skip")
    def process(opts: dict[str, Any]) -> bool:
        raise LockBusy("other:2026-02-03", "someone", 1.0)

    with pytest.raises(LockBusy, match="other:2026-02-03"):
        process({"date": "2026-02-03"})


def test_a_lease_held_in_this_context_by_another_owner_is_busy_not_reused() -> None:
    store = MemoryStore()

    @guarded("pgs", store=store)
    def process(opts: dict[str, Any]) -> None:
        pytest.fail("ran under another owner's lease")

    with (
        date_lock("pgs", "2026-02-03", store=store, owner="other"),
        pytest.raises(LockBusy) as busy,
    ):
        process({"start_date": "2026-02-03"})
    assert busy.value.holder == "other"


def test_async_forms_take_the_same_date_sources() -> None:
    """``async def`` gets ``dates=`` and the plain-function form too, with the same
    ascending order, one group and the bad-input errors of the sync form."""
    import asyncio

    store = MemoryStore()

    class MlbProcessor:
        @guarded("mlb_pitcher_stats", dates="date", store=store)
        async def run(self, opts: dict[str, Any]) -> list[str]:
            await asyncio.sleep(0)
            return keys_held()

    @guarded("pgs", dates=lambda opts: opts["games"].keys(), store=store)
    async def process(opts: dict[str, Any]) -> list[str]:
        lease = current_lease(FEB[1])
        assert lease is not None and len(lease.group) == 2
        return keys_held()

    async def main() -> tuple[list[str], list[str]]:
        one = await MlbProcessor().run({"date": ["2026-02-03", FEB[0]]})
        two = await process({"games": {"2026-02-02": 1, "2026-02-01": 2}})
        return one, two

    one, two = asyncio.run(main())
    assert one == ["mlb_pitcher_stats:2026-02-01", "mlb_pitcher_stats:2026-02-03"]
    assert two == ["pgs:2026-02-01", "pgs:2026-02-02"]
    assert store.holders() == []
    with pytest.raises(ConfigError, match="no 'date'"):
        asyncio.run(MlbProcessor().run({"game_date": "2026-02-03"}))

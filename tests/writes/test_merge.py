"""safe_merge behaviour on both engines: the BigQuery emulator and DuckDB."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from fixtures.pgs_rows import DUCKDB_PGS, date_rows, game_rows
from processor_guard import InvalidRows, StaleFence, date_lock, safe_merge
from processor_guard.stores.memory import MemoryStore
from processor_guard.writes.warehouse import GUARD_SUFFIX, as_warehouse

DAY = dt.date(2026, 2, 3)
KEYS = ("game_date", "player_lookup")


class Target:
    """A player_game_summary table on one engine, and how to read it back."""

    def __init__(self, engine: str, client: Any, table: str) -> None:
        self.engine = engine
        self.client = client
        self.table = table
        self.wh = as_warehouse(client)

    def read(self) -> dict[tuple[str, str], dict[str, Any]]:
        """All rows keyed by (game_date ISO, player_lookup), values normalised."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        rows = self.wh.query(f"SELECT * FROM {self.wh.quote_table(self.table)}")
        for row in rows:
            row = dict(row)
            row["game_date"] = row["game_date"].isoformat()
            stamp = row["processed_at"]
            if stamp is not None and stamp.tzinfo is None:
                row["processed_at"] = stamp.replace(tzinfo=dt.timezone.utc)
            key = (row["game_date"], row["player_lookup"])
            assert key not in out, f"duplicate row for {key}"
            out[key] = row
        return out

    def count(self) -> int:
        return self.wh.count_rows(self.table)


@pytest.fixture(params=[pytest.param("bigquery", marks=pytest.mark.bigquery), "duckdb"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """An empty player_game_summary table on each engine."""
    if request.param == "bigquery":
        emulator = request.getfixturevalue("bigquery_emulator")
        client = emulator.client()
        yield Target("bigquery", client, emulator.create_player_game_summary(client))
    else:
        import duckdb

        conn = duckdb.connect()
        conn.execute(DUCKDB_PGS.format(name="main.player_game_summary"))
        yield Target("duckdb", conn, "main.player_game_summary")
        conn.close()


def test_insert_then_update_round_trip(target: Target) -> None:
    rows = date_rows(DAY)
    first = safe_merge(target.client, target.table, rows, keys=KEYS)
    assert (first.inserted, first.updated, first.attempts) == (348, 0, 1)
    stored = target.read()
    assert len(stored) == 348
    sample = stored[(DAY.isoformat(), "player03x07")]
    source = next(r for r in rows if r["player_lookup"] == "player03x07")
    assert sample["points"] == source["points"]
    assert sample["minutes_played"] == Decimal(source["minutes_played"])
    assert sample["processed_at"] == dt.datetime.fromisoformat(source["processed_at"])

    later = dt.datetime(2026, 2, 4, 2, tzinfo=dt.timezone.utc)
    again = date_rows(DAY, processed_at=later, points_offset=100)
    second = safe_merge(target.client, target.table, again, keys=KEYS)
    assert (second.inserted, second.updated, second.skipped) == (0, 348, 0)
    stored = target.read()
    assert len(stored) == 348
    assert stored[(DAY.isoformat(), "player03x07")]["points"] == source["points"] + 100


def test_columns_absent_from_batch_keep_their_values(target: Target) -> None:
    safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS)
    before = target.read()
    later = "2026-02-04T01:00:00+00:00"
    partial = [
        {"game_date": DAY.isoformat(), "player_lookup": lookup, "points": 99, "processed_at": later}
        for (_, lookup) in list(before)[:20]
    ]
    result = safe_merge(target.client, target.table, partial, keys=KEYS)
    assert (result.inserted, result.updated) == (0, 20)
    after = target.read()
    for key, row in after.items():
        if key[1] in {p["player_lookup"] for p in partial}:
            assert row["points"] == 99
            untouched = {c: v for c, v in row.items() if c not in ("points", "processed_at")}
            assert untouched == {c: v for c, v in before[key].items() if c in untouched}
        else:
            assert row == before[key]


def test_remerging_one_game_keeps_the_other_games_of_the_date(target: Target) -> None:
    safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS)
    later = dt.datetime(2026, 2, 4, 3, tzinfo=dt.timezone.utc)
    one_game = game_rows(DAY, 4, processed_at=later, points_offset=50)
    result = safe_merge(target.client, target.table, one_game, keys=KEYS)
    assert (result.inserted, result.updated) == (0, 35)
    stored = target.read()
    assert len(stored) == 348
    game_ids = {row["game_id"] for row in stored.values()}
    assert len(game_ids) == 10
    changed = [r for r in stored.values() if r["processed_at"] == later]
    assert len(changed) == 35
    assert {r["game_id"] for r in changed} == {one_game[0]["game_id"]}


def test_other_dates_untouched(target: Target) -> None:
    other = dt.date(2026, 2, 2)
    safe_merge(target.client, target.table, date_rows(other), keys=KEYS)
    result = safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS)
    assert result.inserted == 348
    assert target.wh.count_rows(target.table, "game_date", other) == 348
    assert target.wh.count_rows(target.table, "game_date", DAY.isoformat()) == 348


def test_older_rows_do_not_overwrite_newer_ones(target: Target) -> None:
    newer = dt.datetime(2026, 2, 5, tzinfo=dt.timezone.utc)
    safe_merge(target.client, target.table, game_rows(DAY, 0, processed_at=newer), keys=KEYS)
    old = game_rows(DAY, 0, points_offset=7)  # processed the evening of the game, earlier
    result = safe_merge(target.client, target.table, old, keys=KEYS)
    assert (result.inserted, result.updated, result.skipped) == (0, 0, 35)
    assert all(r["processed_at"] == newer for r in target.read().values())


def test_duplicates_in_batch_are_deduped_before_writing(target: Target) -> None:
    rows = game_rows(DAY, 1)
    late = dict(rows[3], points=77, processed_at="2026-02-04T05:00:00Z")
    result = safe_merge(target.client, target.table, [*rows, late, rows[0]], keys=KEYS)
    assert result.dedup.dropped_rows == 2
    assert result.dedup.conflicting_keys == 1
    assert result.inserted == 35
    assert target.read()[(DAY.isoformat(), rows[3]["player_lookup"])]["points"] == 77


def test_stale_fence_rejected_and_table_unchanged(target: Target) -> None:
    safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS, fence=5)
    before = target.read()
    later = dt.datetime(2026, 2, 4, 6, tzinfo=dt.timezone.utc)
    with pytest.raises(StaleFence) as info:
        safe_merge(
            target.client,
            target.table,
            date_rows(DAY, processed_at=later, points_offset=9),
            keys=KEYS,
            fence=4,
        )
    assert info.value.fence == 4
    assert info.value.current == 5
    assert target.read() == before
    assert target.wh.read_fence(target.table, DAY) == 5


def test_newer_fence_accepted_and_recorded(target: Target) -> None:
    safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS, fence=5)
    later = dt.datetime(2026, 2, 4, 6, tzinfo=dt.timezone.utc)
    result = safe_merge(
        target.client,
        target.table,
        date_rows(DAY, processed_at=later, points_offset=9),
        keys=KEYS,
        fence=6,
    )
    assert (result.updated, result.fence) == (348, 6)
    assert target.wh.read_fence(target.table, DAY) == 6
    # the same holder may write again with its own fence
    assert safe_merge(target.client, target.table, game_rows(DAY, 2), keys=KEYS, fence=6)
    guard = target.wh.guard_table(target.table)
    assert guard == target.wh.canonical(target.table) + GUARD_SUFFIX
    fences = target.wh.query(
        f"SELECT * FROM {target.wh.quote_table(guard)} WHERE partition_value <> '*'"
    )
    assert [r["fence"] for r in fences] == [6]


def test_fence_comes_from_the_current_lease(target: Target) -> None:
    store = MemoryStore()
    with date_lock("player_game_summary", DAY, store=store) as lease:
        result = safe_merge(target.client, target.table, game_rows(DAY, 0), keys=KEYS)
    assert result.fence == lease.fence
    assert target.wh.read_fence(target.table, DAY) == lease.fence


def test_bad_rows_rejected_before_anything_is_written(target: Target) -> None:
    good = game_rows(DAY, 0)
    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        ([*good[:3], dict(good[3], bogus_column=1)], 3, "bogus_column"),
        ([*good[:2], dict(good[2], points="many")], 2, "points"),
        ([*good[:2], dict(good[2], game_date="2026-02-31")], 2, "game_date"),
        ([dict(good[0], starter_flag="maybe")], 0, "starter_flag"),
        ([dict(good[0], processed_at="yesterday")], 0, "processed_at"),
        ([good[0], {k: v for k, v in good[1].items() if k != "points"}], 1, "points"),
        ([good[0], dict(good[1], player_lookup=None)], 1, "player_lookup"),
        ([good[0], {k: v for k, v in good[1].items() if k != "game_date"}], 1, "game_date"),
    ]
    for rows, index, column in cases:
        with pytest.raises(InvalidRows) as info:
            safe_merge(target.client, target.table, rows, keys=KEYS)
        assert (info.value.row_index, info.value.column) == (index, column), info.value
    assert target.count() == 0


def test_required_column_missing_is_invalid(target: Target) -> None:
    rows = [{"player_lookup": "a", "points": 1, "game_date": "2026-02-03"}]
    safe_merge(target.client, target.table, rows, keys=("player_lookup",), partition_field=None)
    with pytest.raises(InvalidRows) as info:
        safe_merge(
            target.client,
            target.table,
            [{"player_lookup": "b", "points": 1}],
            keys=("player_lookup",),
            partition_field=None,
        )
    assert info.value.column == "game_date"
    assert target.count() == 1


def test_empty_batch_sends_nothing(target: Target) -> None:
    result = safe_merge(target.client, target.table, [], keys=KEYS)
    assert (result.inserted, result.updated, result.attempts, result.jobs) == (0, 0, 0, 0)


def test_threads_merging_overlapping_batches(target: Target) -> None:
    """Each thread writes games 0-2 with its own processed_at; the newest must win."""
    base = dt.datetime(2026, 2, 4, tzinfo=dt.timezone.utc)
    threads = 6
    batches = [
        [
            *game_rows(DAY, t % 3, processed_at=base + dt.timedelta(minutes=t), points_offset=t),
            *game_rows(
                DAY, (t + 1) % 3, processed_at=base + dt.timedelta(minutes=t), points_offset=t
            ),
        ]
        for t in range(threads)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            safe_merge(
                target.client, target.table, batches[t], keys=KEYS, backoff_initial=0.01,
                backoff_max=0.2, max_attempts=30,
            )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    stored = target.read()
    assert len(stored) == 3 * 35
    newest: dict[tuple[str, str], tuple[str, int]] = {}
    for batch in batches:
        for row in batch:
            key = (row["game_date"], row["player_lookup"])
            if key not in newest or row["processed_at"] > newest[key][0]:
                newest[key] = (row["processed_at"], row["points"])
    for key, (stamp, points) in newest.items():
        assert stored[key]["processed_at"] == dt.datetime.fromisoformat(stamp)
        assert stored[key]["points"] == points


@pytest.mark.bigquery
@pytest.mark.parametrize("fence", [None, 4])
def test_large_batch_goes_through_an_expiring_staging_table(
    bigquery_emulator: Any, fence: int | None
) -> None:
    client = bigquery_emulator.client()
    table = bigquery_emulator.create_player_game_summary(client)
    created: list[Any] = []
    create_table = client.create_table

    def observed_create_table(spec: Any, *args: Any, **kwargs: Any) -> Any:
        created.append(spec)
        return create_table(spec, *args, **kwargs)

    client.create_table = observed_create_table
    safe_merge(client, table, game_rows(DAY, 9), keys=KEYS)  # a row the batch leaves alone
    before = dt.datetime.now(dt.timezone.utc)
    result = safe_merge(
        client, table, date_rows(DAY)[:280], keys=KEYS, fence=fence,
        staging_threshold_bytes=1000, staging_ttl=dt.timedelta(minutes=30),
    )  # fmt: skip
    assert result.path == "staging"
    assert (result.inserted, result.jobs) == (280, 2)
    target = Target("bigquery", client, table)
    assert len(target.read()) == 280 + 35
    stages = [t for t in created if "_pg_stage_" in t.table_id]
    assert len(stages) == 1
    expires = stages[0].expires
    assert before + dt.timedelta(minutes=29) < expires < before + dt.timedelta(minutes=31)
    dataset = table.rsplit(".", 1)[0]
    left = {t.table_id for t in client.list_tables(dataset)}
    assert left == {"player_game_summary", "player_game_summary" + GUARD_SUFFIX}


def test_only_newer_false_overwrites_newer_rows(target: Target) -> None:
    newer = dt.datetime(2026, 2, 5, tzinfo=dt.timezone.utc)
    safe_merge(target.client, target.table, game_rows(DAY, 0, processed_at=newer), keys=KEYS)
    old = game_rows(DAY, 0, points_offset=7)
    result = safe_merge(target.client, target.table, old, keys=KEYS, only_newer=False)
    assert (result.updated, result.skipped) == (35, 0)
    assert {r["points"] for r in target.read().values()} == {r["points"] for r in old}


def test_fences_of_the_former_dataset_wide_table_seed_a_new_guard_table(target: Target) -> None:
    """``_processor_guard_fences`` (before issue #11) next to the table: its fences for
    this table, highest per partition, are the guard table's from its creation on."""
    wh = target.wh
    legacy = wh.canonical(target.table).rsplit(".", 1)[0] + "._processor_guard_fences"
    text, integer = ("STRING", "INT64") if target.engine == "bigquery" else ("VARCHAR", "BIGINT")
    wh.query(
        f"CREATE TABLE {wh.quote_table(legacy)} (table_name {text} NOT NULL, "
        f"partition_value {text} NOT NULL, fence {integer} NOT NULL, updated_at TIMESTAMP)"
    )
    day2 = DAY + dt.timedelta(days=1)
    me, other = wh.canonical(target.table), wh.canonical(target.table) + "_other"
    recorded = [(me, DAY, 7), (me, DAY, 5), (me, day2, 3), (other, DAY + dt.timedelta(days=2), 99)]
    values = ", ".join(f"('{t}', '{d.isoformat()}', {f}, NULL)" for t, d, f in recorded)
    wh.query(f"INSERT INTO {wh.quote_table(legacy)} VALUES {values}")

    with pytest.raises(StaleFence) as info:
        safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS, fence=6)
    assert (info.value.fence, info.value.current) == (6, 7)
    assert target.count() == 0
    assert safe_merge(target.client, target.table, date_rows(DAY), keys=KEYS, fence=8).inserted
    assert wh.read_fence(target.table, DAY) == 8
    assert wh.read_fence(target.table, day2) == 3
    assert wh.read_fence(target.table, DAY + dt.timedelta(days=2)) is None

"""The BigQuery rules model (tests/fixtures/bq_rules.py): one test per rule.

Each test drives the model with plain SQL on two jobs and checks it does exactly what
the rule's source sentence says, no more (kinder) and no less (harsher).
"""

from __future__ import annotations

import contextlib

import pytest
from google.api_core import exceptions as gexc

from fixtures.bq_rules import QUEUE_PENDING, QUEUE_RUNNING, BigQueryRules, RulesCursor
from processor_guard.writes.warehouse.bigquery import classify_bigquery_error


@pytest.fixture
def model() -> BigQueryRules:
    rules = BigQueryRules(rate=None, serial=False)
    rules.conn.execute("CREATE TABLE t (k INTEGER, v INTEGER)")
    rules.conn.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
    rules.conn.execute("CREATE TABLE other (k INTEGER, v INTEGER)")
    rules.conn.execute("INSERT INTO other VALUES (1, 10)")
    return rules


def job(model: BigQueryRules) -> RulesCursor:
    return RulesCursor(model.conn.cursor(), model)


def rows(model: BigQueryRules, table: str = "t") -> list[tuple[int, int]]:
    return sorted(model.conn.execute(f"SELECT k, v FROM {table}").fetchall())


INSERT_ONLY = (
    "MERGE INTO t AS T USING (SELECT {k} AS k, 0 AS v) AS S ON T.k = S.k "
    "WHEN MATCHED THEN UPDATE SET v = S.v WHEN NOT MATCHED THEN INSERT (k, v) VALUES (S.k, S.v)"
)


def test_r1_insert_only_merges_never_conflict(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    b.execute("BEGIN TRANSACTION")
    a.execute(INSERT_ONLY.format(k=3))
    b.execute(INSERT_ONLY.format(k=3))  # the same new key: BigQuery has no unique keys
    a.execute("COMMIT TRANSACTION")
    b.execute("COMMIT TRANSACTION")
    assert rows(model) == [(1, 10), (2, 20), (3, 0), (3, 0)]
    assert model.cancelled == 0


def test_r1_a_merge_that_updates_is_mutating(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    b.execute("BEGIN TRANSACTION")
    a.execute(INSERT_ONLY.format(k=1))  # matches key 1: an update
    with pytest.raises(gexc.BadRequest, match="Transaction is aborted"):
        b.execute(INSERT_ONLY.format(k=2))


def test_r2_the_later_mutating_transaction_is_cancelled(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    b.execute("BEGIN TRANSACTION")
    a.execute("UPDATE t SET v = 11 WHERE k = 1")
    with pytest.raises(gexc.BadRequest) as info:
        b.execute("UPDATE t SET v = 22 WHERE k = 2")  # another row: still the same table
    assert info.value.code == 400
    assert info.value.errors[0]["reason"] == "invalidQuery"
    assert "Transaction is aborted due to concurrent update against table main.t" in str(info.value)
    assert classify_bigquery_error(info.value) == "conflict"
    a.execute("COMMIT TRANSACTION")
    assert rows(model) == [(1, 11), (2, 20)]  # b's update was rolled back with b
    with pytest.raises(gexc.BadRequest, match="No transaction"):
        b.execute("COMMIT TRANSACTION")


def test_r2_a_commit_after_my_start_cancels_my_mutation(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    b.execute("BEGIN TRANSACTION")
    a.execute("BEGIN TRANSACTION")
    a.execute("UPDATE t SET v = 11 WHERE k = 1")
    a.execute("COMMIT TRANSACTION")
    with pytest.raises(gexc.BadRequest, match="Transaction is aborted"):
        b.execute("UPDATE t SET v = 22 WHERE k = 2")
    assert rows(model) == [(1, 11), (2, 20)]


def test_r2_other_tables_do_not_conflict(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    b.execute("BEGIN TRANSACTION")
    a.execute("UPDATE t SET v = 11 WHERE k = 1")
    b.execute("UPDATE other SET v = 12 WHERE k = 1")
    a.execute("COMMIT TRANSACTION")
    b.execute("COMMIT TRANSACTION")
    assert rows(model, "other") == [(1, 12)]
    assert model.cancelled == 0


def test_r3_a_statement_against_an_open_mutating_transaction(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    a.execute("UPDATE t SET v = 11 WHERE k = 1")
    with pytest.raises(gexc.BadRequest) as info:
        b.execute("UPDATE t SET v = 22 WHERE k = 2")
    assert "Could not serialize access to table main.t due to concurrent update" in str(info.value)
    assert info.value.errors[0]["reason"] == "invalidQuery"
    assert classify_bigquery_error(info.value) == "conflict"
    b.execute(INSERT_ONLY.format(k=5))  # R1: inserting still works meanwhile
    a.execute("COMMIT TRANSACTION")
    assert rows(model) == [(1, 11), (2, 20), (5, 0)]


def test_r4_reads_in_a_transaction_see_its_start_snapshot(model: BigQueryRules) -> None:
    a, b = job(model), job(model)
    a.execute("BEGIN TRANSACTION")
    b.execute(INSERT_ONLY.format(k=7))
    assert a.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    a.execute("COMMIT TRANSACTION")
    assert a.execute("SELECT count(*) FROM t").fetchone()[0] == 3


def test_r5_the_queue_holds_twenty_more_than_the_two_running(model: BigQueryRules) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(QUEUE_RUNNING + QUEUE_PENDING - 1):
            held.enter_context(model.admitted("main.t"))
        job(model).execute("UPDATE t SET v = 1 WHERE k = 1")  # the 22nd still gets in
        held.enter_context(model.admitted("main.t"))
        with pytest.raises(gexc.BadRequest) as info:
            job(model).execute("UPDATE t SET v = 2 WHERE k = 1")
    assert info.value.errors[0]["reason"] == "resourcesExceeded"
    assert "Too many DML statements outstanding against table main.t, limit is 20" in str(
        info.value
    )
    assert classify_bigquery_error(info.value) == "transient"
    assert rows(model)[0] == (1, 1)


def test_r6_statements_over_the_rate_wait_for_the_window() -> None:
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    model = BigQueryRules(rate=(3, 10.0), serial=False, clock=lambda: now[0], sleep=sleep)
    model.conn.execute("CREATE TABLE t (k INTEGER, v INTEGER)")
    for k in range(3):
        job(model).execute(INSERT_ONLY.format(k=k))
    assert pauses == []
    job(model).execute(INSERT_ONLY.format(k=9))
    assert pauses == [10.0]
    assert len(rows(model)) == 4

"""Lease cycles on Google's Firestore emulator beside two floors.

- floor (transaction): a transaction that reads the lock document and creates it,
  then one delete: the cheapest correct Firestore lock without fences or expiry.
- floor (bare create): ``create()`` (fails if present) + ``delete()``: two RPCs.
- processor_guard: ``with date_lock(..., store=FirestoreStore(client), wait=0)``:
  compare-and-set on server time, fences, release keeping the document (one read and
  one conditional write to acquire, one conditional write to release).

Each row also counts the Firestore RPCs of one cycle (``rpcs_per_cycle``).

The emulator runs on this machine, so these are RPC and library costs, not network.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import summarise, time_cycles

ROOT = Path(__file__).resolve().parents[1]


# The Firestore API calls a lock cycle can make (google-cloud-firestore's GAPIC client).
_RPCS = ("batch_get_documents", "begin_transaction", "commit", "rollback", "run_query")


def rpcs_per_call(client: Any, fn: Callable[[], None], calls: int = 20) -> float:
    """Firestore RPCs one call of ``fn`` makes, on average over ``calls`` calls."""
    api = client._firestore_api
    count = [0]
    originals = {name: getattr(api, name) for name in _RPCS}

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return method(*args, **kwargs)

        return call

    for name, method in originals.items():
        setattr(api, name, counting(method))
    try:
        for _ in range(calls):
            fn()
    finally:
        for name in originals:
            delattr(api, name)  # back to the class's methods
    return round(count[0] / calls, 2)


def run(cycles: int = 300, rounds: int = 3) -> dict[str, Any]:
    """p50/p99 (ms) per acquire+release cycle on the emulator, or a skip reason."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.firestore_emulator import FirestoreEmulator, missing_reason

    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    from google.cloud import firestore

    from processor_guard import date_lock
    from processor_guard.stores.firestore_store import FirestoreStore

    before = os.environ.get("FIRESTORE_EMULATOR_HOST")
    emulator = FirestoreEmulator(project="processor-guard-bench")
    try:
        client = emulator.client()
        coll = client.collection("bench_floor")
        tx_ref = coll.document("tx-lock")
        bare_ref = coll.document("bare-lock")

        @firestore.transactional  # type: ignore[misc]
        def take(transaction: Any, token: str) -> None:
            snap = tx_ref.get(transaction=transaction)
            if snap.exists:
                raise RuntimeError("floor: lock document present")
            transaction.create(tx_ref, {"owner": token})

        def floor_tx() -> None:
            take(client.transaction(), uuid.uuid4().hex)
            tx_ref.delete()

        def floor_bare() -> None:
            bare_ref.create({"owner": uuid.uuid4().hex})
            bare_ref.delete()

        store = FirestoreStore(client, collection="bench_leases")

        def ours() -> None:
            with date_lock("bench", "2026-02-03", store=store, ttl=30, wait=0):
                pass

        fns: dict[str, Callable[[], None]] = {
            "floor (transaction create + delete)": floor_tx,
            "floor (bare create + delete)": floor_bare,
            "processor_guard": ours,
        }
        samples = time_cycles(
            fns, cycles_per_round=cycles // rounds, rounds=rounds, warmup=20, scale_ns=1e6
        )
        out = summarise(samples, "floor (transaction create + delete)", "ms", 2)
        for name, fn in fns.items():
            out[name]["rpcs_per_cycle"] = rpcs_per_call(client, fn)
        client.close()
        return out
    finally:
        emulator.stop()
        if before is not None:
            os.environ["FIRESTORE_EMULATOR_HOST"] = before


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

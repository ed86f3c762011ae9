"""Lease cycles on Google's Firestore emulator beside two floors.

- floor (transaction): a transaction that reads the lock document and creates it,
  then one delete: the cheapest correct Firestore lock without fences or expiry.
- floor (bare create): ``create()`` (fails if present) + ``delete()``: two RPCs.
- processor_guard: ``with date_lock(..., store=FirestoreStore(client), wait=0)``:
  compare-and-set on server time, fences, release keeping the document.

The emulator runs on this machine, so these are RPC and library costs, not network.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


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
        for fn in fns.values():
            for _ in range(20):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds):
            names = list(fns)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                for _ in range(cycles // rounds):
                    t0 = time.perf_counter_ns()
                    fns[name]()
                    samples[name].append((time.perf_counter_ns() - t0) / 1e6)
        floor_p50 = statistics.median(samples["floor (transaction create + delete)"])
        out: dict[str, Any] = {}
        for name, values in samples.items():
            values.sort()
            p50 = statistics.median(values)
            out[name] = {
                "cycles": len(values),
                "p50_ms": round(p50, 2),
                "p99_ms": round(percentile(values, 0.99), 2),
                "ratio_p50_to_floor": round(p50 / floor_p50, 3),
            }
        client.close()
        return out
    finally:
        emulator.stop()
        if before is not None:
            os.environ["FIRESTORE_EMULATOR_HOST"] = before


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

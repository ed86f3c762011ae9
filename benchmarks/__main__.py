"""``python -m benchmarks`` (``make bench``): every benchmark in one run, then the report.

Writes benchmarks/results/latest.json, latest.md (the table the README includes, copied
into README.md's benchmark block) and locks.png (lock cycle ratios to the floor), and
prints the markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
    }


def attempt(name: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one benchmark; a failure is recorded in the results, not fatal to the run."""
    print(f"running {name} ...", file=sys.stderr, flush=True)
    try:
        result: dict[str, Any] = fn(*args, **kwargs)
        return result
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    from benchmarks import (
        bench_async_locks,
        bench_firestore,
        bench_locks,
        bench_renew,
        bench_topologies,
        report,
    )

    started = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
    }
    redis = attempt("redis locks", bench_locks.run)
    results["machine"]["redis_server"] = redis.pop("redis_version", None)
    results["redis"] = redis
    results["redis_async"] = attempt("redis async locks", bench_async_locks.run)
    results["redis_topologies"] = attempt("redis cluster and sentinel", bench_topologies.run)
    results["firestore"] = attempt("firestore emulator", bench_firestore.run)
    results["renew_many"] = attempt("batched renewal of 200 leases", bench_renew.run)
    try:
        from benchmarks import bench_dedup
    except ImportError as exc:
        results["dedup"] = {"skipped": f"benchmarks.bench_dedup not importable: {exc}"}
    else:
        results["dedup"] = attempt("dedup and merge", bench_dedup.run)
    results["targets"] = report.targets(results)
    results["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    (RESULTS / "latest.md").write_text(table)
    readme = RESULTS.parents[1] / "README.md"
    readme.write_text(report.readme_with(readme.read_text(), table))
    chart = report.chart(results, RESULTS / "locks.png")
    print(table)
    if chart is None:
        print("(no chart: the Redis benchmark did not run)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Clients and emulator helpers may leave non-daemon threads behind.
    os._exit(code)

"""Turn benchmark results into target verdicts, a markdown table and a PNG chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

OURS = "processor_guard"
FLOOR = "floor"
PEERS = ("redis-py Lock", "python-redis-lock", "pottery Redlock")
RATIO_TARGET = 1.10
# A process is starved when it got under this share of the mean acquisitions.
STARVED_SHARE = 0.10
# The README block that holds a copy of results/latest.md (``make bench`` rewrites it).
README_START = "<!-- benchmarks:start (make bench copies benchmarks/results/latest.md here) -->"
README_END = "<!-- benchmarks:end -->"


def _ok(value: bool | None) -> str:
    return "n/a" if value is None else ("met" if value else "MISSED")


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it was met."""
    out: dict[str, Any] = {}
    unc = results.get("redis", {}).get("uncontended", {})
    if OURS in unc:
        ratio = unc[OURS]["ratio_p50_to_floor"]
        out["redis_p50_within_1.10x_floor"] = {"value": ratio, "met": ratio <= RATIO_TARGET}
        slower = [p for p in PEERS if p in unc and unc[p]["p50_us"] <= unc[OURS]["p50_us"]]
        out["redis_p50_faster_than_every_peer"] = {
            "value": {p: unc[p]["p50_us"] for p in PEERS if p in unc} | {OURS: unc[OURS]["p50_us"]},
            "met": not slower,
        }
    con = results.get("redis", {}).get("contended", {})
    if OURS in con and "redis-py Lock" in con:
        ours, peer = con[OURS], con["redis-py Lock"]
        out["contended_throughput_at_least_redis_py"] = {
            "value": {OURS: ours["per_second"], "redis-py Lock": peer["per_second"]},
            "met": ours["per_second"] >= peer["per_second"],
        }
        mean = statistics.fmean(ours["per_process"])
        out["no_process_starved"] = {
            "value": {"min": ours["min_per_process"], "mean": round(mean, 1)},
            "rule": f"every process gets at least {STARVED_SHARE:.0%} of the mean",
            "met": ours["min_per_process"] >= STARVED_SHARE * mean,
        }
    if con:
        violations = {lib: run.get("violations") for lib, run in con.items()}
        out["zero_violations"] = {
            "value": violations,
            "met": all(v == 0 for v in violations.values()),
        }
    aio = results.get("redis_async", {}).get("uncontended", {})
    if OURS in aio:
        ratio = aio[OURS]["ratio_p50_to_floor"]
        out["async_redis_p50_within_1.10x_floor"] = {"value": ratio, "met": ratio <= RATIO_TARGET}
        peer = "redis-py asyncio Lock"
        if peer in aio:
            out["async_redis_p50_below_redis_py_asyncio_lock"] = {
                "value": {peer: aio[peer]["p50_us"], OURS: aio[OURS]["p50_us"]},
                "met": aio[OURS]["p50_us"] < aio[peer]["p50_us"],
            }
    dedup = results.get("dedup", {}).get("dedup", {})
    if "ratio_vs_floor" in dedup:
        out["dedup_within_1.3x_floor"] = {
            "value": dedup["ratio_vs_floor"],
            "met": bool(dedup.get("meets_target")),
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    """The tables the README includes, with the date and machine."""
    m = results.get("machine", {})
    lines = [
        f"Measured {results.get('date', '?')} on {m.get('cpu_count')} x {m.get('cpu')}, "
        f"Python {m.get('python')}, redis-server {m.get('redis_server')} (private, loopback); "
        f"load average at start {m.get('load_average_at_start')}.",
        "",
    ]
    redis = results.get("redis", {})
    unc = redis.get("uncontended", {})
    if unc:
        lines += _cycle_lines(
            "**Redis, uncontended acquire + release** (one key, same server, same run)", unc
        )
    elif "error" in redis:
        lines += [f"Redis benchmark failed: {redis['error']}", ""]
    con = redis.get("contended", {})
    if con:
        first = next(iter(con.values()))
        lines += [
            f"**Redis, contended**: {first['processes']} processes on one key for "
            f"{first['seconds']:g} s, a non-atomic counter in the critical section",
            "",
            "| library | acquisitions/s | min / max per process | violations |",
            "|---|---:|---:|---:|",
        ]
        for name, row in con.items():
            label = f"**{name}**" if name == OURS else name
            lines.append(
                f"| {label} | {row['per_second']:.0f} | "
                f"{row['min_per_process']} / {row['max_per_process']} | {row['violations']} |"
            )
        lines.append("")
    aio = results.get("redis_async", {}).get("uncontended", {})
    if aio:
        lines += _cycle_lines(
            "**Redis, async acquire + release** (`async with date_lock`, one key, same run)", aio
        )
    lines += _renewal_lines(results.get("renew_many", {}))
    lines += _topology_lines(results.get("redis_topologies", {}))
    fs = results.get("firestore", {})
    if "skipped" in fs or "error" in fs:
        lines += [f"Firestore: {fs.get('skipped') or fs.get('error')}", ""]
    elif fs:
        lines += [
            "**Firestore emulator, acquire + release**",
            "",
            "| | p50 (ms) | p99 (ms) | p50 / transaction floor |",
            "|---|---:|---:|---:|",
        ]
        for name, row in fs.items():
            label = f"**{name}**" if name == OURS else name
            lines.append(
                f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['ratio_p50_to_floor']:.2f}x |"
            )
        lines.append("")
    dd = results.get("dedup", {})
    if "dedup" in dd:
        lines += _dedup_lines(dd)
    elif dd:
        lines += [f"Dedup: {dd.get('skipped') or dd.get('error')}", ""]
    t = results.get("targets", {})
    if t:
        lines += ["| target | measured | |", "|---|---|---|"]
        for name, row in t.items():
            value = row["value"]
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            lines.append(f"| {name} | {value} | {_ok(row['met'])} |")
        lines.append("")
    return "\n".join(lines)


def _cycle_lines(title: str, rows: dict[str, Any]) -> list[str]:
    """One table of acquire + release cycle times, ours in bold."""
    lines = [title, "", "| library | p50 (µs) | p99 (µs) | p50 / floor |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        label = f"**{name}**" if name == OURS else name
        lines.append(
            f"| {label} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row['ratio_p50_to_floor']:.2f}x |"
        )
    return [*lines, ""]


def _renewal_lines(renew: dict[str, Any]) -> list[str]:
    stores = {k: v for k, v in renew.items() if isinstance(v, dict) and "leases" in v}
    if not stores:
        return []
    lines = [
        f"**Renewing {next(iter(stores.values()))['leases']} leases of one process** "
        "(one renewal period: one by one, then `renew_many`)",
        "",
        "| store | one by one (ms) | batched (ms) | round trips | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in stores.items():
        lines.append(
            f"| {name} | {row['period_ms_one_by_one']:.2f} | {row['period_ms_renew_many']:.2f} | "
            f"{row['round_trips_one_by_one']} -> {row['round_trips_renew_many']} | "
            f"{row['ratio']:.1f}x |"
        )
    return [*lines, ""]


def _topology_lines(topo: dict[str, Any]) -> list[str]:
    """Cluster and Sentinel acquire + release beside a single node, same run."""
    if not topo:
        return []
    if "skipped" in topo or "error" in topo:
        return [f"Redis topologies: {topo.get('skipped') or topo.get('error')}", ""]
    lines = [
        "**Redis topologies, uncontended acquire + release** (`date_lock` through "
        "`open_store`, private servers, same run)",
        "",
        "| topology | p50 (µs) | p99 (µs) | p50 / single node |",
        "|---|---:|---:|---:|",
    ]
    for name, row in topo.items():
        lines.append(
            f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row['ratio_p50_to_floor']:.2f}x |"
        )
    return [*lines, ""]


def _dedup_lines(dd: dict[str, Any]) -> list[str]:
    """The dedup benchmark's figures (benchmarks/bench_dedup.py), whatever its layout."""
    d = dd["dedup"]
    datasets = d.get("datasets") or {"dedup": d}
    lines = [
        "**Dedup** (seconds; ratio = dedupe_rows(copy=False) / floor)",
        "",
        "| dataset | floor | dedupe_rows (no copy) | ratio | dedupe_rows | pandas |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ds in datasets.items():
        secs = ds.get("cpu_seconds") or ds.get("seconds_best") or {}

        def cell(k: str, secs: dict[str, Any] = secs) -> str:
            return f"{secs[k]:.3f}" if k in secs else ""

        lines.append(
            f"| {name} ({ds.get('rows', 0):,} rows) | {cell('floor')} | "
            f"{cell('dedupe_rows_no_copy')} | {ds.get('ratio_vs_floor', '')} | "
            f"{cell('dedupe_rows')} | {cell('pandas_drop_duplicates')} |"
        )
    lines.append("")
    jobs = dd.get("jobs_per_save", {})
    if "fenced" in jobs:
        lines += [
            f"BigQuery jobs per {jobs.get('batch_rows')}-row save (emulator): fenced "
            f"{jobs['fenced']['jobs']}, unfenced {jobs['unfenced']['jobs']}, "
            f"staging {jobs['staging_fenced']['jobs']}.",
            "",
        ]
    return lines


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """Lock ratios to the floor (uncontended p50), and contended throughput per process."""
    unc = results.get("redis", {}).get("uncontended", {})
    if not unc:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def color(name: str) -> str:
        return "#999999" if name.startswith(FLOOR) else "#2a7ab9" if name == OURS else "#d9822b"

    con = results.get("redis", {}).get("contended", {})
    fig, axes = plt.subplots(
        1, 2 if con else 1, figsize=(12 if con else 7.5, 3.8), dpi=120, squeeze=False
    )
    ax = axes[0][0]
    names = list(unc)[::-1]
    ratios = [unc[n]["ratio_p50_to_floor"] for n in names]
    bars = ax.barh(names, ratios, color=[color(n) for n in names])
    for bar, name in zip(bars, names, strict=True):
        row = unc[name]
        ax.text(
            bar.get_width() + 0.03,
            bar.get_y() + bar.get_height() / 2,
            f"{row['ratio_p50_to_floor']:.2f}x  ({row['p50_us']:.0f} µs)",
            va="center",
            fontsize=8,
        )
    ax.axvline(RATIO_TARGET, color="#2a7ab9", linestyle="--", linewidth=1)
    ax.text(RATIO_TARGET, -0.75, " target 1.10x", color="#2a7ab9", fontsize=7, va="bottom")
    ax.set_xlabel("p50 acquire+release cycle / floor (SET NX PX + EVALSHA delete)", fontsize=8)
    ax.set_xlim(0, max(ratios) * 1.35)
    m = results.get("machine", {})
    ax.set_title(
        f"Uncontended cycle ({results.get('date', '')[:10]}, "
        f"{m.get('cpu_count')} CPU, redis {m.get('redis_server')})",
        fontsize=9,
    )
    if con:
        ax2 = axes[0][1]
        libs = list(con)[::-1]
        rates = [con[n]["per_second"] for n in libs]
        # Whiskers: the slowest and fastest single process's rate, times N.
        lows = [con[n]["min_per_process"] * con[n]["processes"] / con[n]["seconds"] for n in libs]
        highs = [con[n]["max_per_process"] * con[n]["processes"] / con[n]["seconds"] for n in libs]
        err = [
            [max(0.0, r - lo) for r, lo in zip(rates, lows, strict=True)],
            [max(0.0, hi - r) for r, hi in zip(rates, highs, strict=True)],
        ]
        ax2.barh(libs, rates, color=[color(n) for n in libs], xerr=err, capsize=3)
        for i, name in enumerate(libs):
            row = con[name]
            ax2.text(
                max(highs[i], rates[i]) * 1.02,
                i,
                f"{row['per_second']:.0f}/s  min {row['min_per_process']} max "
                f"{row['max_per_process']}",
                va="center",
                fontsize=7,
            )
        ax2.set_xlim(0, max(highs) * 1.6)
        first = con[libs[0]]
        ax2.set_xlabel("acquisitions/s (whiskers: slowest and fastest process x N)", fontsize=8)
        ax2.set_title(
            f"Contended: {first['processes']} processes, one key, {first['seconds']:g} s",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def readme_with(readme: str, table: str) -> str:
    """``readme`` with its benchmark block replaced by ``table``."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END, start)
    return f"{readme[:start]}\n{table.strip()}\n{readme[end:]}"


def readme_block(readme: str) -> str:
    """The benchmark block of ``readme``."""
    start = readme.index(README_START) + len(README_START)
    return readme[start : readme.index(README_END, start)].strip()


if __name__ == "__main__":
    # ``python -m benchmarks.report``: copy results/latest.md into the README block again.
    root = Path(__file__).resolve().parents[1]
    readme = root / "README.md"
    latest = (root / "benchmarks" / "results" / "latest.md").read_text()
    readme.write_text(readme_with(readme.read_text(), latest))

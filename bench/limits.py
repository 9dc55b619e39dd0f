"""``python -m bench.limits``: what a per-key limits check adds to a request.

Times the limits step of the request path in-process — resolve the key's policy, admit it (request
bucket, concurrency slot, token and quota reservation, all-or-nothing), settle it to the real usage
— for the memory store, the daemon's shared table (what every worker of ``server.workers: N``
decides on; one ``flock`` and a row read and written per call) and the Redis store on
127.0.0.1:6379 (one EVALSHA to admit, one to settle; the settle runs off the request path in the
gateway, so it is reported apart). Targets: memory ≤ 10 µs per request, Redis ≤ 0.5 ms p50; the
shared table is reported against the memory store.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmproxy.auth.keydata import KeyLimits
from llmproxy.config.model import RateLimitConfig
from llmproxy.connections import ConnectionPools
from llmproxy.gateway.limits_step import key_policy, limit_headers
from llmproxy.limits import LimitStore, build_store
from llmproxy.limits.shared import SharedLimits

SPEC = {
    "enabled": True,
    "per_key": {
        "enabled": True,
        "requests_per_second": 1e9,
        "burst_size": 1_000_000,
        "max_concurrent": 1000,
        "tokens_per_minute": 10**12,
    },
}
KEY_LIMITS = KeyLimits(total_quota=10**15)


async def _time(store: LimitStore, config: RateLimitConfig, calls: int) -> dict[str, list[float]]:
    admit_times, settle_times = [], []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        policy = key_policy(config.per_key, KEY_LIMITS, {})
        admission = await store.admit("key_bench", policy, 1100)
        limit_headers(admission)
        admitted = clock()
        assert admission.allowed
        assert admission.lease is not None
        await store.settle("key_bench", policy, admission.lease, 1100, 1000)
        settle_times.append(clock() - admitted)
        admit_times.append(admitted - started)
    return {"admit": admit_times, "settle": settle_times}


async def _case(storage: str, calls: int) -> dict[str, Any]:
    prefix = f"llmproxy-bench:{uuid.uuid4().hex[:8]}:"
    extra = {"storage": "redis", "redis": {"addr": "127.0.0.1:6379"}, "key_prefix": prefix}
    config = RateLimitConfig.model_validate({**SPEC, **(extra if storage == "redis" else {})})
    pools = ConnectionPools()
    table = None
    if storage == "shared":
        path = Path(tempfile.mkdtemp(prefix="llmproxy-bench-")) / "limits.table"
        SharedLimits.create(path, workers=2)
        table = SharedLimits.attach(path, 0)
    store = await build_store(config, pools, shared=table)
    try:
        await _time(store, config, 200)
        rounds = [await _time(store, config, calls) for _ in range(5)]
    finally:
        await store.close()
        await pools.close()
        if table is not None:
            table.close()
            shutil.rmtree(table.path.parent)
    result: dict[str, Any] = {"calls": calls * 5}
    for part in ("admit", "settle"):
        medians = [statistics.median(r[part]) for r in rounds]
        p99s = [sorted(r[part])[int(len(r[part]) * 0.99)] for r in rounds]
        result[f"{part}_p50_us"] = statistics.median(medians) * 1e6
        result[f"{part}_p99_us"] = statistics.median(p99s) * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round (5 rounds)")
    args = parser.parse_args(argv)
    memory = asyncio.run(_case("memory", args.calls))
    shared_table = asyncio.run(_case("shared", args.calls))
    redis = asyncio.run(_case("redis", max(200, args.calls // 20)))
    table = Table(title="per-key limits check per request (medians of 5 rounds)")
    for column in ("store", "admit p50 µs", "admit p99 µs", "settle p50 µs", "calls"):
        table.add_column(column, justify="left" if column == "store" else "right")
    for name, figures in (("memory", memory), ("shared", shared_table), ("redis", redis)):
        table.add_row(
            name,
            f"{figures['admit_p50_us']:.1f}",
            f"{figures['admit_p99_us']:.1f}",
            f"{figures['settle_p50_us']:.1f}",
            str(figures["calls"]),
        )
    console = Console()
    console.print(table)
    in_memory = memory["admit_p50_us"] + memory["settle_p50_us"]
    shared = redis["admit_p50_us"] / 1000
    verdict = {True: "MET   ", False: "MISSED"}
    console.print(f"  {verdict[in_memory <= 10]} memory store: {in_memory:.1f} µs (≤ 10 µs)")
    in_table = shared_table["admit_p50_us"] + shared_table["settle_p50_us"]
    console.print(
        f"  daemon's shared table: {in_table:.1f} µs, {in_table - in_memory:+.1f} µs over the "
        "memory store (what server.workers > 1 costs a limited request)"
    )
    console.print(f"  {verdict[shared <= 0.5]} Redis store: {shared:.3f} ms p50 admit (≤ 0.5 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bench.auth``: what the auth step adds to a request, in microseconds.

The whole auth step of the request path — find the key in the headers, hash it, ask the pipeline
(lookup cache, state checks, the Lua decision) — is timed in-process, because 30 µs is far below
what an HTTP round trip can resolve. Three cases, against the real Redis on 127.0.0.1:6379:

* ``cached + Lua``: a Redis provider whose lookup is cached, followed by the seed's balance check
  in Lua (the per-request cost once a key has been seen; target ≤ 30 µs);
* ``cached, no Lua``: the same without the script;
* ``cache miss (Redis)``: the lookup cache off, so every call is an EVALSHA round trip to Redis
  (target p50 ≤ 1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from llmproxy.config.model import Config
from llmproxy.daemon.runtime import Runtime
from llmproxy.gateway import auth_step

SEED_LUA = """
if tonumber(data.balance) <= 0 then
  return {allow = false, message = "insufficient balance"}
end
return {allow = true, metadata = {user_id = data.user_id}}
"""
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"OpenAI/Python 1.0"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-bench-key"),
    (b"x-stainless-lang", b"python"),
    (b"x-request-id", b"abc"),
    (b"content-length", b"120"),
]


def _config(prefix: str, *, lua: str, cache: bool) -> Config:
    return Config.model_validate(
        {
            "backends": [{"url": "http://127.0.0.1:9"}],
            "health_check": {"enabled": False},
            "auth": {
                "enabled": True,
                "cache": {"enabled": cache, "ttl": "1h"},
                "pipeline": [
                    {
                        "name": "redis",
                        "type": "redis",
                        "redis": {"addr": "127.0.0.1:6379", "key_pattern": prefix + "{api_key}"},
                        "lua_script": lua,
                    }
                ],
            },
        }
    )


async def _time_calls(runtime: Runtime, calls: int) -> list[float]:
    """Seconds per call of the auth step, one call at a time."""
    timings = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        key = auth_step.presented_key(runtime, HEADERS)
        recognised = await auth_step.recognise(runtime, key, "127.0.0.1")
        auth_step.decide(
            runtime,
            recognised,
            method="POST",
            path="/v1/chat/completions",
            headers=HEADERS,
            client_ip="127.0.0.1",
            model="mock-model",
            stream=True,
            proxied=True,
        )
        timings.append(clock() - started)
    return timings


async def _case(prefix: str, *, lua: str, cache: bool, calls: int) -> dict[str, Any]:
    runtime = Runtime(_config(prefix, lua=lua, cache=cache), base_dir=Path.cwd())
    await runtime.open()
    try:
        await _time_calls(runtime, 200)  # warm-up: pools, script load, first cache fill
        rounds = [sorted(await _time_calls(runtime, calls)) for _ in range(5)]
    finally:
        await runtime.close()
    medians = [statistics.median(r) for r in rounds]
    p99s = [r[int(len(r) * 0.99)] for r in rounds]
    return {
        "p50_us": statistics.median(medians) * 1e6,
        "p99_us": statistics.median(p99s) * 1e6,
        "calls": calls * len(rounds),
    }


async def run(calls: int) -> dict[str, dict[str, Any]]:
    prefix = f"llmproxy-bench:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    await client.hset(prefix + "sk-bench-key", mapping={"balance": "10", "user_id": "bench"})
    try:
        return {
            "cached + Lua": await _case(prefix, lua=SEED_LUA, cache=True, calls=calls),
            "cached, no Lua": await _case(prefix, lua="", cache=True, calls=calls),
            "cache miss (Redis)": await _case(prefix, lua="", cache=False, calls=calls // 10),
        }
    finally:
        await client.delete(prefix + "sk-bench-key")
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round (5 rounds)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.calls))
    table = Table(title="auth step per request (medians of 5 rounds)")
    for column in ("case", "p50 µs", "p99 µs", "calls"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for case, figures in results.items():
        table.add_row(
            case, f"{figures['p50_us']:.1f}", f"{figures['p99_us']:.1f}", str(figures["calls"])
        )
    console = Console()
    console.print(table)
    cached = results["cached + Lua"]["p50_us"]
    miss = results["cache miss (Redis)"]["p50_us"] / 1000
    verdict = {True: "MET   ", False: "MISSED"}
    console.print(f"  {verdict[cached <= 30]} cached decision with Lua: {cached:.1f} µs (≤ 30 µs)")
    console.print(f"  {verdict[miss <= 1]} cache miss against Redis: {miss:.3f} ms p50 (≤ 1 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

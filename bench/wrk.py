"""Non-streaming throughput with ``wrk``: a C load generator, so it is never the bottleneck.

The Lua script POSTs a small body of one model API (:mod:`bench.bodies`) and, in wrk's ``done()``
hook, prints one ``BENCH`` line of ``key=value`` pairs (exact microsecond percentiles instead of
wrk's rounded human output), which :func:`parse_wrk_output` reads back.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.bodies import Api, prompt_fields
from bench.loadgen import BENCH_KEY

_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-mock-tokens"] = "{tokens}"
wrk.headers["Authorization"] = "Bearer {key}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d status_errors=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def render_lua(tokens: int, api: Api = "chat", *, stream: bool = False) -> str:
    """The wrk script: POST a request of ``api`` for ``tokens`` tokens, with the benchmark
    gateway's key (the other targets ignore it). wrk is given the URL, so the path is the
    caller's (:data:`bench.bodies.PATHS`).

    ``stream`` adds ``"stream": true`` right after ``model``, where ``bench.ab`` has always put
    it: a chat body is byte for byte what earlier runs sent, streamed or not.
    """
    body: dict[str, object] = {"model": "mock-model"}
    if stream:
        body["stream"] = True
    body.update(prompt_fields(api, tokens))
    return _SCRIPT.format(body=json.dumps(body), tokens=tokens, key=BENCH_KEY)


def parse_wrk_output(stdout: str) -> WrkResult:
    """Read the ``BENCH key=value ...`` line that :func:`render_lua`'s ``done()`` prints."""
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            values = dict(pair.split("=", 1) for pair in line.split()[1:])
            return WrkResult(
                requests=int(values["requests"]),
                duration_s=int(values["duration_us"]) / 1e6,
                p50_ms=int(values["p50_us"]) / 1000,
                p99_ms=int(values["p99_us"]) / 1000,
                errors=int(values["socket_errors"]) + int(values["status_errors"]),
            )
    raise ValueError(f"wrk printed no BENCH line; its output was:\n{stdout}")


def run_wrk(
    wrk: str, url: str, script: Path, *, concurrency: int, duration: float, threads: int = 2
) -> WrkResult:
    """Run wrk against ``url`` (loopback only) and parse its result."""
    command = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s"]
    command += ["--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk_output(done.stdout)

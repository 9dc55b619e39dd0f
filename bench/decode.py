"""The ``decode`` scenario: hundreds to thousands of streams at a real decode speed.

One request at a time a gateway can look free; in front of a GPU fleet it relays thousands of
streams at once, each a token every few tens of milliseconds. For each level of concurrency
(``--streams``, default 300, 600 and 1,000) and each target (direct, gateway, nginx) this runs
:mod:`bench.stream_load` (open loop: a new stream every ``tokens × itl / streams`` seconds, or
closed-loop bursts) against the cheap mock of :mod:`bench.stream_mock`, and reports:

* time to first token p50/p99, and what the gateway and nginx add over direct;
* streams completed per second, as a ratio to direct's;
* CPU per relayed chunk of the serving process (the mock counts the chunks it wrote), and the
  gateway's over nginx's;
* the gateway's own event-loop lag (``llmproxy_event_loop_lag_seconds``, sampled every 0.5 s);
* the load generator's and the mock's CPU, so a run they limited is flagged.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bench.report import number
from bench.stats import percentile, process_cpu_seconds
from bench.targets import Target

GENERATOR_BUSY = 0.7
MOCK_BUSY = 0.7


@dataclass(frozen=True)
class DecodeSettings:
    streams: tuple[int, ...] = (300, 600, 1000)
    tokens: int = 100
    itl: float = 0.05
    duration: float = 10.0
    loop: Literal["open", "closed"] = "open"


@dataclass
class DecodeRun:
    """One target at one concurrency. Latencies in ms; CPU in µs per chunk or cores."""

    streams: int
    target: str
    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float
    rps: float
    errors: int
    extra_connections: int
    chunks: int
    cpu_us_per_chunk: float
    serving_cpu: float
    mock_cpu: float
    generator_cpu: float
    generator_lag_p99_ms: float
    loop_lag_ms: list[float] = field(default_factory=list)
    """The gateway's ``llmproxy_event_loop_lag_seconds`` samples (ms)."""

    def warnings(self) -> list[str]:
        notes = []
        if self.generator_cpu > GENERATOR_BUSY:
            notes.append(f"generator {self.generator_cpu:.0%} CPU")
        if self.mock_cpu > MOCK_BUSY and self.target != "direct":
            notes.append(f"mock {self.mock_cpu:.0%} CPU")
        if self.errors:
            notes.append(f"{self.errors} errors")
        if self.extra_connections:
            notes.append(f"{self.extra_connections} late arrivals opened a connection")
        return notes


def _chunks(mock: Target) -> int:
    with urllib.request.urlopen(mock.url + "/mock/chunks", timeout=5) as answer:
        return int(answer.read())


class _LagSampler(threading.Thread):
    """Reads the gateway's loop-lag gauge every ``interval`` seconds while a run lasts."""

    def __init__(self, url: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url = url + "/metrics"
        self.interval = interval
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("llmproxy_event_loop_lag_seconds "):
                    self.samples.append(float(line.split()[-1]) * 1000)


def measure(target: Target, mock: Target, streams: int, settings: DecodeSettings) -> DecodeRun:
    """One run of ``streams`` concurrent streams against ``target``."""
    sampler = _LagSampler(target.url) if target.name == "gateway" else None
    serving0, mock0 = process_cpu_seconds(target.pid), process_cpu_seconds(mock.pid)
    chunks0 = _chunks(mock)
    if sampler is not None:
        sampler.start()
    command = [sys.executable, "-m", "bench.stream_load", "--port", str(target.port)]
    command += ["--concurrency", str(streams), "--tokens", str(settings.tokens)]
    command += ["--itl", str(settings.itl), "--duration", str(settings.duration)]
    command += ["--loop", settings.loop]
    done = subprocess.run(command, capture_output=True, timeout=settings.duration * 6 + 120)
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    if done.returncode != 0:
        raise RuntimeError(f"stream load failed against {target.url}:\n{done.stderr.decode()}")
    seen: dict[str, Any] = json.loads(done.stdout)
    serving = process_cpu_seconds(target.pid) - serving0
    mock_cpu = process_cpu_seconds(mock.pid) - mock0
    chunks = _chunks(mock) - chunks0
    wall = seen["wall_s"]
    return DecodeRun(
        streams=streams,
        target=target.name,
        ttft_p50_ms=percentile(seen["ttft_ms"], 50),
        ttft_p99_ms=percentile(seen["ttft_ms"], 99),
        total_p50_ms=percentile(seen["total_ms"], 50),
        rps=seen["rps"],
        errors=seen["errors"],
        extra_connections=seen["extra_connections"],
        chunks=chunks,
        cpu_us_per_chunk=serving * 1e6 / chunks if chunks else math.nan,
        serving_cpu=serving / wall,
        mock_cpu=mock_cpu / wall,
        generator_cpu=seen["cpu_share"],
        generator_lag_p99_ms=seen["lag_p99_ms"],
        loop_lag_ms=sampler.samples if sampler is not None else [],
    )


def run_all(console: Console, targets: list[Target], settings: DecodeSettings) -> list[DecodeRun]:
    """Every concurrency level against every target except ``core``, direct first."""
    mock = next(t for t in targets if t.name == "direct")
    chosen = [t for t in targets if t.name != "core"]
    runs = []
    for streams in settings.streams:
        for target in chosen:
            run = measure(target, mock, streams, settings)
            runs.append(run)
            console.print(
                f"  {streams:5} streams  {target.name:8} TTFT p50 {run.ttft_p50_ms:8.2f} ms  "
                f"p99 {run.ttft_p99_ms:8.2f} ms  {run.rps:7.1f} streams/s  "
                f"CPU/chunk {run.cpu_us_per_chunk:6.1f} µs  {', '.join(run.warnings())}"
            )
    return runs


def _missing(streams: int) -> DecodeRun:
    nan = math.nan
    return DecodeRun(streams, "-", nan, nan, nan, nan, 0, 0, 0, nan, nan, nan, nan, nan)


def summarize(runs: list[DecodeRun], settings: DecodeSettings) -> list[dict[str, Any]]:
    """One row per concurrency: added TTFT, ratios and CPU per chunk, gateway beside nginx."""
    rows = []
    for streams in sorted({run.streams for run in runs}):
        by = {run.target: run for run in runs if run.streams == streams}
        missing = _missing(streams)
        direct, gateway, nginx = (by.get(name, missing) for name in ("direct", "gateway", "nginx"))
        lags = gateway.loop_lag_ms
        rows.append(
            {
                "streams": streams,
                "loop": settings.loop,
                "chunks_per_s": streams / settings.itl if settings.itl else math.nan,
                "direct_ttft_p50_ms": direct.ttft_p50_ms,
                "direct_ttft_p99_ms": direct.ttft_p99_ms,
                "gateway_added_p50_ms": gateway.ttft_p50_ms - direct.ttft_p50_ms,
                "gateway_added_p99_ms": gateway.ttft_p99_ms - direct.ttft_p99_ms,
                "nginx_added_p50_ms": nginx.ttft_p50_ms - direct.ttft_p50_ms,
                "nginx_added_p99_ms": nginx.ttft_p99_ms - direct.ttft_p99_ms,
                "gateway_vs_direct_rps": gateway.rps / direct.rps if direct.rps else math.nan,
                "nginx_vs_direct_rps": nginx.rps / direct.rps if direct.rps else math.nan,
                "gateway_cpu_us_per_chunk": gateway.cpu_us_per_chunk,
                "nginx_cpu_us_per_chunk": nginx.cpu_us_per_chunk,
                "cpu_per_chunk_vs_nginx": gateway.cpu_us_per_chunk / nginx.cpu_us_per_chunk,
                "gateway_loop_lag_p50_ms": percentile(lags, 50) if lags else math.nan,
                "gateway_loop_lag_max_ms": max(lags) if lags else math.nan,
            }
        )
    return rows


def _pair(row: dict[str, Any], first: str, second: str, digits: int) -> str:
    return f"{number(row[first], digits)} / {number(row[second], digits)}"


def print_table(console: Console, rows: list[dict[str, Any]], settings: DecodeSettings) -> None:
    table = Table(
        title=(
            f"decode: {settings.tokens} tokens {settings.itl * 1000:g} ms apart, "
            f"{settings.loop} loop — added over direct (ms), ratios to direct, CPU per chunk (µs)"
        ),
        title_justify="left",
    )
    columns = ["streams (chunks/s)", "direct p50/p99", "nginx +p50/+p99", "gateway +p50/+p99"]
    columns += ["gw/direct streams/s", "nginx/direct", "CPU/chunk gw", "nginx", "gw/nginx"]
    columns += ["gw loop lag p50/max"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['streams']:,} ({number(row['chunks_per_s'], 0)}/s)",
            _pair(row, "direct_ttft_p50_ms", "direct_ttft_p99_ms", 2),
            _pair(row, "nginx_added_p50_ms", "nginx_added_p99_ms", 2),
            _pair(row, "gateway_added_p50_ms", "gateway_added_p99_ms", 2),
            number(row["gateway_vs_direct_rps"], 3),
            number(row["nginx_vs_direct_rps"], 3),
            number(row["gateway_cpu_us_per_chunk"], 1),
            number(row["nginx_cpu_us_per_chunk"], 1),
            number(row["cpu_per_chunk_vs_nginx"], 2),
            _pair(row, "gateway_loop_lag_p50_ms", "gateway_loop_lag_max_ms", 1),
        )
    console.print(table)

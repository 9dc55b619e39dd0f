"""Scenarios, and one measured run of a scenario against a target.

A run records what the load generator saw (throughput, latency or time to first token) and what
every process spent: the serving process's CPU time per completed request (from ``/proc``), the
mock's and the load generator's CPU share, and the CPU other processes on the machine took. On a
2-core box all of them compete for the same cores, so these shares are what make a number
trustworthy or not (see :meth:`Sample.warnings`).
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.bodies import PATHS, Api
from bench.stats import CLOCK_TICKS, machine_busy_ticks, percentile, process_cpu_seconds
from bench.targets import Target
from bench.wrk import render_lua, run_wrk

REPO = Path(__file__).resolve().parent.parent

GENERATOR_BUSY = 0.70
"""Above this share of one core the load generator itself may be what limits the result."""
MOCK_BUSY = 0.90
BACKGROUND_BUSY = 0.15
"""Other processes on the machine using more than this many cores make a run suspect."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    concurrency: int
    tokens: int
    itl: float = 0.0
    stream: bool = True
    api: Api = "chat"
    """The model API every target is sent (``--api``); :meth:`on` names the variant."""
    default: bool = True
    """Run when ``--scenarios`` is not given. The opt-in ones stay out so that a plain
    ``python -m bench`` measures and prints what it always did."""

    def on(self, api: Api) -> Scenario:
        """This scenario on ``api``. Chat keeps the plain name (and so its targets' verdicts);
        another API is ``name@api``, a row of its own that no chat target judges."""
        name = self.name if api == "chat" else f"{self.name}@{api}"
        title = self.title if api == "chat" else f"{self.title}, {PATHS[api]}"
        return replace(self, name=name, title=title, api=api)


SCENARIOS = (
    Scenario("nonstream", "non-streaming, 16 tokens, c=64 (wrk)", 64, tokens=16, stream=False),
    Scenario("stream", "streaming 64 tokens 5 ms apart, c=100", 100, tokens=64, itl=0.005),
    Scenario("single", "streaming 16 tokens, one request at a time", 1, tokens=16),
    Scenario("stream16", "streaming 16 tokens at once, c=16 (CPU per request)", 16, tokens=16),
    Scenario(
        "single-json",
        "non-streaming 16 tokens, one request at a time (wrk -c1)",
        1,
        tokens=16,
        stream=False,
        default=False,
    ),
)


@dataclass
class Sample:
    """One run of one scenario against one target. Latencies in ms; CPU shares of one core."""

    scenario: str
    target: str
    round: int
    concurrency: int
    rps: float
    p50_ms: float
    """Latency of the whole answer (non-streaming) or time to first token (streaming)."""
    p99_ms: float
    total_p50_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float
    """CPU of the serving process (the mock itself for ``direct``) per completed request."""
    serving_cpu: float
    mock_cpu: float
    generator_cpu: float
    generator_lag_p99_ms: float
    background_cpu: float
    """Cores used by processes that are not ours (from ``/proc/stat``): other load on the box."""

    def warnings(self) -> list[str]:
        """Why this number may not measure the target alone."""
        notes = []
        if self.generator_cpu > GENERATOR_BUSY:
            notes.append(f"generator {self.generator_cpu:.0%} CPU")
        if self.mock_cpu > MOCK_BUSY and self.concurrency > 1:  # one at a time: it just waits
            notes.append("mock saturated")
        if self.background_cpu > BACKGROUND_BUSY:
            notes.append(f"background load {self.background_cpu:.1f} cores")
        if self.errors:
            notes.append(f"{self.errors} errors")
        return notes


def _run_generator(target: Target, scenario: Scenario, duration: float) -> dict[str, Any]:
    """Run the load generator (:mod:`bench.loadgen`) in its own process; return its JSON."""
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(target.port)]
    command += ["--concurrency", str(scenario.concurrency), "--duration", str(duration)]
    command += ["--tokens", str(scenario.tokens), "--itl", str(scenario.itl)]
    command += ["--ramp", str(scenario.tokens * scenario.itl)]
    command += [] if scenario.stream else ["--no-stream"]
    command += [] if scenario.api == "chat" else ["--api", scenario.api]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed against {target.url}:\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(
    scenario: Scenario,
    target: Target,
    mock_pid: int,
    *,
    duration: float,
    round_no: int,
    wrk: str | None,
    workdir: Path,
) -> Sample:
    """Load ``target`` with ``scenario`` for ``duration`` seconds and account for every CPU."""
    use_wrk = wrk is not None and not scenario.stream
    script = workdir / f"post-{scenario.api}-{scenario.tokens}.lua"
    if use_wrk and not script.exists():
        script.write_text(render_lua(scenario.tokens, scenario.api))
    serving0, mock0 = process_cpu_seconds(target.pid), process_cpu_seconds(mock_pid)
    busy0, _ = machine_busy_ticks()
    children0 = _children_cpu()
    start = time.perf_counter()
    if use_wrk:
        assert wrk is not None
        result = run_wrk(
            wrk, target.url + PATHS[scenario.api], script, concurrency=scenario.concurrency,
            duration=duration, threads=min(2, scenario.concurrency),  # wrk: threads ≤ connections
        )  # fmt: skip
        window = time.perf_counter() - start
        generator_cpu = (_children_cpu() - children0) / window
        rps, p50, p99, total_p50 = result.rps, result.p50_ms, result.p99_ms, math.nan
        requests, errors, lag = result.requests, result.errors, math.nan
    else:  # streaming, or no wrk: the Python generator (it reports its own CPU share)
        seen = _run_generator(target, scenario, duration)
        window = seen["wall_s"]  # the loaded part, without the generator's start-up
        latencies = seen["ttft_ms"] if scenario.stream else seen["total_ms"]
        rps, p50, p99 = seen["rps"], percentile(latencies, 50), percentile(latencies, 99)
        total_p50 = percentile(seen["total_ms"], 50) if scenario.stream else math.nan
        requests, errors = seen["requests"], seen["errors"]
        generator_cpu, lag = seen["cpu_share"], seen["lag_p99_ms"]
    elapsed = time.perf_counter() - start
    serving = process_cpu_seconds(target.pid) - serving0
    mock = process_cpu_seconds(mock_pid) - mock0
    busy = (machine_busy_ticks()[0] - busy0) / CLOCK_TICKS
    ours = serving + (mock if target.pid != mock_pid else 0.0) + _children_cpu() - children0
    return Sample(
        scenario=scenario.name,
        target=target.name,
        round=round_no,
        concurrency=scenario.concurrency,
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        total_p50_ms=total_p50,
        requests=requests,
        errors=errors,
        cpu_ms_per_req=serving * 1000 / requests if requests else math.nan,
        serving_cpu=serving / window,
        mock_cpu=mock / window,
        generator_cpu=generator_cpu,
        generator_lag_p99_ms=lag,
        background_cpu=max(0.0, busy - ours) / elapsed,
    )


def _children_cpu() -> float:
    """CPU seconds of the waited-for children: wrk and the load generator processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

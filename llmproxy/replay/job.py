"""One replay from settings to report: pre-flight, requests, schedule, run, figures.

:func:`run_job` is what the command calls. It owns the event loop (uvloop when installed, like
the gateway, so the client is not the slower side of the measurement), the HTTP session and the
progress task, and returns the report document. A dead target is detected before the run (the
pre-flight ``GET /v1/models``) or by its first request, and raised as
:class:`~llmproxy.replay.client.TargetUnreachable`, never reported as a run of 100 % errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import socket
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

import aiohttp

from llmproxy import __version__
from llmproxy.replay import source as recording
from llmproxy.replay.client import (
    TargetUnreachable,
    open_session,
    pool_size,
    preflight,
    raise_fd_limit,
    request_headers,
)
from llmproxy.replay.lag import client_warnings
from llmproxy.replay.outgoing import Outgoing, from_recorded
from llmproxy.replay.report import Document, build_document
from llmproxy.replay.runner import Live, Runner, RunResult
from llmproxy.replay.schedule import (
    Arrivals,
    Bounds,
    at_rate,
    bounded,
    expected_sends,
    limited,
    recorded,
)
from llmproxy.replay.stats import summarize
from llmproxy.replay.synthetic import SyntheticLoad

OPEN_LOOP_SECONDS_IN_FLIGHT: Final = 10.0
"""An open-loop pool holds ``rate ×`` this many connections: answers this slow still get one."""
MIN_POOL: Final = 100
DEFAULT_OPEN_POOL: Final = 1000
"""Connections for a recording's own schedule, whose rate is not known beforehand."""


class JobError(Exception):
    """The settings cannot be run against this target (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """How sends are timed: one of the recording's spacing, a rate, or a concurrency."""

    speed: float = 1.0
    rate: float | None = None
    arrivals: Arrivals = Arrivals.EVEN
    concurrency: int | None = None

    @property
    def open_loop(self) -> bool:
        return self.concurrency is None

    def describe(self) -> str:
        """``open loop at 500 req/s (even)``, for the headline and the settings."""
        if self.concurrency is not None:
            return f"closed loop, {self.concurrency} concurrent"
        if self.rate is not None:
            return f"open loop at {self.rate:g} req/s ({self.arrivals.value})"
        return f"open loop, recorded timing at {self.speed:g}x"


@dataclass(frozen=True, slots=True)
class ReplayJob:
    """Everything a replay needs to know; built by the command from its options."""

    target: str
    """Base URL, already normalized (:func:`~llmproxy.replay.client.normalize_target`)."""
    timing: Timing
    bounds: Bounds = field(default_factory=Bounds)
    recording: tuple[Path, ...] = ()
    """Recording files (rotated files of one recording, or one per worker)."""
    synthetic: SyntheticLoad | None = None
    """Synthetic load; its model may be empty, to be taken from the target's ``/v1/models``."""
    model: str | None = None
    """Model override for recorded requests."""
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 300.0
    connections: int | None = None
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The settings as the report records them: never the key, only header names."""
        return {
            "target": self.target,
            "mode": self.timing.describe(),
            "speed": self.timing.speed if self.recording and self.timing.rate is None else None,
            "rate": self.timing.rate,
            "arrivals": self.timing.arrivals.value if self.timing.rate is not None else None,
            "concurrency": self.timing.concurrency,
            "limit": self.bounds.limit,
            "duration_s": self.bounds.duration,
            "recording": [str(path) for path in self.recording] or None,
            "model": self.model,
            "synthetic": self.synthetic.describe() if self.synthetic else None,
            "key": "set" if self.key else None,
            "headers": sorted(self.headers),
            "timeout_s": self.timeout,
            "connections": self.connections,
        }


def environment(started: datetime.datetime) -> dict[str, Any]:
    """Where the run was made, so two reports can be told apart."""
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - no uvloop on Windows
        loop = "asyncio"
    return {
        "llmproxy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "host": socket.gethostname(),
        "event_loop": loop,
        "aiohttp": aiohttp.__version__,
        "started_at": started.isoformat(timespec="seconds"),
    }


class ProgressLike(Protocol):
    """What :func:`run_job` needs of a progress display (:class:`.progress.ProgressView`)."""

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run(self) -> None: ...


ProgressFactory = Callable[[Live, int | None, float | None], ProgressLike]
"""Makes the progress display: ``(live tallies, expected sends, duration)``."""


@dataclass(slots=True)
class JobOutcome:
    """A finished (or interrupted) run."""

    document: Document
    result: RunResult


def run_job(
    job: ReplayJob,
    scan: recording.Scan | None = None,
    progress: ProgressFactory | None = None,
) -> JobOutcome:
    """Run ``job`` on a fresh event loop; ``scan`` is the recording's first pass (made here
    when not given).

    Raises :class:`TargetUnreachable`, :class:`~llmproxy.replay.client.TargetRefused` or
    :class:`JobError` instead of running when the run would tell nothing.
    """
    if scan is None and job.recording:
        scan = recording.scan(job.recording)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(job, scan, progress))


async def _run(
    job: ReplayJob, scan: recording.Scan | None, progress: ProgressFactory | None
) -> JobOutcome:
    started_at = datetime.datetime.now(datetime.UTC)
    timing, bounds = job.timing, job.bounds
    fd_limit = raise_fd_limit()
    connections = pool_size(job.connections or _default_pool(timing), fd_limit)
    headers = request_headers(job.key, job.headers)
    session = open_session(headers, connections=connections, timeout=job.timeout)
    requests: Iterator[Outgoing] | None = None
    try:
        found = await preflight(session, job.target)
        job = resolve_model(job, found.models, found.status)
        requests = requests_of(job, scan)
        available = scan.requests if scan is not None else None
        expected = expected_sends(bounds, rate=timing.rate, available=available)
        live = Live()
        runner = Runner(session, job.target, live)
        view = progress(live, expected, bounds.duration) if progress else None
        with view if view is not None else contextlib.nullcontext():
            ticker = asyncio.ensure_future(view.run()) if view is not None else None
            try:
                result = await _drive(runner, timing, bounds, requests, job.seed)
            finally:
                if ticker is not None:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
    finally:
        if isinstance(requests, Generator):
            requests.close()
        await session.close()
    if result.unreachable is not None:
        raise TargetUnreachable(f"{job.target}: {result.unreachable}")
    summary = summarize(result.samples, result.started)
    warnings = client_warnings(result.health, summary.send_lag, open_loop=timing.open_loop)
    settings = {**job.settings(), "connections": connections}
    document = build_document(
        summary,
        result.health,
        warnings,
        settings=settings,
        environment=environment(started_at),
        source=scan,
        interrupted=result.interrupted,
    )
    return JobOutcome(document, result)


def _default_pool(timing: Timing) -> int:
    if timing.concurrency is not None:
        return timing.concurrency
    if timing.rate is not None:
        return max(MIN_POOL, math.ceil(timing.rate * OPEN_LOOP_SECONDS_IN_FLIGHT))
    return DEFAULT_OPEN_POOL


def resolve_model(job: ReplayJob, models: tuple[str, ...], status: int) -> ReplayJob:
    """``job`` with its synthetic load's model set: the first the target lists, unless given."""
    load = job.synthetic
    if load is None or load.model:
        return job
    if not models:
        raise JobError(f"{job.target}/v1/models listed no model (HTTP {status}): pass --model")
    return dataclasses.replace(job, synthetic=dataclasses.replace(load, model=models[0]))


def requests_of(job: ReplayJob, scan: recording.Scan | None) -> Iterator[Outgoing]:
    """The requests of the run, lazily: the recording's in arrival order, or synthetic ones."""
    if job.synthetic is not None:
        return job.synthetic.requests()
    if scan is None:
        raise JobError("give a recording FILE or --synthetic")
    return _recorded(scan, job.model)


def _recorded(scan: recording.Scan, model: str | None) -> Generator[Outgoing, None, None]:
    entries = recording.read(scan)
    try:
        for number, entry in enumerate(entries):
            yield from_recorded(
                entry.request, line=entry.line, model=model, salt=number, arrival=entry.arrival
            )
    finally:
        entries.close()  # the files, when the run stops before the recording's end


async def _drive(
    runner: Runner, timing: Timing, bounds: Bounds, requests: Iterable[Outgoing], seed: int
) -> RunResult:
    if timing.concurrency is not None:
        return await runner.closed_loop(
            limited(requests, bounds.limit), timing.concurrency, bounds.duration
        )
    if timing.rate is not None:
        plan = at_rate(requests, timing.rate, timing.arrivals, seed)
    else:
        plan = recorded(requests, timing.speed)
    return await runner.open_loop(bounded(plan, bounds))

"""Drive the requests of a run on the event loop: open loop by schedule, or closed loop.

Open loop: one dispatcher walks the schedule and starts each request as its own task at its
time, whether or not earlier ones were answered. Closed loop: C workers, each sending its next
request when the previous one ended. Either way a :class:`Live` tally is kept for the progress
bar, the loop-lag ticker watches the client, and the run stops early when

- the target is dead: the first request to finish could not even connect, and none has
  succeeded (the caller reports that as an unreachable target, not as a table of errors);
- the run is interrupted (Ctrl-C cancels the main task): requests in flight are cancelled and
  the requests that finished are still reported.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from llmproxy.replay.client import send
from llmproxy.replay.lag import ClientHealth, LagMonitor
from llmproxy.replay.outgoing import Outgoing
from llmproxy.replay.sample import CONNECT, Sample
from llmproxy.replay.stats import percentile

RECENT: Final = 512
"""TTFTs kept for the live p50 of the progress bar."""

_MAX_SLEEP: Final = 0.25
"""A long gap in a recording is slept in slices, so an abort is noticed within this time."""

SEND_WINDOW: Final = 0.0015
"""A request is sent once its time is this close. The loop's timers have millisecond resolution
(uvloop rounds a delay to the nearest millisecond) and fire only when the loop gets round to
them: aiming at the exact time wakes the dispatcher up to a millisecond late, which at a fast
server's sub-millisecond latency would be counted against the server. Sent a little early
instead, a request's latency counts from its actual send (``Sample.start``); the rate holds."""

_WAKE_EARLY: Final = 0.001
"""Aim the timer this much before the send window, so that rounding rarely wakes it late."""


@dataclass(slots=True)
class Live:
    """Running tallies for the progress bar (read while the run goes on)."""

    sent: int = 0
    done: int = 0
    errors: int = 0
    recent_ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def p50_ttft_ms(self) -> float | None:
        if not self.recent_ttft_ms:
            return None
        return percentile(sorted(self.recent_ttft_ms), 50)


@dataclass(slots=True)
class RunResult:
    """What a run produced."""

    samples: list[Sample]
    started: float
    """perf_counter at schedule time zero."""
    finished: float
    health: ClientHealth
    interrupted: bool = False
    unreachable: str | None = None
    """Why the target was declared dead, when it was."""


class Runner:
    """Runs one set of requests against ``base`` through ``session``."""

    def __init__(self, session: aiohttp.ClientSession, base: str, live: Live | None = None):
        self._session = session
        self._base = base
        self.live = live or Live()
        self._samples: list[Sample] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._unreachable: str | None = None
        self._any_ok = False

    async def open_loop(self, plan: Iterable[tuple[float, Outgoing]]) -> RunResult:
        """Send each request at its planned time (seconds from now)."""
        started = time.perf_counter()
        return await self._run(self._dispatch(plan, started), started)

    async def closed_loop(
        self, requests: Iterable[Outgoing], concurrency: int, duration: float | None
    ) -> RunResult:
        """``concurrency`` workers sending back to back until ``requests`` run out or
        ``duration`` seconds have passed (requests in flight then are still awaited)."""
        started = time.perf_counter()
        deadline = None if duration is None else started + duration
        iterator = iter(requests)  # shared: each worker takes the next request
        loop = asyncio.get_running_loop()
        for _ in range(concurrency):
            self._track(loop.create_task(self._worker(iterator, deadline)))
        return await self._run(None, started)

    async def _run(self, work: Coroutine[Any, Any, None] | None, started: float) -> RunResult:
        monitor = LagMonitor()
        monitor.start()
        interrupted = False
        try:
            if work is not None:
                await work
            await self._drain()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            interrupted = True
            await self._cancel_all()
        finally:
            await monitor.stop()
        return RunResult(
            self._samples,
            started,
            time.perf_counter(),
            monitor.result(),
            interrupted=interrupted,
            unreachable=self._unreachable,
        )

    async def _dispatch(self, plan: Iterable[tuple[float, Outgoing]], started: float) -> None:
        """The open-loop dispatcher: start each request at ``started + at``.

        It never waits for an answer. A request goes out within :data:`SEND_WINDOW` before its
        time; when the dispatcher falls behind (a burst in the recording, a busy loop) it sends
        at once, yielding between sends so the started requests run too.
        """
        clock = time.perf_counter
        loop = asyncio.get_running_loop()
        live = self.live
        for at, request in plan:
            due = started + at
            delay = due - clock()
            slept = False
            while delay > SEND_WINDOW and not self._stop.is_set():
                await asyncio.sleep(min(delay - _WAKE_EARLY, _MAX_SLEEP))
                delay, slept = due - clock(), True
            if self._stop.is_set():
                return
            live.sent += 1
            self._track(loop.create_task(self._one(request, due)))
            if not slept:  # behind, or sends closer than the timers resolve: let requests run
                await asyncio.sleep(0)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _drain(self) -> None:
        """Wait for the requests in flight; cancel them at once when the run was aborted."""
        if self._tasks and not self._stop.is_set():
            idle = asyncio.ensure_future(self._idle.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                stop.cancel()
        if self._tasks:
            await self._cancel_all()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, request: Outgoing, scheduled: float) -> None:
        self.record(await send(self._session, self._base, request, scheduled))

    async def _worker(self, requests: Iterator[Outgoing], deadline: float | None) -> None:
        for request in requests:
            now = time.perf_counter()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                return
            self.live.sent += 1
            self.record(await send(self._session, self._base, request, now))

    def record(self, sample: Sample) -> None:
        """Keep a finished request; declare the target dead if it is the first and could not
        connect."""
        live = self.live
        if not self._samples and not self._any_ok and sample.error == CONNECT:
            self._unreachable = sample.detail or "connection failed"
            self._stop.set()
        self._samples.append(sample)
        live.done += 1
        if sample.ok:
            self._any_ok = True
            ttft = sample.ttft
            if ttft is not None:
                live.recent_ttft_ms.append(ttft * 1000)
        else:
            live.errors += 1

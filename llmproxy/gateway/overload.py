"""Overload protection: refuse new requests while the event loop runs late.

A gateway process has one event loop. When more work arrives than one core can do, nothing
fails: every callback simply runs later, so every running stream slows down and every new
request waits longer for its first byte, all at once. Envoy's overload manager answers that by
watching a resource and shedding new work past a threshold; here the resource is the loop's own
lateness, which measures exactly what clients feel.

:class:`LoopLag` is a probe owned by the process: a callback asks to run every
:data:`PROBE_INTERVAL` seconds and records how late it ran. The lag it reports is the largest
lateness over the last :data:`WINDOW` probes, so a stall is seen at once and forgotten once the
loop keeps time again. Past ``server.overload.max_event_loop_lag`` the gateway answers new
requests at once with 503 ``gateway_overloaded`` and ``Retry-After`` — before auth, limits or
reading the body, so a refusal costs almost nothing — and the streams already running keep their
pace. ``llmproxy_event_loop_lag_seconds`` exports the lag either way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

PROBE_INTERVAL = 0.01
"""Seconds between two probes of the loop."""
WINDOW = 10
"""Probes the reported lag is the maximum of (about a tenth of a second when on time)."""


class LoopLag:
    """How late this process's event loop runs, in seconds (see the module docstring).

    A plain timer callback rather than a task: a probe costs one timer and one clock read,
    about a microsecond, a hundred times a second.
    """

    def __init__(
        self,
        interval: float = PROBE_INTERVAL,
        window: int = WINDOW,
        report: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self._window = window
        self._report = report
        """Told the lag once per window (the metric)."""
        self._probes = 0
        self._recent: collections.deque[float] = collections.deque([0.0] * window, maxlen=window)
        self.lag = 0.0
        """The largest lateness over the last probes, in seconds."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = float("inf")
        """When the next probe should run (``time.monotonic``); never overdue before start."""

    def start(self) -> None:
        """Start probing on the running loop."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def current(self) -> float:
        """The lag as of now: :attr:`lag`, or how overdue the next probe already is, if more.

        The second matters within one busy loop iteration: requests that arrived together are
        admitted one after another in it, and each sees the time the ones before it took (the
        wall clock, not the loop's clock, which stands still for the whole iteration)."""
        if self._probes <= self._window:
            return 0.0  # starting up (see _probe)
        overdue = time.monotonic() - self._due
        return overdue if overdue > self.lag else self.lag

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._probe)

    def _probe(self) -> None:
        self._probes += 1
        if self._probes <= self._window:
            # The first probes run while the process is still starting (imports settling, the
            # collector's freeze, the listener binding): that lateness is not load.
            self._schedule()
            return
        late = max(0.0, time.monotonic() - self._due)
        recent = self._recent
        dropped = recent[0]
        recent.append(late)
        if late >= self.lag:
            self.lag = late
        elif dropped >= self.lag:
            self.lag = max(recent)
        if self._report is not None and self._probes % self._window == 0:
            self._report(self.lag)
        self._schedule()

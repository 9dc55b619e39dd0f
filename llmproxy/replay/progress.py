"""The live progress bar of a run, on stderr: how far, how fast, how many errors, p50 TTFT.

It is redrawn by a task on the run's own event loop a few times a second (rich's refresh thread
would compete with the loop for the GIL and show up as loop lag in the very run it reports).
The bar counts requests when their number is known beforehand, else seconds of ``--duration``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import TracebackType
from typing import Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from llmproxy.replay.runner import Live

REFRESH: Final = 0.25
"""Seconds between redraws."""
RATE_WINDOW: Final = 2.0
"""Seconds over which the live request rate is averaged."""


class ProgressView:
    """A context manager showing ``live`` until the block ends; :meth:`run` redraws it."""

    def __init__(
        self, live: Live, *, total: int | None, duration: float | None, console: Console
    ) -> None:
        self._live = live
        self._by_time = total is None and duration is not None
        self._total = float(duration) if self._by_time and duration else total
        self._progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            TextColumn("{task.fields[position]}") if self._by_time else MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            auto_refresh=False,
            transient=False,
        )
        self._task: TaskID | None = None
        self._started = time.perf_counter()
        self._history: deque[tuple[float, int]] = deque()

    def __enter__(self) -> ProgressView:
        self._progress.start()
        self._started = time.perf_counter()
        self._task = self._progress.add_task("replay", total=self._total, position="", stats="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.refresh()
        self._progress.stop()

    async def run(self) -> None:
        """Redraw every :data:`REFRESH` seconds until cancelled."""
        while True:
            self.refresh()
            await asyncio.sleep(REFRESH)

    def refresh(self) -> None:
        if self._task is None:
            return
        live, now = self._live, time.perf_counter()
        history = self._history
        history.append((now, live.done))
        while len(history) > 1 and now - history[0][0] > RATE_WINDOW:
            history.popleft()
        then, done_then = history[0]
        rate = (live.done - done_then) / (now - then) if now > then else 0.0
        ttft = live.p50_ttft_ms()
        stats = (
            f"{rate:,.1f} req/s  {live.errors:,} errors  "
            f"TTFT p50 {'-' if ttft is None else f'{ttft:,.1f}'} ms"
        )
        elapsed = now - self._started
        if self._by_time:
            completed = min(elapsed, self._total or elapsed)
            position = f"{elapsed:.0f}/{self._total:.0f} s"
        else:
            completed = float(live.done)
            position = ""
        self._progress.update(self._task, completed=completed, position=position, stats=stats)
        self._progress.refresh()

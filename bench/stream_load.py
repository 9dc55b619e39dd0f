"""Many streams at a real decode speed: open-loop arrivals, or closed-loop bursts.

:mod:`bench.loadgen` keeps a fixed number of connections busy back to back, which measures a proxy
one stream after another. A gateway in front of a GPU fleet sees something else: streams arriving
on their own schedule and each lasting seconds (100 tokens at 20 tokens/s), so that hundreds to
thousands are open at once. This generator makes that load:

* ``open``: a new stream every ``itl × tokens / concurrency`` seconds, evenly spaced, so that
  ``concurrency`` streams are in flight once the first ones end; a new arrival never waits for
  an old stream (if every pre-opened connection is busy it opens another one).
* ``closed``: ``concurrency`` streams all start together, and each connection sends its next one
  as soon as its previous one ended: a burst every stream length.

It is plain ``asyncio.Protocol`` callbacks on uvloop with the C ``httptools`` parser, in its own
process, and reports its own CPU share and loop lag so the caller can tell when it, and not the
target, was the limit. Prints one JSON object (see :func:`run`).

``python -m bench.stream_load --port P --concurrency 1000 --tokens 100 --itl 0.05 --duration 10``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Literal

import uvloop

from bench.loadgen import TimedConnection, build_request, probe_lag
from bench.stats import percentile

Loop = Literal["open", "closed"]


class Samples:
    """What every connection of one run reports to."""

    def __init__(self) -> None:
        self.measure_from = self.deadline = 0.0
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.in_window = 0
        """Streams that ended inside the measured window (the req/s numerator)."""
        self.completed = 0
        self.errors = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.done = asyncio.Event()
        self.arrivals_over = False
        self.idle: list[StreamConnection] = []
        self.status: dict[int, int] = {}
        self.closed = 0
        """Connections the target closed."""

    def ended(self) -> None:
        self.in_flight -= 1
        if self.arrivals_over and self.in_flight == 0:
            self.done.set()


class StreamConnection(TimedConnection):
    """One keep-alive connection; one stream at a time."""

    def __init__(self, request: bytes, samples: Samples, again: bool) -> None:
        super().__init__(request)
        self._samples = samples
        self._again = again
        self.closed = False

    def start(self) -> None:
        samples = self._samples
        samples.in_flight += 1
        samples.peak_in_flight = max(samples.peak_in_flight, samples.in_flight)
        super().start()

    def _answered(self, status: int) -> None:
        self._samples.status[status] = self._samples.status.get(status, 0) + 1
        super()._answered(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._samples.closed += 1
        if self.active:
            self._finish(ok=False, reusable=False)

    def _finish(self, *, ok: bool, reusable: bool = True) -> None:
        samples = self._samples
        self.active = False
        now = self._now
        if ok:
            samples.completed += 1
            if samples.measure_from <= now <= samples.deadline:
                samples.in_window += 1
            if samples.measure_from <= self._sent <= samples.deadline:
                samples.ttft.append((self._first or now) - self._sent)
                samples.total.append(now - self._sent)
        else:
            samples.errors += 1
            reusable = False
            if self._transport is not None:
                self._transport.close()
        samples.ended()
        if not reusable:
            return
        if self._again:
            if time.perf_counter() < samples.deadline:
                self.start()
        else:
            samples.idle.append(self)


async def run(
    port: int,
    concurrency: int,
    tokens: int,
    itl: float,
    duration: float,
    loop_mode: Loop = "open",
) -> dict[str, Any]:
    """Load 127.0.0.1:``port`` and return what was seen (latencies in ms).

    ``open``: arrivals for one stream length (the ramp, not sampled) plus ``duration`` seconds,
    then wait for the streams to end. ``closed``: bursts for ``duration`` seconds, all sampled.
    ``rps`` counts streams that ended inside the window; ``extra_connections`` how many arrivals
    found no idle connection and opened one (the target answering slower than it is asked).
    """
    loop = asyncio.get_running_loop()
    request = build_request(port, stream=True, tokens=tokens, itl=itl)
    samples = Samples()
    again = loop_mode == "closed"
    pool = concurrency if again else concurrency + concurrency // 4 + 8

    def factory() -> StreamConnection:
        return StreamConnection(request, samples, again)

    connections = []
    for _ in range(pool):  # connect first, so no sample pays for a TCP handshake
        _, protocol = await loop.create_connection(factory, "127.0.0.1", port)
        connections.append(protocol)
    samples.idle = list(connections)
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(probe_lag(lags, stop))
    stream_seconds = tokens * itl
    ramp = 0.0 if again else stream_seconds
    extra = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    samples.measure_from = wall0 + ramp
    samples.deadline = samples.measure_from + duration
    if again:
        samples.arrivals_over = True
        for connection in connections:
            connection.start()
    else:
        interval = stream_seconds / concurrency
        next_at = wall0
        while next_at < samples.deadline:
            idle = samples.idle
            while idle and idle[-1].closed:
                idle.pop()
            if not idle:
                extra += 1
                _, opened = await loop.create_connection(factory, "127.0.0.1", port)
                idle.append(opened)
            idle.pop().start()
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
        samples.arrivals_over = True
        if samples.in_flight == 0:
            samples.done.set()
    try:
        await asyncio.wait_for(samples.done.wait(), duration + stream_seconds * 4 + 30)
    except TimeoutError:
        samples.errors += samples.in_flight
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    stop.set()
    await probe
    return {
        "ttft_ms": [t * 1000 for t in samples.ttft],
        "total_ms": [t * 1000 for t in samples.total],
        "requests": samples.completed,
        "rps": samples.in_window / duration,
        "errors": samples.errors,
        "status": samples.status,
        "peak_in_flight": samples.peak_in_flight,
        "closed_by_target": samples.closed,
        "extra_connections": extra,
        "wall_s": wall,
        "cpu_share": cpu / wall,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "lag_max_ms": max(lags, default=0.0) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--itl", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--loop", choices=("open", "closed"), default="open")
    args = parser.parse_args(argv)
    result = uvloop.run(
        run(args.port, args.concurrency, args.tokens, args.itl, args.duration, args.loop)
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

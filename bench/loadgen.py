"""A closed-loop HTTP/1.1 load generator that sees the first token of a streamed answer.

wrk measures whole responses only; a gateway's streaming overhead is in the *time to first token*.
This generator keeps ``concurrency`` keep-alive connections busy, each sending the next request as
soon as the previous answer ended, and stamps the moment the first body byte (the first ``data:``
event) arrives. It runs in its own process on uvloop, with plain ``asyncio.Protocol`` callbacks and
the C ``httptools`` parser, so it stays far from its own CPU limit — and it reports its CPU time and
event-loop lag so the parent can prove it (or flag the result when it is not).

``python -m bench.loadgen --port P --concurrency 100 --duration 5 --tokens 64 --itl 0.005``
prints one JSON object (see :func:`run`) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, cast

import httptools
import uvloop

from bench.bodies import APIS, PATHS, Api, prompt_fields
from bench.stats import percentile

BENCH_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
"""The one API key of the benchmark's gateway (a ``static`` provider), sent to every target."""

LAG_TICK = 0.005
"""The loop-lag probe sleeps this long and records how late it wakes up."""


def build_request(
    port: int,
    *,
    stream: bool,
    tokens: int,
    itl: float,
    api_key: str = BENCH_KEY,
    api: Api = "chat",
) -> bytes:
    """The raw bytes of one POST of ``api`` (a chat completion by default); the ``x-mock-*``
    headers steer the mock.

    Every target gets the gateway's bench key: the gateway checks it, the others ignore it.
    ``stream`` is the body's last field, as it always was for chat (same bytes as earlier runs)."""
    fields = {"model": "mock-model", **prompt_fields(api, tokens), "stream": stream}
    body = json.dumps(fields).encode()
    head = (
        f"POST {PATHS[api]} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        f"x-mock-tokens: {tokens}\r\n"
        f"x-mock-itl: {itl}\r\n"
        "\r\n"
    )
    return head.encode() + body


class Recorder:
    """Samples shared by every connection of one run."""

    def __init__(self) -> None:
        self.measure_from = self.deadline = 0.0
        self.ttft: list[float] = []
        """Seconds to the first body byte of each request sent inside the measured window."""
        self.total: list[float] = []
        self.completed = 0
        """Every answer, including the ramp's: the serving process's CPU time covers them all."""
        self.in_window = 0
        self.errors = 0
        self.idle = asyncio.Event()
        self.busy = 0


class TimedConnection(asyncio.Protocol):
    """A keep-alive connection that sends one prebuilt request at a time and stamps when it went
    out, when the first body byte came and when the answer ended (the C ``httptools`` parser
    reads it). Subclasses say what an ended request counts as (:meth:`_finish`)."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._sent = self._first = self._now = 0.0
        self.active = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        assert self._transport is not None
        self.active = True
        self._first = 0.0
        self._sent = time.perf_counter()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(ok=False)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self._first:
            self._first = self._now

    def on_message_complete(self) -> None:
        self._answered(self._parser.get_status_code())

    def _answered(self, status: int) -> None:
        self._finish(ok=status == 200)

    def _finish(self, *, ok: bool) -> None:
        raise NotImplementedError


class Connection(TimedConnection):
    """One keep-alive connection running requests back to back until the deadline."""

    def __init__(self, request: bytes, recorder: Recorder) -> None:
        super().__init__(request)
        self._recorder = recorder

    def start(self) -> None:
        self._recorder.busy += 1
        super().start()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active:
            self._finish(ok=False, again=False)

    def _finish(self, *, ok: bool, again: bool = True) -> None:
        recorder = self._recorder
        self.active = False
        recorder.busy -= 1
        if ok:
            recorder.completed += 1
            if recorder.measure_from <= self._now <= recorder.deadline:
                recorder.in_window += 1
            if self._sent >= recorder.measure_from:
                recorder.ttft.append((self._first or self._now) - self._sent)
                recorder.total.append(self._now - self._sent)
        else:
            recorder.errors += 1
            again = False
        if again and time.perf_counter() < recorder.deadline:
            self.start()
        elif recorder.busy == 0:
            recorder.idle.set()


async def probe_lag(lags: list[float], stop: asyncio.Event) -> None:
    """Record how late a ``LAG_TICK`` sleep wakes up, until ``stop``: the generator's own lag."""
    # perf_counter, not loop.time(): uvloop's clock has only millisecond resolution.
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(LAG_TICK)
        lags.append(max(0.0, time.perf_counter() - before - LAG_TICK))


async def run(
    port: int, concurrency: int, duration: float, request: bytes, ramp: float = 0.0
) -> dict[str, Any]:
    """Drive ``concurrency`` connections for ``ramp + duration`` seconds; return what was seen.

    The connections start spread evenly over ``ramp`` seconds (use one stream's length): started
    all at once, equally long streams would end together and come back as one burst forever,
    measuring the burst instead of the server. Only requests sent after the ramp are sampled.
    Latencies are in ms; ``rps`` counts answers completed inside the window; ``cpu_share`` is this
    process's CPU time over its loaded wall time (1.0 = one full core).
    """
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    connections = []
    for _ in range(concurrency):  # connect first, so no sample pays for a TCP handshake
        _, protocol = await loop.create_connection(
            lambda: Connection(request, recorder), "127.0.0.1", port
        )
        connections.append(protocol)
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(probe_lag(lags, stop))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    recorder.measure_from = wall0 + ramp
    recorder.deadline = recorder.measure_from + duration
    for i, connection in enumerate(connections):
        loop.call_later(ramp * i / concurrency, connection.start)
    try:
        await asyncio.wait_for(recorder.idle.wait(), ramp + duration + 30)
    except TimeoutError:
        recorder.errors += recorder.busy
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    stop.set()
    await probe
    return {
        "ttft_ms": [t * 1000 for t in recorder.ttft],
        "total_ms": [t * 1000 for t in recorder.total],
        "requests": recorder.completed,
        "rps": recorder.in_window / duration,
        "errors": recorder.errors,
        "wall_s": wall,
        "cpu_share": cpu / wall,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "lag_max_ms": max(lags, default=0.0) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--itl", type=float, default=0.0)
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to spread the starts")
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument("--api", choices=APIS, default="chat", help="the model API (chat)")
    args = parser.parse_args(argv)
    request = build_request(
        args.port, stream=args.stream, tokens=args.tokens, itl=args.itl, api=args.api
    )
    result = uvloop.run(run(args.port, args.concurrency, args.duration, request, args.ramp))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

"""When each request is sent: the recording's own spacing, a fixed rate, or as fast as answered.

Open loop (recorded offsets, ``--rate``) fixes every send time *before* the run: a slow answer
does not delay the next request, as it would not delay the next real user. The runner measures
latency from these scheduled times, so a client that falls behind its schedule shows up in the
figures instead of hiding the server's stall (no coordinated omission). Closed loop
(``--concurrency``) has no schedule: each of C workers sends the next request when its previous
answer ends.

Everything here is a pure generator of ``(seconds from start, item)``; bounds are applied by
:func:`bounded`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from llmproxy.replay.outgoing import Outgoing

T = TypeVar("T")


class Arrivals(StrEnum):
    """How sends are spaced at a fixed rate."""

    EVEN = "even"
    """Exactly ``1/rate`` apart: the steadiest load, easiest to compare between runs."""
    POISSON = "poisson"
    """Independent arrivals (exponential gaps), like many users acting on their own."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """When a run stops sending: after ``limit`` requests, or at ``duration`` seconds."""

    limit: int | None = None
    duration: float | None = None


def recorded(requests: Iterable[Outgoing], speed: float = 1.0) -> Iterator[tuple[float, Outgoing]]:
    """The recording's spacing, ``speed`` times faster (2.0 = in half the time).

    Times count from the first request (a rotated file does not start at offset 0). A request
    recorded out of order is sent right after the one before it, never in the past.
    """
    if speed <= 0:
        raise ValueError(f"speed must be above 0, got {speed}")
    first: float | None = None
    last = 0.0
    for request in requests:
        offset = request.offset or 0.0
        if first is None:
            first = offset
        last = max(last, (offset - first) / speed)
        yield last, request


def at_rate(
    items: Iterable[T],
    rate: float,
    arrivals: Arrivals = Arrivals.EVEN,
    seed: int = 0,
) -> Iterator[tuple[float, T]]:
    """``items`` at ``rate`` per second, starting at 0, spaced as ``arrivals`` says."""
    if rate <= 0:
        raise ValueError(f"rate must be above 0, got {rate}")
    if arrivals is Arrivals.EVEN:
        # i / rate, not a running sum: no drift from adding up rounded gaps.
        return ((index / rate, item) for index, item in enumerate(items))
    return zip(_poisson(rate, random.Random(f"{seed}:arrivals")), items, strict=False)


def _poisson(rate: float, rng: random.Random) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += rng.expovariate(rate)


def bounded(timed: Iterable[tuple[float, T]], bounds: Bounds) -> Iterator[tuple[float, T]]:
    """``timed`` until ``bounds.limit`` items or the first one scheduled at or after
    ``bounds.duration``."""
    limited = timed if bounds.limit is None else itertools.islice(timed, bounds.limit)
    for at, item in limited:
        if bounds.duration is not None and at >= bounds.duration:
            return
        yield at, item


def limited(items: Iterable[T], limit: int | None) -> Iterator[T]:
    """Closed loop: the first ``limit`` items (all when None); the deadline is the runner's."""
    return iter(items) if limit is None else itertools.islice(items, limit)


def expected_sends(
    bounds: Bounds, *, rate: float | None = None, available: int | None = None
) -> int | None:
    """How many requests a run will send, when that is known before it starts (for the
    progress bar): the limit, the requests available, or ``rate × duration``, whichever is
    smallest."""
    candidates = [n for n in (bounds.limit, available) if n is not None]
    if rate is not None and bounds.duration is not None:
        candidates.append(_count_below(bounds.duration, rate))
    return min(candidates) if candidates else None


def _count_below(duration: float, rate: float) -> int:
    """Even sends ``i / rate`` strictly before ``duration``: ``ceil(duration × rate)``."""
    return max(0, math.ceil(duration * rate - 1e-9))

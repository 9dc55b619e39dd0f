"""StreamUsage gives the same bytes and the same usage however the stream is cut into chunks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy.usage import StreamUsage, Usage
from tests.usage.streams import ALL_STREAMS, SHORT, Stream


@dataclass(frozen=True)
class Outcome:
    relayed: bytes
    usage: Usage
    events: int
    done: bool


def run(stream: bytes, cuts: list[int], *, strip: bool) -> Outcome:
    meter = StreamUsage(strip_usage_event=strip)
    bounds = [0, *sorted(cuts), len(stream)]
    out = []
    for begin, end in itertools.pairwise(bounds):
        chunk = stream[begin:end]
        relayed = meter.feed(chunk)
        if not strip:
            assert relayed is chunk
        out.append(relayed)
    out.append(meter.finish())
    return Outcome(b"".join(out), meter.usage(prompt_estimate=1000), meter.events, meter.done)


def expected(stream: Stream, *, strip: bool) -> Outcome:
    assert stream.prompt_tokens is not None
    usage = Usage(
        stream.prompt_tokens,
        stream.completion_tokens,
        stream.prompt_tokens + stream.completion_tokens,
        "backend",
        stream.finish_reason,
    )
    relayed = stream.stripped if strip else stream.raw
    return Outcome(relayed, usage, stream.data_events - strip, stream.done)


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("stream", [SHORT, SHORT.crlf()], ids=lambda s: s.name)
def test_every_single_cut(stream: Stream, strip: bool) -> None:
    """Cutting a short stream in two at every byte changes nothing."""
    want = expected(stream, strip=strip)
    raw = stream.raw
    for cut in range(len(raw) + 1):
        assert run(raw, [cut], strip=strip) == want, cut


@pytest.mark.parametrize("strip", [False, True])
def test_every_pair_of_cuts_around_the_usage_event(strip: bool) -> None:
    """Three chunks, cut at every pair of positions near the usage event, change nothing."""
    want = expected(SHORT, strip=strip)
    raw = SHORT.raw
    start = raw.index(SHORT.events[SHORT.usage_index or 0]) - 8
    positions = range(start, len(raw) + 1)
    for first in positions:
        for second in range(first, len(raw) + 1):
            assert run(raw, [first, second], strip=strip) == want, (first, second)


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("stream", ALL_STREAMS, ids=lambda s: s.name)
def test_one_byte_chunks(stream: Stream, strip: bool) -> None:
    """Feeding one byte at a time changes nothing."""
    raw = stream.raw
    assert run(raw, list(range(1, len(raw))), strip=strip) == expected(stream, strip=strip)


@st.composite
def cut_streams(draw: st.DrawFn) -> tuple[Stream, list[int]]:
    stream = draw(st.sampled_from(ALL_STREAMS))
    size = len(stream.raw)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=size), max_size=40))
    return stream, cuts


@settings(deadline=None, max_examples=300)
@given(case=cut_streams(), strip=st.booleans())
def test_random_cuts(case: tuple[Stream, list[int]], strip: bool) -> None:
    """Random chunk boundaries (empty chunks included) change nothing."""
    stream, cuts = case
    assert run(stream.raw, cuts, strip=strip) == expected(stream, strip=strip)

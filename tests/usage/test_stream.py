"""StreamUsage on whole events: what is relayed, what is stripped, and the usage it reports."""

from __future__ import annotations

import pytest

from llmproxy.usage import StreamUsage, Usage
from tests.usage.streams import (
    ALL_STREAMS,
    CHAT,
    CONTINUOUS,
    DONE,
    TOOL_CALLS,
    Stream,
    chat_event,
    usage_event,
)


def relay(meter: StreamUsage, chunks: list[bytes]) -> bytes:
    out = [meter.feed(chunk) for chunk in chunks]
    return b"".join(out) + meter.finish()


def backend_usage(stream: Stream) -> Usage:
    assert stream.prompt_tokens is not None
    total = stream.prompt_tokens + stream.completion_tokens
    return Usage(
        stream.prompt_tokens, stream.completion_tokens, total, "backend", stream.finish_reason
    )


@pytest.mark.parametrize("stream", ALL_STREAMS, ids=lambda s: s.name)
def test_event_per_chunk_relayed_as_is(stream: Stream) -> None:
    """Not stripping, each chunk comes back as the same object and the backend's usage is read."""
    meter = StreamUsage(strip_usage_event=False)
    for chunk in stream.events:
        assert meter.feed(chunk) is chunk
    assert meter.finish() == b""
    assert meter.usage(prompt_estimate=999) == backend_usage(stream)
    assert (meter.events, meter.done) == (stream.data_events, True)
    assert meter.finish_reason == stream.finish_reason


@pytest.mark.parametrize("stream", ALL_STREAMS, ids=lambda s: s.name)
def test_event_per_chunk_stripped(stream: Stream) -> None:
    """Stripping removes exactly the usage-only event; other chunks pass at once, unchanged."""
    meter = StreamUsage(strip_usage_event=True)
    for i, chunk in enumerate(stream.events):
        assert meter.feed(chunk) == (b"" if i == stream.usage_index else chunk)
    assert meter.finish() == b""
    assert meter.usage(prompt_estimate=999) == backend_usage(stream)
    assert meter.events == stream.data_events - 1


@pytest.mark.parametrize("stream", ALL_STREAMS, ids=lambda s: s.name)
def test_whole_stream_in_one_chunk(stream: Stream) -> None:
    """A chunk holding many events is scanned event by event."""
    for strip in (False, True):
        meter = StreamUsage(strip_usage_event=strip)
        assert relay(meter, [stream.raw]) == (stream.stripped if strip else stream.raw)
        assert meter.usage(prompt_estimate=999) == backend_usage(stream)


WITHOUT_CONTINUOUS = [s for s in ALL_STREAMS if not s.name.startswith(CONTINUOUS.name)]


@pytest.mark.parametrize("stream", WITHOUT_CONTINUOUS, ids=lambda s: s.name)
def test_content_events_counted_without_usage(stream: Stream) -> None:
    """Without the usage event, completion tokens are the content-bearing events relayed."""
    events = [e for i, e in enumerate(stream.events) if i != stream.usage_index]
    meter = StreamUsage(strip_usage_event=False)
    relay(meter, events)
    completion = stream.content_events
    expected = Usage(7, completion, 7 + completion, "estimated", stream.finish_reason)
    assert meter.usage(prompt_estimate=7) == expected


def test_cut_off_stream_is_estimated() -> None:
    """A stream cut after two tokens (no usage, no [DONE]) bills 2 counted + the estimate."""
    meter = StreamUsage(strip_usage_event=True)
    relay(meter, list(CHAT.events[:3]))
    assert meter.usage(prompt_estimate=30) == Usage(30, 2, 32, "estimated", None)
    assert meter.counted(prompt_estimate=30) == (30, 2)  # what the journal checkpoints
    assert (meter.done, meter.events) == (False, 3)


def test_cut_off_mid_event_not_counted() -> None:
    """Half an event at the cut is flushed to the client but not counted, like a client would."""
    meter = StreamUsage(strip_usage_event=True)
    cut = CHAT.events[2][:100]
    out = relay(meter, [CHAT.events[0], CHAT.events[1], cut])
    assert out == CHAT.events[0] + CHAT.events[1] + cut
    assert meter.usage(prompt_estimate=5) == Usage(5, 1, 6, "estimated", None)


def test_continuous_usage_cut_off_keeps_latest() -> None:
    """continuous_usage_stats: a stream cut before its usage event bills the latest usage."""
    meter = StreamUsage(strip_usage_event=False)
    relay(meter, list(CONTINUOUS.events[:3]))
    assert meter.usage(prompt_estimate=1) == Usage(9, 2, 11, "backend", None)
    assert meter.counted(prompt_estimate=1) == (9, 2)


def test_usage_then_more_content_is_counted() -> None:
    """Content after the backend's last usage adds to its completion count: source counted."""
    events = [
        chat_event({"role": "assistant", "content": ""}, usage={"prompt_tokens": 8}),
        chat_event({"content": "a"}),
        chat_event({"content": "b"}, finish_reason="stop"),
    ]
    meter = StreamUsage(strip_usage_event=False)
    relay(meter, events)
    assert meter.usage(prompt_estimate=1) == Usage(8, 2, 10, "counted", "stop")
    assert meter.counted(prompt_estimate=1) == (8, 2)


def test_openai_null_usage_is_not_usage() -> None:
    """OpenAI's "usage":null in every chunk is neither usage nor a reason to strip."""
    content = CHAT.events[1].replace(b"]}\n\n", b'],"usage":null}\n\n')
    meter = StreamUsage(strip_usage_event=True)
    assert meter.feed(content) is content
    assert meter.usage(prompt_estimate=2) == Usage(2, 1, 3, "estimated", None)


def test_tool_call_deltas_counted() -> None:
    """Tool-call name and non-empty argument deltas count; empty ones and the finish do not."""
    meter = StreamUsage(strip_usage_event=False)
    relay(meter, list(TOOL_CALLS.events[:6]))
    assert meter.usage(prompt_estimate=0) == Usage(0, 3, 3, "estimated", "tool_calls")


def test_spaced_json_is_understood() -> None:
    """JSON written with ", " and ": " (Python's json.dumps) is counted and read the same."""
    spaced = [
        b'data: {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", '
        b'"content": ""}, "finish_reason": null}]}\n\n',
        b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}, '
        b'"finish_reason": null}]}\n\n',
        b'data: {"id": "x", "choices": [{"index": 0, "text": " there", '
        b'"finish_reason": "stop"}]}\n\n',
        b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 4, '
        b'"completion_tokens": 2, "total_tokens": 6}}\n\n',
        DONE,
    ]
    meter = StreamUsage(strip_usage_event=True)
    assert relay(meter, spaced) == b"".join(spaced[:3]) + DONE
    assert meter.usage(prompt_estimate=0) == Usage(4, 2, 6, "backend", "stop")
    counted = StreamUsage(strip_usage_event=False)
    relay(counted, spaced[:3])
    assert counted.usage(prompt_estimate=0) == Usage(0, 2, 2, "estimated", "stop")


def test_comments_and_fields_pass_through() -> None:
    """Comments, event/id fields and multi-line data are relayed; only data events count."""
    chunks = [
        b": keep-alive\n\n",
        b'event: message\nid: 1\ndata: {"choices":[{"delta":{"content":"x"}}]}\n\n',
        b'data: {"choices":[],\ndata: "usage":{"prompt_tokens":2,"completion_tokens":1}}\n\n',
        b"data:[DONE]\n\n",
    ]
    meter = StreamUsage(strip_usage_event=True)
    assert relay(meter, chunks) == chunks[0] + chunks[1] + chunks[3]
    assert meter.usage(prompt_estimate=0) == Usage(2, 1, 3, "backend", None)
    assert (meter.events, meter.done) == (1, True)


def test_escaped_finish_reason() -> None:
    """A finish_reason with escapes is read whole, by a real JSON decode of the string."""
    chunk = chat_event({"content": "x"}, finish_reason='a"b\\')
    meter = StreamUsage(strip_usage_event=False)
    meter.feed(chunk)
    assert meter.finish_reason == 'a"b\\'


def test_partial_event_held_only_while_it_may_be_usage() -> None:
    """Stripping holds an incomplete event back only until its choices are seen non-empty."""
    meter = StreamUsage(strip_usage_event=True)
    content = CHAT.events[1]
    cut = content.index(b'"choices":') + 5
    assert meter.feed(content[:cut]) == b""  # could still be '"choices":[]'
    assert meter.feed(content[cut:-20]) == content[:-20]  # '"choices":[{': not usage
    assert meter.feed(content[-20:]) == content[-20:]
    usage = usage_event(1, 1)
    assert meter.feed(usage[:-1]) == b""
    assert meter.feed(usage[-1:] + DONE) == DONE
    assert meter.usage(prompt_estimate=0) == Usage(1, 1, 2, "backend", None)


def test_large_partial_event_is_released() -> None:
    """A partial event too long to be a usage event is not held back."""
    big = chat_event({"content": "x" * 20_000}).replace(b'"choices"', b'"zhoices"')
    meter = StreamUsage(strip_usage_event=True)
    assert meter.feed(big[:100]) == b""
    assert meter.feed(big[100:-1]) == big[:-1]
    assert meter.feed(big[-1:]) == big[-1:]
    assert meter.usage(prompt_estimate=0).completion_tokens == 1


def test_finish_strips_unterminated_usage_event() -> None:
    """A usage event cut short of its blank line is still read, and still stripped."""
    usage = usage_event(6, 2)[:-2]
    meter = StreamUsage(strip_usage_event=True)
    assert relay(meter, [CHAT.events[1], usage]) == CHAT.events[1]
    assert meter.usage(prompt_estimate=0) == Usage(6, 2, 8, "backend", None)


def test_finish_reads_unterminated_done() -> None:
    """A [DONE] without its blank line still marks the stream as ended properly."""
    meter = StreamUsage(strip_usage_event=False)
    relay(meter, [CHAT.events[1], b"data: [DONE]\n"])
    assert meter.done


def test_finish_flushes_held_non_usage() -> None:
    """finish() returns held bytes that are not a usage event, once."""
    meter = StreamUsage(strip_usage_event=True)
    assert meter.feed(b": partial comment") == b""
    assert meter.finish() == b": partial comment"
    assert meter.finish() == b""


def test_malformed_usage_event_is_relayed() -> None:
    """An event that mentions usage but is not JSON is relayed untouched and not read."""
    bad = b'data: {"choices":[],"usage":{"prompt_tokens":1,}\n\n'
    meter = StreamUsage(strip_usage_event=True)
    assert meter.feed(bad) is bad
    assert meter.usage(prompt_estimate=3) == Usage(3, 0, 3, "estimated", None)


def test_embeddings_style_usage_fields() -> None:
    """A usage object without completion_tokens derives it from total_tokens."""
    chunk = b'data: {"choices":[],"usage":{"prompt_tokens":4,"total_tokens":6}}\n\n'
    meter = StreamUsage(strip_usage_event=False)
    meter.feed(chunk)
    assert meter.usage(prompt_estimate=0) == Usage(4, 2, 6, "backend", None)


def test_oversized_usage_event_released_in_part_is_not_stripped() -> None:
    """A usage event so long that its start was already relayed is relayed whole, and read."""
    usage = usage_event(2, 3).replace(b'"choices"', b'"padding":"' + b"p" * 20_000 + b'","choices"')
    meter = StreamUsage(strip_usage_event=True)
    assert meter.feed(usage[:-10]) == usage[:-10]
    assert meter.feed(usage[-10:]) == usage[-10:]
    assert meter.usage(prompt_estimate=0) == Usage(2, 3, 5, "backend", None)


def test_usage_event_with_other_fields_is_stripped() -> None:
    """A usage event with an event: field first, or "data:" without a space, is read and cut."""
    chunks = [
        b'event: chunk\ndata: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
        b'data:{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
        DONE,
    ]
    meter = StreamUsage(strip_usage_event=True)
    assert [meter.feed(chunk) for chunk in chunks] == [b"", b"", DONE]
    assert meter.usage(prompt_estimate=0) == Usage(3, 4, 7, "backend", None)


@pytest.mark.parametrize("strip", [False, True])
def test_an_event_without_end_is_not_held_or_rescanned(strip: bool) -> None:
    """A backend that never ends its event (no blank line) gets relayed byte for byte without
    the scanner holding or rescanning an ever longer tail; after the blank line that finally
    comes, events are read again."""
    import time

    meter = StreamUsage(strip_usage_event=strip)
    chunk = b"data: " + b"x" * 1000 + b"\n"
    relayed = []
    started = time.perf_counter()
    for _ in range(10_000):  # 10 MB
        relayed.append(meter.feed(chunk))
    assert time.perf_counter() - started < 2.0
    assert b"".join(relayed) == chunk * 10_000
    end = b"\n" + b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n' + b"data: [DONE]\n\n"
    relayed.append(meter.feed(end))
    relayed.append(meter.finish())
    assert b"".join(relayed) == chunk * 10_000 + end
    assert meter.done

"""W3C trace context and ratio sampling, with plain values."""

from __future__ import annotations

import pytest

from llmproxy.tracing.context import (
    format_traceparent,
    parse_traceparent,
    ratio_bound,
    sampled_by_ratio,
)

GOOD = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_valid_traceparent_is_read_with_its_tracestate() -> None:
    """The spec's example is read: ids, sampled flag, and the tracestate kept as sent."""
    parent = parse_traceparent(GOOD, b"congo=t61rcWkgMzE")
    assert parent is not None
    assert parent.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert parent.span_id == 0xB7AD6B7169203331
    assert parent.sampled
    assert parent.tracestate == "congo=t61rcWkgMzE"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        GOOD[:-1],
        GOOD + b"-extra",  # version 00 is exactly 55 characters
        b"ff" + GOOD[2:],
        GOOD.replace(b"0af7651916cd43dd8448eb211c80319c", b"0" * 32),
        GOOD.replace(b"b7ad6b7169203331", b"0" * 16),
        GOOD.upper(),
        GOOD.replace(b"0af7", b"+af7"),
        GOOD.replace(b"-", b"_"),
    ],
)
def test_an_invalid_traceparent_is_ignored(value: bytes) -> None:
    """Anything the spec calls invalid gives None: the request starts its own trace."""
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    """A future version with more fields is read as version 00 would be."""
    parent = parse_traceparent(b"01" + GOOD[2:] + b"-what-comes-next")
    assert parent is not None
    assert parent.sampled


def test_traceparent_round_trip() -> None:
    """What the gateway writes, a reader reads back; unsampled is flag 00."""
    written = format_traceparent(0xABC, 0x123, sampled=False)
    assert written == "00-00000000000000000000000000000abc-0000000000000123-00"
    parent = parse_traceparent(written.encode())
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.sampled) == (
        0xABC,
        0x123,
        False,
    )


def test_ratio_sampling_keeps_that_share_of_trace_ids() -> None:
    """0 keeps none, 1 keeps all, 0.25 keeps about a quarter (by the low 64 bits)."""
    ids = [(n * 0x9E3779B97F4A7C15) & ((1 << 128) - 1) for n in range(1, 4001)]
    assert not any(sampled_by_ratio(i, ratio_bound(0.0)) for i in ids)
    assert all(sampled_by_ratio(i, ratio_bound(1.0)) for i in ids)
    kept = sum(sampled_by_ratio(i, ratio_bound(0.25)) for i in ids)
    assert 900 < kept < 1100

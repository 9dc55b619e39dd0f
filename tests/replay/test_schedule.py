"""Send times: the recording's spacing scaled by --speed, a fixed rate, and the bounds."""

from __future__ import annotations

import itertools
import statistics

import pytest

from llmproxy.replay.outgoing import Outgoing
from llmproxy.replay.schedule import (
    Arrivals,
    Bounds,
    at_rate,
    bounded,
    expected_sends,
    limited,
    recorded,
)


def _at(offset: float) -> Outgoing:
    return Outgoing("POST", "/v1/chat/completions", "m", False, b"{}", offset=offset)


def _times(timed) -> list[float]:
    return [round(at, 9) for at, _ in timed]


def test_recorded_offsets_are_kept_at_speed_one() -> None:
    assert _times(recorded([_at(0.0), _at(0.25), _at(1.5)])) == [0.0, 0.25, 1.5]


def test_speed_scales_the_spacing() -> None:
    """--speed 2 sends the same requests in half the time; 0.5 in twice the time."""
    offsets = [_at(0.0), _at(1.0), _at(3.0)]
    assert _times(recorded(offsets, speed=2.0)) == [0.0, 0.5, 1.5]
    assert _times(recorded(offsets, speed=0.5)) == [0.0, 2.0, 6.0]


def test_a_rotated_file_starts_at_its_first_offset() -> None:
    """A file that does not begin at offset 0 starts at once, not after the missing part."""
    assert _times(recorded([_at(3600.0), _at(3601.0)])) == [0.0, 1.0]


def test_an_out_of_order_line_is_sent_after_its_predecessor_not_in_the_past() -> None:
    assert _times(recorded([_at(0.0), _at(2.0), _at(1.0), _at(3.0)])) == [0.0, 2.0, 2.0, 3.0]


def test_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed"):
        list(recorded([_at(0.0)], speed=0))


def test_even_rate_is_exactly_one_over_rate_apart_without_drift() -> None:
    """Open loop at R/s: request i at i/R (computed, not summed, so no drift)."""
    times = _times(itertools.islice(at_rate(itertools.count(), 50.0), 1001))
    assert times[:3] == [0.0, 0.02, 0.04]
    assert times[1000] == 20.0


def test_rate_keeps_the_items_in_order() -> None:
    assert [item for _, item in at_rate("abc", 10.0)] == ["a", "b", "c"]


def test_poisson_arrivals_have_the_mean_rate_and_are_seeded() -> None:
    first = list(itertools.islice(at_rate(itertools.count(), 100.0, Arrivals.POISSON, 7), 5000))
    again = list(itertools.islice(at_rate(itertools.count(), 100.0, Arrivals.POISSON, 7), 5000))
    other = list(itertools.islice(at_rate(itertools.count(), 100.0, Arrivals.POISSON, 8), 5000))
    assert first == again
    assert first != other
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(first)]
    assert statistics.fmean(gaps) == pytest.approx(0.01, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.01, rel=0.1)  # exponential: sd = mean


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate"):
        at_rate([1], 0.0)


def test_open_loop_schedule_for_rate_and_duration() -> None:
    """--rate 50 --duration 2: 100 sends at 0, 0.02 … 1.98 (none at 2.0)."""
    plan = list(bounded(at_rate(itertools.count(), 50.0), Bounds(duration=2.0)))
    assert len(plan) == 100
    assert plan[-1][0] == pytest.approx(1.98)
    assert expected_sends(Bounds(duration=2.0), rate=50.0) == 100


def test_limit_bounds_an_endless_plan() -> None:
    plan = list(bounded(at_rate(itertools.count(), 1000.0), Bounds(limit=7)))
    assert [item for _, item in plan] == list(range(7))


def test_the_first_bound_reached_wins() -> None:
    rate = at_rate(itertools.count(), 10.0)
    assert len(list(bounded(rate, Bounds(limit=100, duration=1.0)))) == 10
    rate = at_rate(itertools.count(), 10.0)
    assert len(list(bounded(rate, Bounds(limit=3, duration=1.0)))) == 3


def test_duration_bounds_a_recording() -> None:
    plan = bounded(recorded([_at(t) for t in (0.0, 1.0, 2.0, 3.0)], speed=2.0), Bounds(duration=1))
    assert _times(plan) == [0.0, 0.5]


def test_no_bounds_pass_everything() -> None:
    assert len(list(bounded(at_rate(range(5), 1.0), Bounds()))) == 5


def test_closed_loop_limit() -> None:
    assert list(limited(itertools.count(), 3)) == [0, 1, 2]
    assert list(limited([1, 2], None)) == [1, 2]


@pytest.mark.parametrize(
    ("bounds", "rate", "available", "expected"),
    [
        (Bounds(), None, None, None),
        (Bounds(limit=10), None, None, 10),
        (Bounds(), None, 42, 42),
        (Bounds(limit=10), None, 4, 4),
        (Bounds(duration=2.01), 50.0, None, 101),
        (Bounds(duration=10), 500.0, 1000, 1000),
        (Bounds(duration=10), None, None, None),
    ],
)
def test_expected_sends(bounds, rate, available, expected) -> None:
    assert expected_sends(bounds, rate=rate, available=available) == expected

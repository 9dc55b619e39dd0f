"""Durations and sizes as operators write them, and their errors with lines."""

from __future__ import annotations

import pytest

from llmproxy.config.errors import ConfigError
from llmproxy.config.loader import parse_config
from llmproxy.config.reference import format_duration, format_size


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("10s", 10.0), ("1m", 60.0), ("500ms", 0.5), ("1h30m", 5400.0), ("2.5", 2.5), ("3", 3.0)],
)
def test_durations(written: str, seconds: float) -> None:
    """``10s``, ``1m``, ``500ms``, ``1h30m`` and bare seconds all load as seconds."""
    config = parse_config(f"backends:\n  - url: http://a\n    connect_timeout: {written}\n")
    assert config.backends[0].connect_timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("written", "size"), [("10MiB", 10 * 1024**2), ("512KB", 512_000), ("4096", 4096)]
)
def test_sizes(written: str, size: int) -> None:
    """``10MiB``, ``512KB`` and bare byte counts load as bytes."""
    config = parse_config(f"backends: [{{url: http://a}}]\nserver:\n  max_body_size: {written}\n")
    assert config.server.max_body_size == size


@pytest.mark.parametrize(
    ("key", "written", "message"),
    [
        (
            "read_timeout",
            "10 sec",
            "expected a duration like 10s, 500ms, 1m or 1h30m, got '10 sec'",
        ),
        ("read_timeout", "-5s", "expected a duration like 10s, 500ms, 1m or 1h30m, got '-5s'"),
        ("read_timeout", "true", "expected a duration like 10s, 500ms or 1m, not a boolean"),
        ("max_body_size", "10XB", "expected a size like 10MiB, 512KB or 1048576, got '10XB'"),
    ],
)
def test_bad_units_report_line(key: str, written: str, message: str) -> None:
    """A duration or size that does not parse is reported on its line with the accepted forms."""
    text = f"backends: [{{url: http://a}}]\nserver:\n  {key}: {written}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml")
    assert str(caught.value) == f"config.yaml:3: server.{key}: {message}"


def test_format_duration_and_size_round_trip() -> None:
    """The reference writes defaults in units that load back to the same value."""
    for seconds in (0.0, 0.05, 0.5, 2.0, 75.0, 600.0, 7200.0, 1.5):
        text = (
            f"backends: [{{url: http://a}}]\nserver:\n  read_timeout: {format_duration(seconds)}\n"
        )
        assert parse_config(text).server.read_timeout == pytest.approx(seconds)
    for size in (0, 1000, 65536, 10 * 1024**2, 512_000, 123):
        text = f"backends: [{{url: http://a}}]\nserver:\n  max_body_size: {format_size(size)}\n"
        assert parse_config(text).server.max_body_size == size

"""The shared formatting helpers and the exit-code contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from rich.console import Console

from llmproxy.cli.admin_client import AdminError, DaemonUnreachable
from llmproxy.cli.output import (
    ExitCode,
    exit_code_for,
    format_count,
    format_datetime,
    format_duration,
    format_ms,
    format_ratio,
    format_relative,
    format_time,
    json_text,
    labelled,
)
from llmproxy.finish import milliseconds


def test_exit_codes_are_the_documented_numbers() -> None:
    """Scripts depend on these numbers: changing one is a breaking change."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "REFUSED": 1,
        "USAGE": 2,
        "UNREACHABLE": 3,
    }


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, ExitCode.REFUSED),
        (409, ExitCode.REFUSED),
        (422, ExitCode.REFUSED),
        (401, ExitCode.REFUSED),
        (500, ExitCode.REFUSED),
        (400, ExitCode.USAGE),
    ],
)
def test_api_errors_map_to_refused_or_usage(status: int, code: ExitCode) -> None:
    assert exit_code_for(AdminError(status, "x", "y")) == code


def test_no_daemon_maps_to_unreachable() -> None:
    error = DaemonUnreachable("/run/x.sock", over_socket=True)
    assert exit_code_for(error) == ExitCode.UNREACHABLE


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45.9, "45s"),
        (60, "1m"),
        (723, "12m 3s"),
        (3600, "1h"),
        (3725, "1h 2m"),
        (11520, "3h 12m"),
        (86400 * 4 + 3 * 3600 + 59, "4d 3h"),
        (86400 * 2 + 30, "2d"),
        (-5, "0s"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_relative() -> None:
    assert format_relative(1000 + 90, 1000) == "in 1m 30s"
    assert format_relative(1000 - 7200, 1000) == "2h ago"


def test_time_today_shows_the_clock_else_the_date() -> None:
    now = datetime(2026, 6, 1, 15, 0, tzinfo=UTC).timestamp()
    earlier = datetime(2026, 6, 1, 9, 5, 7, tzinfo=UTC).timestamp()
    yesterday = datetime(2026, 5, 31, 23, 59, tzinfo=UTC).timestamp()
    assert format_time(earlier, now, UTC) == "09:05:07"
    assert format_time(yesterday, now, UTC) == "2026-05-31 23:59"
    assert format_time(None, now, UTC) == "-"
    assert format_datetime(earlier, UTC) == "2026-06-01 09:05"
    assert format_datetime(None) == "-"


def test_numbers() -> None:
    assert format_count(1234567) == "1,234,567"
    assert format_count(None) == "-"
    assert format_ms(812.46) == "812"
    assert format_ms(1234.5) == "1,234"
    assert format_ms(3.14159) == "3.1"
    assert format_ms(None) == "-"
    assert format_ratio(0.025) == "2.5%"
    assert format_ratio(None) == "-"


def test_labelled_lines_align_without_trailing_blanks() -> None:
    console = Console(width=200, color_system=None)
    with console.capture() as captured:
        console.print(labelled([("pid", "12", ""), ("last reload", "ok", "red")]))
    assert captured.get().splitlines() == ["pid          12", "last reload  ok"]


def test_json_rounds_milliseconds_and_nothing_else() -> None:
    """Float noise in any ``*_ms`` figure (nested too) is rounded to 0.01; costs keep digits."""
    document = {
        "latency_ms": 101.99999999997544,
        "results": {"ttft_ms": {"p50": 12.345678, "count": 3}, "error_rate": 0.123456},
        "records": [{"ttft_ms": None, "cost": 1.5e-07, "time": 1712345678.123456}],
    }
    assert json.loads(json_text(document)) == {
        "latency_ms": 102.0,
        "results": {"ttft_ms": {"p50": 12.35, "count": 3}, "error_rate": 0.123456},
        "records": [{"ttft_ms": None, "cost": 1.5e-07, "time": 1712345678.123456}],
    }
    assert milliseconds(0.102) == 102.0

"""``llmproxy replay`` options, usage errors and ``--compare``, without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llmproxy.cli.replay_render import (
    format_delta,
    format_latency,
    headline,
    render_report,
)
from llmproxy.replay.compare import Unit
from llmproxy.replay.progress import ProgressView
from llmproxy.replay.report import REPORT_FORMAT
from llmproxy.replay.runner import Live
from tests.replay.recordings import with_shape, write
from tests.replay.servers import closed_port, invoke

TARGET = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a recording FILE to replay, or --synthetic"),
        (["rec.jsonl", "--synthetic"], "not both"),
        (["--synthetic", "--rate", "5", "--limit", "1"], "--target URL is required"),
        (["--synthetic", "-t", "localhost:8000", "--rate", "1", "-n", "1"], "--target: expected"),
        (["--synthetic", "-t", TARGET, "--limit", "3"], "needs --rate R"),
        (["--synthetic", "-t", TARGET, "--rate", "3"], "needs a bound"),
        (["--synthetic", "-t", TARGET, "--rate", "3", "--concurrency", "2"], "exclude each other"),
        (["--synthetic", "-t", TARGET, "--rate", "0", "-n", "1"], "--rate must be above 0"),
        (["--synthetic", "-t", TARGET, "--concurrency", "0", "-n", "1"], "at least 1"),
        (["rec.jsonl", "-t", TARGET, "--speed", "0"], "--speed must be above 0"),
        (["rec.jsonl", "-t", TARGET, "--speed", "2", "--rate", "4"], "--speed scales"),
        (["rec.jsonl", "-t", TARGET, "--arrivals", "poisson"], "give --rate too"),
        (["rec.jsonl", "-t", TARGET, "--duration", "soon"], "--duration: expected a duration"),
        (["rec.jsonl", "-t", TARGET, "--limit", "0"], "--limit must be at least 1"),
        (["rec.jsonl", "-t", TARGET, "--timeout", "0"], "--timeout must be above 0"),
        (["rec.jsonl", "-t", TARGET, "--max-error-rate", "5"], "fraction from 0 to 1"),
        (["rec.jsonl", "-t", TARGET, "-H", "no colon"], "--header: expected 'Name: value'"),
        (["rec.jsonl", "-t", TARGET, "--connections", "0"], "--connections must be at least 1"),
        (
            [
                "--synthetic",
                "-t",
                TARGET,
                "-n",
                "1",
                "--rate",
                "1",
                "--spread",
                "2",
                "--prompt-dist",
                "uniform",
            ],
            "uniform spread",
        ),
        (["missing.jsonl", "-t", TARGET], "missing.jsonl: No such file"),
        (["rec.jsonl", "-t", TARGET, "--output", "/nonexistent/r.json"], "not a directory"),
    ],
)
def test_usage_errors_exit_2_before_sending(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_a_recording_without_requests(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", ["{", "[]"])
    result = invoke(str(path), "-t", f"http://127.0.0.1:{closed_port()}")
    assert result.exit_code == 2
    assert "line 1: " in result.stderr
    assert "line 2: " in result.stderr
    assert "no request to replay" in result.stderr


def test_a_dead_target_for_a_recording(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", [with_shape(0.0)])
    result = invoke(str(path), "-t", f"http://127.0.0.1:{closed_port()}/v1")
    assert result.exit_code == 3
    assert "the target is unreachable" in result.stderr


def _report(ttft: float, rps: float, target: str = "http://a") -> dict[str, Any]:
    return {
        "llmproxy_replay": REPORT_FORMAT,
        "settings": {"target": target, "mode": "open loop at 10 req/s (even)"},
        "results": {
            "sent": 100,
            "wall_s": 10.0,
            "request_rate": rps,
            "error_rate": 0.0,
            "ttft_ms": {"p50": ttft, "p90": ttft * 2},
        },
    }


def test_compare_shows_both_runs_and_the_differences(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(100.0, 10.0)))
    b.write_text(json.dumps(_report(120.0, 10.0, target="http://b")))
    result = invoke("--compare", str(a), str(b))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"A {a}: 100 requests to http://a in 10.0 s")
    assert lines[1].startswith(f"B {b}: 100 requests to http://b")
    ttft = next(line for line in lines if line.startswith("TTFT p50 ms"))
    assert ttft.split() == ["TTFT", "p50", "ms", "100", "120", "+20", "+20.0%"]
    assert "The runs differ in:" in result.stdout
    assert any(line.split() == ["target", "http://a", "http://b"] for line in lines)


def test_compare_as_json(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_report(100.0, 10.0)))
    out = tmp_path / "cmp.json"
    result = invoke("--compare", str(a), str(a), "--output", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert {m["verdict"] for m in metrics if m["a"] is not None} == {"same"}


def test_compare_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text("{}")
    result = invoke("--compare", str(a), str(a))
    assert result.exit_code == 2
    assert "not a report of llmproxy replay --json or --output" in result.stderr
    result = invoke("--compare", str(a), str(a), "--synthetic")
    assert result.exit_code == 2
    assert "runs nothing" in result.stderr


def test_formatting() -> None:
    assert format_latency(0.456) == "0.46"
    assert format_latency(12.3) == "12"
    assert format_latency(None) == "-"
    assert format_delta(-2.5, Unit.MS) == "-2.5"
    assert format_delta(0.02, Unit.RATIO) == "+2.0 pt"
    assert format_delta(0.0, Unit.COUNT) == "±0"
    report = _report(1.0, 1.0)
    report["results"]["interrupted"] = True
    assert headline(report).endswith("(interrupted)")


def test_render_report_shows_warnings_and_errors() -> None:
    report = _report(5.0, 10.0)
    report["results"].update(
        statuses={"200": 90, "none": 10},
        errors={"connect": 10},
        error_examples={"connect": "Cannot connect\n to host"},
        failed=10,
    )
    report["client"] = {"warnings": ["the client lagged"]}
    console = Console(file=io.StringIO(), width=200)
    console.print(render_report(report))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "HTTP 200" in text
    assert "no response" in text
    assert "error: connect" in text
    assert "Cannot connect to host" in text
    assert "warning: the client lagged" in text


def test_progress_view_shows_rate_errors_and_ttft() -> None:
    live = Live(sent=10, done=8, errors=1)
    live.recent_ttft_ms.extend([10.0, 20.0, 30.0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with ProgressView(live, total=20, duration=None, console=console) as view:
        view.refresh()
    text = out.getvalue()
    assert "8/20" in text
    assert "1 errors" in text
    assert "TTFT p50 20.0 ms" in text
    out = io.StringIO()
    with ProgressView(Live(), total=None, duration=5.0, console=Console(file=out, width=160)):
        pass
    assert "/5 s" in out.getvalue()

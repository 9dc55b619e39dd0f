"""``llmproxy replay`` over real HTTP: against the mock directly and through the gateway."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmproxy.mock import MockSettings
from llmproxy.record.format import RecordedRequest
from llmproxy.replay.client import open_session
from llmproxy.replay.outgoing import from_recorded
from llmproxy.replay.runner import Runner
from llmproxy.replay.schedule import at_rate
from tests.harness import gateway, make_config
from tests.replay.recordings import chat_body, with_body, with_shape, write
from tests.replay.servers import RecordingMock, cli, closed_port

MODELS = ("llama", "qwen")


@pytest.fixture
async def mock() -> AsyncIterator[RecordingMock]:
    backend = RecordingMock(MockSettings(models=MODELS))
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()


def _mixed_recording(path: Path) -> tuple[Path, list[RecordedRequest]]:
    """Bodies and shapes, chat, completions and embeddings, two models, one broken line."""
    requests = [
        with_body(0.00, chat_body("llama")),
        with_body(0.10, chat_body("qwen", stream=False)),
        with_shape(0.20, model="llama", stream=True, max_tokens=5),
        with_shape(0.25, "/v1/completions", model="qwen", prompt_chars=80, messages=()),
        with_body(0.30, {"model": "llama", "input": ["a", "b"]}, endpoint="/v1/embeddings"),
        with_shape(0.40, model="qwen", completion_tokens=7),
        with_body(0.50, chat_body("llama", tokens=9)),
    ]
    lines: list[RecordedRequest | str] = [*requests[:3], "{broken", *requests[3:]]
    return write(path, lines), requests


def _expected(requests: list[RecordedRequest]) -> Counter[tuple[str, str, str]]:
    return Counter((r.method, r.endpoint, r.model) for r in requests)


def _report(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


async def test_replay_a_recording_directly_against_the_mock(
    mock: RecordingMock, tmp_path: Path
) -> None:
    """Every recorded request arrives once, at the recorded endpoint, for the recorded model."""
    path, requests = _mixed_recording(tmp_path / "rec.jsonl")
    report = tmp_path / "report.json"
    result = await cli(str(path), "--target", mock.url, "--speed", "10", "--output", str(report))
    assert result.exit_code == 0, result.output
    assert f"{path}: line 4: " in result.stderr
    assert "skipped" in result.stderr
    assert Counter(mock.seen) == _expected(requests)
    results = _report(report)["results"]
    assert (results["sent"], results["ok"], results["failed"]) == (7, 7, 0)
    assert Counter(results["by_endpoint"]) == Counter(r.endpoint for r in requests)
    assert Counter(results["by_model"]) == Counter(r.model for r in requests)
    assert results["statuses"] == {"200": 7}
    # Output tokens: 4 + 4 (bodies ask for 4), 5, mock default 16, 7, 9; embeddings none.
    assert results["output_tokens"] == 4 + 4 + 5 + 16 + 7 + 9
    assert _report(report)["source"]["problems"][0]["line"] == 4
    assert "7 requests to " in result.stdout
    assert "time to first token" in result.stdout


async def test_replay_a_recording_through_the_gateway(mock: RecordingMock, tmp_path: Path) -> None:
    path, requests = _mixed_recording(tmp_path / "rec.jsonl")
    async with gateway(make_config([{"url": mock.url}])) as gw:
        result = await cli(str(path), "--target", gw.url + "/v1", "--speed", "10", "-q")
    assert result.exit_code == 0, result.output
    assert Counter(mock.seen) == _expected(requests)
    assert "7 requests to " in result.stdout


async def test_requests_are_sent_in_arrival_order_across_files(
    mock: RecordingMock, tmp_path: Path
) -> None:
    """Lines written as requests ended, in two workers' files: sent in order of arrival."""

    def line(offset: float, time: float, tokens: int) -> RecordedRequest:
        return msgspec.structs.replace(with_shape(offset, max_tokens=tokens), time=time)

    w0 = write(tmp_path / "rec.w0.jsonl", [line(0.3, 1000.3, 4), line(0.0, 1000.0, 1)])
    w1 = write(tmp_path / "rec.w1.jsonl", [line(7.2, 1000.2, 3), line(7.1, 1000.1, 2)])
    result = await cli(str(w0), str(w1), "-t", mock.url, "--speed", "3", "--json")
    assert result.exit_code == 0, result.output
    assert [body["max_tokens"] for body in mock.bodies] == [1, 2, 3, 4]
    source = json.loads(result.stdout)["source"]
    assert (source["ordered_by"], source["span_s"]) == ("time", 0.3)


async def test_model_override(mock: RecordingMock, tmp_path: Path) -> None:
    path, requests = _mixed_recording(tmp_path / "rec.jsonl")
    result = await cli(str(path), "-t", mock.url, "--speed", "10", "--model", "qwen")
    assert result.exit_code == 0, result.output
    assert {model for _, _, model in mock.seen} == {"qwen"}
    assert len(mock.seen) == len(requests)


async def test_speed_two_halves_the_wall_time(mock: RecordingMock, tmp_path: Path) -> None:
    """A recording spanning 2 s (a rotated file: offsets from 100 s) replays in 1 s at 2x."""
    path = write(tmp_path / "rec.jsonl", [with_shape(100 + i / 10) for i in range(21)])
    report = tmp_path / "report.json"
    started = time.perf_counter()
    result = await cli(str(path), "-t", mock.url, "--speed", "2", "--output", str(report))
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    results = _report(report)["results"]
    assert results["sent"] == 21
    assert results["wall_s"] == pytest.approx(1.0, rel=0.1)
    assert elapsed < 2.0  # not the recording's own 2 s


async def test_open_loop_rate_holds(mock: RecordingMock, tmp_path: Path) -> None:
    """--rate 50 for 2 s sends 100 requests, 50 per second within 5 %."""
    report = tmp_path / "report.json"
    result = await cli(
        "--synthetic",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--prompt-tokens",
        "16",
        "--output-tokens",
        "4",
        "-t",
        mock.url,
        "--output",
        str(report),
    )
    assert result.exit_code == 0, result.output
    document = _report(report)
    results = document["results"]
    assert results["sent"] == 100
    assert len(mock.seen) == 100
    assert results["send_rate"] == pytest.approx(50, rel=0.05)
    assert results["wall_s"] == pytest.approx(2.0, rel=0.05)
    assert document["settings"]["synthetic"]["model"] == "llama"  # the first of /v1/models
    assert {model for _, _, model in mock.seen} == {"llama"}


async def test_open_loop_does_not_wait_for_slow_answers(tmp_path: Path) -> None:
    """Answers taking 0.5 s do not slow the sends, and latency includes the full 0.5 s."""
    async with RecordingMock(MockSettings(ttft=0.5)) as slow:
        report = tmp_path / "report.json"
        result = await cli(
            "--synthetic",
            "--rate",
            "40",
            "--limit",
            "20",
            "--output-tokens",
            "2",
            "--output-dist",
            "fixed",
            "-t",
            slow.url,
            "--output",
            str(report),
        )
    assert result.exit_code == 0, result.output
    results = _report(report)["results"]
    assert results["send_rate"] == pytest.approx(40, rel=0.05)
    assert results["ttft_ms"]["p50"] >= 500
    assert results["wall_s"] < 0.5 + 20 / 40 + 0.3


async def test_synthetic_closed_loop_counts_tokens_from_usage(mock: RecordingMock) -> None:
    result = await cli(
        "--synthetic",
        "--concurrency",
        "4",
        "--limit",
        "20",
        "--output-tokens",
        "8",
        "--output-dist",
        "fixed",
        "--model",
        "qwen",
        "-t",
        mock.url,
        "--json",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    results = document["results"]
    assert (results["sent"], results["ok"]) == (20, 20)
    assert results["output_tokens"] == 160
    assert results["itl_ms"]["count"] == 20
    assert document["settings"]["mode"] == "closed loop, 4 concurrent"
    assert mock.stats.peak_in_flight <= 4
    assert {model for _, _, model in mock.seen} == {"qwen"}


async def test_a_dead_target_exits_3_at_once() -> None:
    started = time.perf_counter()
    result = await cli(
        "--synthetic", "--rate", "10", "--limit", "5", "-t", f"http://127.0.0.1:{closed_port()}"
    )
    assert result.exit_code == 3
    assert result.stderr.startswith("error: the target is unreachable: http://127.0.0.1:")
    assert "Cannot connect" in result.stderr
    assert result.stdout == ""  # no table of 100 % errors
    assert time.perf_counter() - started < 3


async def test_a_target_dead_on_the_first_request_stops_the_run() -> None:
    """Without a pre-flight (the runner alone): the first request cannot connect → abort."""
    port = closed_port()
    request = from_recorded(with_body(0.0, chat_body()))
    session = open_session({}, connections=10, timeout=5)
    try:
        runner = Runner(session, f"http://127.0.0.1:{port}")
        started = time.perf_counter()
        result = await runner.open_loop(at_rate([request] * 500, 100.0))
    finally:
        await session.close()
    assert result.unreachable is not None
    assert "Cannot connect" in result.unreachable
    assert len(result.samples) < 10
    assert time.perf_counter() - started < 1


async def test_an_interrupted_run_reports_what_finished(mock: RecordingMock) -> None:
    request = from_recorded(with_body(0.0, chat_body("llama")))
    session = open_session({}, connections=10, timeout=5)
    try:
        runner = Runner(session, mock.url)
        task = asyncio.ensure_future(runner.open_loop(at_rate([request] * 1000, 50.0)))
        await asyncio.sleep(0.3)
        task.cancel()
        result = await task
    finally:
        await session.close()
    assert result.interrupted
    assert 5 <= len(result.samples) <= 25
    assert all(sample.ok for sample in result.samples)


async def test_errors_are_classified(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rec.jsonl",
        [
            with_body(0.0, chat_body(stream=True, tokens=6)),
            with_body(0.01, chat_body(stream=False, tokens=6)),
        ],
    )
    async with RecordingMock() as mock:
        report = tmp_path / "a.json"
        result = await cli(
            str(path),
            "-t",
            mock.url,
            "-H",
            "x-mock-fault: reset_mid",
            "-H",
            "x-mock-fault-after: 2",
            "--output",
            str(report),
        )
        assert result.exit_code == 0, result.output
        results = _report(report)["results"]
        assert results["errors"] == {"broken_stream": 1, "disconnected": 1}
        assert results["statuses"] == {"200": 1, "none": 1}
        assert "error: broken_stream" in result.stdout

        result = await cli(
            str(path),
            "-t",
            mock.url,
            "-H",
            "x-mock-fault: 500",
            "--max-error-rate",
            "0.5",
        )
        assert result.exit_code == 1
        assert "100.00% of the requests failed, above --max-error-rate 50.00%" in result.stderr
        assert "error: http_500" in result.stdout

        report = tmp_path / "b.json"
        result = await cli(
            str(path),
            "-t",
            mock.url,
            "-H",
            "x-mock-ttft: 5",
            "--timeout",
            "0.3",
            "--output",
            str(report),
            "--max-error-rate",
            "1",
        )
        assert result.exit_code == 0, result.output
        assert _report(report)["results"]["errors"] == {"timeout": 2}


async def test_the_key_is_sent_as_a_bearer_token(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", [with_shape(0.0, model="mock-model")])
    async with RecordingMock(MockSettings(api_key="sk-test")) as mock:
        refused = await cli(str(path), "-t", mock.url)
        assert refused.exit_code == 2
        assert "answered 401: the target refused the key" in refused.stderr
        by_option = await cli(str(path), "-t", mock.url, "--key", "sk-test", "--json")
        assert by_option.exit_code == 0, by_option.output
        assert json.loads(by_option.stdout)["settings"]["key"] == "set"  # never the key itself
        assert "sk-test" not in by_option.stdout
        by_env = await cli(str(path), "-t", mock.url, "-q", env={"LLMPROXY_KEY": "sk-test"})
        assert by_env.exit_code == 0, by_env.output
    assert len(mock.seen) == 2


async def test_strict_refuses_a_malformed_recording_before_sending(
    mock: RecordingMock, tmp_path: Path
) -> None:
    path = write(tmp_path / "rec.jsonl", [with_shape(0.0), "{nope", with_shape(0.1)])
    result = await cli(str(path), "-t", mock.url, "--strict")
    assert result.exit_code == 2
    assert f"{path}: line 2: " in result.stderr
    assert "nothing was sent" in result.stderr
    assert mock.seen == []


async def test_closed_loop_stops_sending_at_the_duration(mock: RecordingMock) -> None:
    result = await cli(
        "--synthetic",
        "--concurrency",
        "2",
        "--duration",
        "500ms",
        "--output-tokens",
        "2",
        "-t",
        mock.url,
        "-H",
        "x-mock-ttft: 0.05",
        "--json",
    )
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert 14 <= results["sent"] <= 22  # 2 workers x 0.5 s / 0.05 s, give or take one each
    assert results["wall_s"] == pytest.approx(0.5, abs=0.1)
    assert mock.stats.peak_in_flight <= 2


async def test_messages_and_responses_are_replayed_with_their_stream_timings(
    mock: RecordingMock, tmp_path: Path
) -> None:
    """Anthropic Messages and OpenAI Responses lines — bodies and shapes, streamed and not —
    are sent as their APIs want them (no ``stream_options``; Messages always with
    ``max_tokens``) and their streams are timed and counted from their own events."""
    messages = {
        "model": "llama",
        "max_tokens": 6,
        "stream": True,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }
    responses = {"model": "qwen", "input": "hello", "stream": True, "max_output_tokens": 5}
    requests = [
        with_body(0.00, messages, endpoint="/v1/messages"),
        with_body(0.05, {**messages, "stream": False}, endpoint="/v1/messages"),
        with_body(0.10, responses, endpoint="/v1/responses"),
        with_shape(0.15, "/v1/messages", model="llama", stream=True, max_tokens=3),
        with_shape(0.20, "/v1/responses", model="qwen", stream=True, max_tokens=4),
    ]
    path = write(tmp_path / "rec.jsonl", requests)
    report = tmp_path / "report.json"
    result = await cli(str(path), "--target", mock.url, "--speed", "10", "--output", str(report))
    assert result.exit_code == 0, result.output
    results = _report(report)["results"]
    assert (results["sent"], results["ok"], results["failed"]) == (5, 5, 0)
    assert results["output_tokens"] == 6 + 6 + 5 + 3 + 4
    assert Counter(results["by_endpoint"]) == {"/v1/messages": 3, "/v1/responses": 2}
    assert results["ttft_ms"]["count"] == 5  # four streams and the non-streamed body's first byte
    assert "time to first token" in result.stdout


async def test_json_is_a_flag_and_output_takes_the_path(
    mock: RecordingMock, tmp_path: Path
) -> None:
    """The issue's reproduction: ``--json`` before another option is a flag, never a path;
    ``--output PATH`` writes the same document; milliseconds carry at most two decimals."""
    report = tmp_path / "run.json"
    args = ("--synthetic", "-n", "3", "--concurrency", "1", "--model", "qwen", "-t", mock.url)
    both = await cli(*args, "--json", "--output", str(report), "--quiet")
    assert both.exit_code == 0, both.output
    printed = json.loads(both.stdout)  # nothing but the document on stdout
    assert printed == _report(report)
    assert printed["results"]["sent"] == 3
    for name in ("ttft_ms", "latency_ms", "itl_ms"):
        for figure in printed["results"][name].values():
            assert figure is None or round(figure, 2) == figure
    table = await cli(*args, "--output", str(report))
    assert table.exit_code == 0, table.output
    assert "total latency" in table.stdout  # the table, and the file beside it
    assert _report(report)["results"]["sent"] == 3
    stray = await cli(*args, "--json", "--config", "gw.yaml")
    assert stray.exit_code == 2  # an unknown option, not a path for --json

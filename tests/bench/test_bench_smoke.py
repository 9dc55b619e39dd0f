"""The benchmark's pure parts: statistics, /proc parsing, generated configs and wrk output.

The benchmark itself is not run here: it is a timed report, and a slow CI machine must not fail it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import build_request
from bench.report import overhead, verdicts
from bench.stats import (
    median,
    parse_proc_pid_stat,
    parse_proc_stat_busy,
    percentile,
    process_cpu_seconds,
)
from bench.targets import ensure_tools, render_gateway_config, render_nginx_conf
from bench.wrk import parse_wrk_output, render_lua
from llmproxy.config.model import Config


def test_percentile_interpolates_linearly() -> None:
    """Percentiles interpolate between ranks like numpy's default, on unsorted input too."""
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile(list(range(101)), 99) == 99
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan() -> None:
    """A run that completed nothing yields NaN rather than an exception."""
    assert math.isnan(percentile([], 50))


def test_median_skips_nan() -> None:
    """The median over rounds ignores rounds that measured nothing."""
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([math.nan]))


def test_proc_pid_stat_counts_fields_after_the_command_name() -> None:
    """utime + stime are found even when the command name holds spaces and parentheses."""
    fields = ["S", "42"] + ["0"] * 9 + ["150", "25"] + ["0"] * 30
    text = "1234 (python (x) y) " + " ".join(fields)
    assert parse_proc_pid_stat(text) == (42, 175)


def test_proc_stat_busy_leaves_idle_and_interrupts_out() -> None:
    """Busy is user + nice + system + steal; idle, iowait, irq and softirq count in total only."""
    text = "cpu  100 5 20 800 10 3 7 2 0 0\ncpu0 50 2 10 400 5 1 3 1 0 0\n"
    assert parse_proc_stat_busy(text) == (127, 947)
    with pytest.raises(ValueError, match="cpu"):
        parse_proc_stat_busy("intr 1 2 3\n")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_process_cpu_seconds_reads_this_process() -> None:
    """The /proc reader returns a plausible CPU time for the running test process."""
    assert 0 < process_cpu_seconds(os.getpid(), with_children=False) < 3600


def test_wrk_output_is_parsed_from_the_bench_line() -> None:
    """The BENCH line of the Lua done() hook gives requests, rate, percentiles and errors."""
    stdout = (
        "Running 5s test @ http://127.0.0.1:8000/v1/chat/completions\n"
        "  2 threads and 64 connections\n"
        "BENCH requests=12000 duration_us=5000000 p50_us=4230 p99_us=20610 "
        "socket_errors=2 status_errors=1\n"
    )
    result = parse_wrk_output(stdout)
    assert (result.requests, result.p50_ms, result.p99_ms, result.errors) == (12000, 4.23, 20.61, 3)
    assert result.rps == 2400.0
    with pytest.raises(ValueError, match="no BENCH line"):
        parse_wrk_output("Requests/sec: 100\n")


def test_wrk_script_posts_a_json_chat_body() -> None:
    """The Lua script's body is valid JSON for a non-streamed chat completion."""
    script = render_lua(tokens=16)
    body = script.split("wrk.body = '", 1)[1].split("'\n", 1)[0]
    assert json.loads(body)["model"] == "mock-model"
    assert '"x-mock-tokens"] = "16"' in script


def test_loadgen_request_is_well_formed_http() -> None:
    """The generator's raw request has a Content-Length matching its body and the mock headers."""
    head, body = build_request(8000, stream=True, tokens=64, itl=0.005).split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"x-mock-itl: 0.005" in head
    assert json.loads(body)["stream"] is True


def test_gateway_config_is_valid() -> None:
    """The generated gateway config passes the gateway's own config model."""
    config = Config.model_validate(json.loads(render_gateway_config(8000, 9001)))
    assert config.backends[0].url == "http://127.0.0.1:9001"
    assert not config.health_check.enabled
    assert config.server.workers == 1


def test_nginx_conf_is_unbuffered_keepalive_and_local(tmp_path: Path) -> None:
    """The nginx config proxies unbuffered over keep-alive and writes only into its directory."""
    conf = render_nginx_conf(tmp_path, 8080, 9001, missing_modules=frozenset({"scgi"}))
    for directive in (
        "worker_processes 1;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "keepalive 1024;",
        "listen 127.0.0.1:8080;",
        "server 127.0.0.1:9001;",
        f"pid {tmp_path}/nginx.pid;",
        f"proxy_temp_path {tmp_path}/proxy_temp;",
    ):
        assert directive in conf
    assert "scgi_temp_path" not in conf


@pytest.mark.timeout(600)  # a first run installs nginx with apt-get
def test_nginx_accepts_the_generated_config(tmp_path: Path) -> None:
    """``nginx -t`` accepts the rendered config without root (nginx is installed as the bench
    installs it, so the check is never skipped)."""
    _wrk, nginx = ensure_tools(want_nginx=True)
    assert nginx is not None, "nginx is needed: apt-get install -y nginx-light"
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(tmp_path, 8080, 9001, missing_modules=frozenset()))
    command = [nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_overhead_and_verdicts_from_medians() -> None:
    """Ratios and added latency come from the medians, and the four targets are judged."""
    row = {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_ms_per_req": 0.5}
    summary = {
        "single": {"direct": row, "gateway": {**row, "rps": 500.0, "p50_ms": 1.8}},
        "stream16": {"gateway": row, "core": {**row, "cpu_ms_per_req": 0.4}},
    }
    added = overhead(summary)
    assert added["single"]["gateway_vs_direct_rps"] == 0.5
    assert added["single"]["gateway_added_p50_ms"] == pytest.approx(0.8)
    assert math.isnan(added["single"]["nginx_added_p50_ms"])
    assert added["stream16"]["accounting_cpu_share"] == pytest.approx(0.25)
    checks = verdicts(summary, added)
    # single +0.8 ms (goal 0.5), stream16 CPU, nonstream share, CPU over nginx, accounting.
    assert [check["met"] for check in checks] == [False, True, None, None, False]
    assert checks[4]["value"] == pytest.approx(25.0)
    decode_rows = [
        {"streams": 300, "loop": "open", "gateway_added_p50_ms": 1.5, "gateway_added_p99_ms": 12.0,
         "gateway_vs_direct_rps": 1.0, "cpu_per_chunk_vs_nginx": 1.8},
        {"streams": 1000, "loop": "open", "gateway_added_p50_ms": 4.0, "gateway_added_p99_ms": 40.0,
         "gateway_vs_direct_rps": 0.98, "cpu_per_chunk_vs_nginx": 2.5},
    ]  # fmt: skip
    judged = {c["target"]: c["met"] for c in verdicts(summary, added, decode_rows)[5:]}
    assert judged == {
        "300 streams: added TTFT p50": True,
        "300 streams: added TTFT p99": False,
        "300 streams: CPU per relayed chunk over nginx's": True,
        "1,000 streams: added TTFT p50": True,
        "1,000 streams: added TTFT p99": True,
        "1,000 streams: streams/s over direct's": False,
        "1,000 streams: CPU per relayed chunk over nginx's": False,
    }
    burst = [{**decode_rows[0], "loop": "closed", "gateway_added_p50_ms": 25.0}]
    assert [(c["target"], c["met"]) for c in verdicts(summary, added, burst)[5:]] == [
        ("300 streams arriving together: added TTFT p50", False)
    ]


def test_bench_cli_rejects_unknown_scenarios() -> None:
    """``python -m bench --scenarios`` names an unknown scenario instead of running."""
    command = [sys.executable, "-m", "bench", "--scenarios", "nope"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, check=False)
    assert done.returncode == 2
    assert "unknown nope" in done.stderr

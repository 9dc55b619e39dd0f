"""Turn the samples of all rounds into medians, overhead ratios, target verdicts and tables."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.runner import Sample
from bench.stats import median

Summary = dict[str, dict[str, dict[str, Any]]]
"""``{scenario: {target: {metric: median over the rounds}}}``."""
Overhead = dict[str, dict[str, float]]
"""``{scenario: {ratio or added latency: value}}``."""
Verdict = dict[str, Any]

_METRICS = (
    "rps", "p50_ms", "p99_ms", "total_p50_ms", "cpu_ms_per_req", "serving_cpu",
    "mock_cpu", "generator_cpu", "generator_lag_p99_ms", "background_cpu",
)  # fmt: skip
_TARGETS = ("direct", "gateway", "nginx", "core")
_LEGEND = """\
  ± half the range of req/s over the rounds. p50/p99: time to first token when streaming, latency
  of the whole answer otherwise; total p50: to the end of the stream. CPU ms/req: CPU time of the
  serving process (the mock itself for direct) per completed request. serving, mock, loadgen,
  others: CPU used during the run in cores (1.00 = one core); others = processes not ours.
  gen lag p99: event-loop lag of the Python load generator (ms, with ~1 ms timer granularity).
  core: the same gateway with usage records and metrics off; "accounting CPU" is how much more CPU
  per request the full gateway uses than core. "mock saturated": direct is limited by the mock
  there, so the ratios compare the proxies under a fixed backend capacity."""
UNSTABLE = 0.20
"""Rounds whose req/s differ by more than this share of the median are flagged."""


def environment(wrk: str | None, nginx: str | None) -> dict[str, Any]:
    """Cores, CPU model, load and versions: what a reader needs to compare two reports."""

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "-"

    def tool_version(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        first = (done.stdout + done.stderr).strip().splitlines()[0]
        return first.split(" Copyright")[0]

    model = "-"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "loadavg_1m": os.getloadavg()[0],
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{pkg: version(pkg) for pkg in ("llmproxy", "aiohttp", "uvicorn", "uvloop", "httptools")},
        "wrk": tool_version([wrk, "-v"]) if wrk else "missing",
        "nginx": tool_version([nginx, "-v"]) if nginx else "not used",
    }


def summarize(samples: list[Sample]) -> Summary:
    """Medians over the rounds of every (scenario, target), with the rounds' warnings merged."""
    runs: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        runs.setdefault((sample.scenario, sample.target), []).append(sample)
    summary: Summary = {}
    for (scenario, target), group in runs.items():
        row: dict[str, Any] = {key: median(getattr(s, key) for s in group) for key in _METRICS}
        rates = [s.rps for s in group]
        row["rps_spread"] = (max(rates) - min(rates)) / row["rps"] if len(rates) > 1 else math.nan
        row["requests"] = sum(s.requests for s in group)
        row["errors"] = sum(s.errors for s in group)
        row["warnings"] = sorted({note for s in group for note in s.warnings()})
        if row["rps_spread"] > UNSTABLE:
            row["warnings"].append(f"rounds differ by {row['rps_spread']:.0%}")
        summary.setdefault(scenario, {})[target] = row
    return summary


def overhead(summary: Summary) -> Overhead:
    """Per scenario: throughput ratios and added latency (ms) of the gateway and of nginx.

    Latency is time to first token for streaming scenarios and whole-answer latency otherwise.
    """
    result: Overhead = {}
    missing = {key: math.nan for key in _METRICS}
    for scenario, rows in summary.items():
        direct, gateway, nginx, core = (rows.get(target, missing) for target in _TARGETS)
        result[scenario] = {
            "accounting_cpu_share": gateway["cpu_ms_per_req"] / core["cpu_ms_per_req"] - 1,
            "gateway_vs_direct_rps": gateway["rps"] / direct["rps"],
            "gateway_vs_nginx_rps": gateway["rps"] / nginx["rps"],
            "gateway_added_p50_ms": gateway["p50_ms"] - direct["p50_ms"],
            "gateway_added_p99_ms": gateway["p99_ms"] - direct["p99_ms"],
            "nginx_added_p50_ms": nginx["p50_ms"] - direct["p50_ms"],
            "nginx_added_p99_ms": nginx["p99_ms"] - direct["p99_ms"],
            "gateway_minus_nginx_p50_ms": gateway["p50_ms"] - nginx["p50_ms"],
        }
    return result


def verdicts(
    summary: Summary, added: Overhead, decode_rows: list[dict[str, Any]] | None = None
) -> list[Verdict]:
    """The targets, each with its measured value; ``met`` is None when not run.

    ``decode_rows`` (from :func:`bench.decode.summarize`) are judged by concurrency: the open
    loop at 300 and 1,000 streams; with ``--loop closed`` their rows are bursts instead.
    """
    nan = math.nan
    nonstream = summary.get("nonstream", {})
    checks = [
        ("added TTFT p50, one request at a time", "ms", "<=", 0.5,
         added.get("single", {}).get("gateway_added_p50_ms", nan)),
        ("gateway CPU per streamed request (16 chunks)", "ms", "<=", 1.0,
         summary.get("stream16", {}).get("gateway", {}).get("cpu_ms_per_req", nan)),
        ("non-streamed req/s, c=64, as a share of nginx's", "×", ">=", 1 / 3,
         added.get("nonstream", {}).get("gateway_vs_nginx_rps", nan)),
        ("CPU per non-streamed request, over nginx's", "×", "<=", 5.0,
         nonstream.get("gateway", {}).get("cpu_ms_per_req", nan)
         / nonstream.get("nginx", {}).get("cpu_ms_per_req", nan)),
        ("CPU added by usage records + metrics, streamed (16 chunks)", "%", "<=", 15.0,
         added.get("stream16", {}).get("accounting_cpu_share", nan) * 100),
    ]  # fmt: skip
    for row in decode_rows or ():
        streams = int(row["streams"])
        label = f"{streams:,} streams"
        if row.get("loop") == "closed":
            if streams == 300:
                checks.append((f"{label} arriving together: added TTFT p50", "ms", "<=", 20.0,
                               row["gateway_added_p50_ms"]))  # fmt: skip
            continue
        limits = {300: (2.0, 10.0), 1000: (5.0, 50.0)}.get(streams)
        if limits is not None:
            checks += [
                (f"{label}: added TTFT p50", "ms", "<=", limits[0], row["gateway_added_p50_ms"]),
                (f"{label}: added TTFT p99", "ms", "<=", limits[1], row["gateway_added_p99_ms"]),
            ]
        if streams == 1000:
            checks.append((f"{label}: streams/s over direct's", "×", ">=", 0.99,
                           row["gateway_vs_direct_rps"]))  # fmt: skip
        checks.append((f"{label}: CPU per relayed chunk over nginx's", "×", "<=", 2.0,
                       row["cpu_per_chunk_vs_nginx"]))  # fmt: skip
    return [
        {
            "target": name,
            "goal": f"{op} {limit:.3g} {unit}",
            "value": value,
            "unit": unit,
            "met": None if math.isnan(value) else value <= limit if op == "<=" else value >= limit,
        }
        for name, unit, op, limit, value in checks
    ]


def number(value: float, digits: int = 2) -> str:
    """``value`` with separators and ``digits`` decimals; ``-`` when it was not measured."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _cores(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def print_report(
    console: Console, summary: Summary, added: Overhead, checks: list[Verdict], rounds: int
) -> None:
    """The results table and the overhead table (:func:`print_verdicts` prints the targets)."""
    table = Table(
        title=f"Results (median of {rounds} round(s))",
        title_justify="left",
    )
    columns = ["scenario", "target", "req/s", "±", "p50 ms", "p99 ms", "total p50", "CPU ms/req"]
    columns += ["serving", "mock", "loadgen", "gen lag p99", "others", "notes"]
    for column in columns:
        left = column in ("scenario", "target", "notes")
        table.add_column(column, justify="left" if left else "right")
    for scenario, rows in summary.items():
        for target, row in rows.items():
            table.add_row(
                scenario, target, number(row["rps"], 0), _share(row["rps_spread"] / 2),
                number(row["p50_ms"]), number(row["p99_ms"]),
                number(row["total_p50_ms"], 1), number(row["cpu_ms_per_req"], 3),
                _cores(row["serving_cpu"]), _cores(row["mock_cpu"]),
                _cores(row["generator_cpu"]), number(row["generator_lag_p99_ms"], 1),
                _cores(row["background_cpu"]), ", ".join(row["warnings"]),
            )  # fmt: skip
        table.add_section()
    console.print(table)
    console.print(_LEGEND, highlight=False)

    ratios = Table(
        title="Overhead: throughput ratios, and latency added over direct (ms)",
        title_justify="left",
    )
    columns = ["scenario", "gw/direct req/s", "gw/nginx req/s", "gw +p50", "gw +p99"]
    columns += ["nginx +p50", "nginx +p99", "gw − nginx p50", "accounting CPU"]
    for column in columns:
        ratios.add_column(column, justify="left" if column == "scenario" else "right")
    for scenario, row in added.items():
        ratios.add_row(
            scenario, number(row["gateway_vs_direct_rps"]), number(row["gateway_vs_nginx_rps"]),
            number(row["gateway_added_p50_ms"], 3), number(row["gateway_added_p99_ms"], 3),
            number(row["nginx_added_p50_ms"], 3), number(row["nginx_added_p99_ms"], 3),
            number(row["gateway_minus_nginx_p50_ms"], 3), _share(row["accounting_cpu_share"]),
        )  # fmt: skip
    console.print(ratios)


def print_verdicts(console: Console, checks: list[Verdict]) -> None:
    """One line per target: met, missed or not run, with the measured value."""
    marks = {True: "[green]MET[/]   ", False: "[red]MISSED[/]", None: "[yellow]NOT RUN[/]"}
    for check in checks:
        console.print(
            f"  {marks[check['met']]} {check['target']}: {number(check['value'], 3)} "
            f"{check['unit']} (goal {check['goal']})"
        )

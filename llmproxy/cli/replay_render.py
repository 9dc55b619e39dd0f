"""What ``llmproxy replay`` prints: the run's tables, and two runs side by side.

Both are rendered from report documents (:mod:`llmproxy.replay.report`), the same data
``--json`` writes, so a table and its JSON never disagree. Pure: documents in, rich renderables
out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from llmproxy.cli.output import NONE, format_count, format_ms, format_ratio
from llmproxy.replay.compare import Row, Unit, Verdict

LATENCY_ROWS = (
    ("ttft_ms", "time to first token"),
    ("itl_ms", "inter-token latency"),
    ("latency_ms", "total latency"),
)

_VERDICT_STYLE = {Verdict.BETTER: "green", Verdict.WORSE: "red"}


def format_rate(value: float | None) -> str:
    """Per-second rates: one decimal below 100, whole above; ``-`` when unknown."""
    if value is None:
        return NONE
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def format_latency(value: float | None) -> str:
    """Milliseconds, with two decimals below 1 ms: a fast backend answers in tenths of one."""
    if value is not None and value < 1:
        return f"{value:.2f}"
    return format_ms(value)


def format_value(value: float | None, unit: Unit) -> str:
    if unit is Unit.MS:
        return format_latency(value)
    if unit is Unit.RATE:
        return format_rate(value)
    if unit is Unit.RATIO:
        return format_ratio(value)
    return format_count(value)


def format_delta(value: float | None, unit: Unit) -> str:
    """A signed difference: ``+1.2``, ``-30``, ``+0.5%`` (ratios in percentage points)."""
    if value is None:
        return NONE
    sign = "+" if value > 0 else "-" if value < 0 else "±"
    if unit is Unit.RATIO:
        return f"{sign}{abs(value) * 100:.1f} pt"
    return sign + format_value(abs(value), unit)


def format_percent(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:+.1f}%"


# One run ---------------------------------------------------------------------------------------


def headline(document: Mapping[str, Any]) -> str:
    """One sentence: how many requests went where, how, in how long."""
    settings, results = document.get("settings") or {}, document.get("results") or {}
    sent, wall = results.get("sent", 0), results.get("wall_s") or 0.0
    seconds = f"{wall:.1f}" if wall >= 10 else f"{wall:.2f}"
    text = (
        f"{format_count(sent)} requests to {settings.get('target', '?')} in {seconds} s, "
        f"{settings.get('mode', '?')}"
    )
    return text + (" (interrupted)" if results.get("interrupted") else "")


def latency_table(results: Mapping[str, Any]) -> Table:
    """TTFT, inter-token and total latency: p50, p90, p99, max and mean, in milliseconds."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("LATENCY (MS)")
    for column in ("P50", "P90", "P99", "MAX", "MEAN", "COUNT"):
        table.add_column(column, justify="right")
    for key, label in LATENCY_ROWS:
        stats = results.get(key) or {}
        table.add_row(
            label,
            *(format_latency(stats.get(q)) for q in ("p50", "p90", "p99", "max", "mean")),
            format_count(stats.get("count")),
        )
    return table


def throughput_table(results: Mapping[str, Any]) -> Table:
    """Requests and tokens per second, and how many requests ended well."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("THROUGHPUT")
    table.add_column("", justify="right")
    table.add_row("requests/s", format_rate(results.get("request_rate")))
    table.add_row("sent/s", format_rate(results.get("send_rate")))
    table.add_row("output tokens/s", format_rate(results.get("tokens_per_s")))
    table.add_row("output tokens", format_count(results.get("output_tokens")))
    table.add_row("requests ok", format_count(results.get("ok")))
    failed = results.get("failed") or 0
    table.add_row(
        "requests failed",
        Text(
            f"{format_count(failed)} ({format_ratio(results.get('error_rate'))})",
            style="red" if failed else "",
        ),
    )
    return table


def outcome_table(results: Mapping[str, Any]) -> Table:
    """Answers by HTTP status, then failures by error class with the first example of each."""
    errors = results.get("errors") or {}
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("OUTCOME")
    table.add_column("COUNT", justify="right")
    if errors:  # an empty column would pad every line with blanks
        table.add_column("FIRST SEEN", overflow="ellipsis", no_wrap=True, max_width=90)
    blank = ("",) if errors else ()
    for status, count in (results.get("statuses") or {}).items():
        style = "green" if status.startswith(("2", "3")) else "red"
        label = "no response" if status == "none" else f"HTTP {status}"
        table.add_row(Text(label, style=style), format_count(count), *blank)
    examples = results.get("error_examples") or {}
    for error, count in errors.items():
        example = " ".join(str(examples.get(error, "")).split())
        table.add_row(Text(f"error: {error}", style="red"), format_count(count), example)
    return table


def render_report(document: Mapping[str, Any]) -> RenderableType:
    """Everything the terminal shows at the end of a run."""
    results = document.get("results") or {}
    parts: list[RenderableType] = [
        Text(headline(document), style="bold"),
        Text(),
        latency_table(results),
        Text(),
        throughput_table(results),
        Text(),
        outcome_table(results),
    ]
    warnings = (document.get("client") or {}).get("warnings") or []
    if warnings:
        parts.append(Text())
    for warning in warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    return Group(*parts)


# Two runs --------------------------------------------------------------------------------------


def run_label(name: str, document: Mapping[str, Any]) -> str:
    """``A  runs/a.json: 5,000 requests to http://… in 10.0 s, open loop at 500 req/s``."""
    return f"{name}: {headline(document)}"


def comparison_table(rows: Sequence[Row]) -> Table:
    """Each metric in A and B, the difference and the change in percent (green: better)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("METRIC")
    for column in ("A", "B", "B - A", "CHANGE"):
        table.add_column(column, justify="right")
    for row in rows:
        unit = row.metric.unit
        style = _VERDICT_STYLE.get(row.verdict, "")
        table.add_row(
            row.metric.label,
            format_value(row.a, unit),
            format_value(row.b, unit),
            Text(format_delta(row.delta, unit), style=style),
            Text(format_percent(row.percent), style=style),
        )
    return table


def settings_table(differences: Sequence[tuple[str, str, str]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SETTING", "A", "B"):
        table.add_column(column, overflow="fold")
    for key, a, b in differences:
        table.add_row(key, a, b)
    return table


def render_comparison(
    labels: tuple[str, str], rows: Sequence[Row], differences: Sequence[tuple[str, str, str]]
) -> RenderableType:
    parts: list[RenderableType] = [Text(labels[0]), Text(labels[1]), Text(), comparison_table(rows)]
    if differences:
        parts += [Text(), Text("The runs differ in:", style="bold"), settings_table(differences)]
    return Group(*parts)

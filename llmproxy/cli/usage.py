"""``llmproxy usage``: who used which model, as it happens (``tail``) and after the fact.

``tail`` follows the daemon's live NDJSON stream, so it shows records as they settle without
polling; ``recent`` and ``summary`` read what the daemon kept in its usage database. With
``--json``, ``tail`` prints one record per line (NDJSON) for ``jq`` and friends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Annotated, Any, Literal

import typer
from rich.table import Table
from rich.text import Text

from llmproxy.cli.connection import (
    AdminUrlOption,
    ConfigOption,
    JsonOption,
    SocketOption,
    Target,
    TokenOption,
    daemon_session,
)
from llmproxy.cli.output import (
    EXIT_CODES_EPILOG,
    NONE,
    ExitCode,
    format_count,
    format_datetime,
    format_duration,
    format_ms,
    format_time,
    print_error,
    print_json,
    print_json_line,
    stdout_console,
)
from llmproxy.cli.parsing import parse_since

app = typer.Typer(
    help="Token usage: live, recent records and totals.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
)

Record = Mapping[str, Any]
"""A usage record as the admin API returns it (the usage webhook's record)."""

COLUMNS = (
    "TIME",
    "KEY",
    "MODEL",
    "BACKEND",
    "STATUS",
    "PROMPT",
    "COMPLETION",
    "TTFT MS",
    "LATENCY MS",
)
WIDTHS = (8, 16, 24, 16, 9, 8, 10, 8, 10)
"""Column widths of ``tail``, whose rows are printed one by one and so cannot be measured."""
_RIGHT = frozenset(range(5, 9))


# Pure pieces -----------------------------------------------------------------------------------


def key_label(record: Record) -> str:
    """The key as an operator knows it: its name, else its prefix or id; ``-`` without a key."""
    for field in ("key_name", "key_prefix", "key_id"):
        if record.get(field):
            return str(record[field])
    return NONE


def status_text(record: Record) -> str:
    """The HTTP status, or ``cancelled`` when the client went away before the end."""
    return "cancelled" if record.get("cancelled") else str(record.get("status", NONE))


def status_style(record: Record) -> str:
    status = int(record.get("status") or 0)
    if record.get("cancelled") or 400 <= status < 500:
        return "yellow"
    return "green" if 200 <= status < 400 else "red"


def usage_row(
    record: Record, now: float, tz: tzinfo | None = None, *, clock: bool = False
) -> tuple[str, ...]:
    """time, key, model, backend, status, prompt and completion tokens, TTFT and latency ms.

    The time is a clock time for today's records (always, with ``clock``: ``tail``'s records are
    live, and its column has room for no date), else with the date.
    """
    when = record.get("time")
    return (
        format_time(when, when if clock and when is not None else now, tz),
        key_label(record),
        str(record.get("model") or NONE),
        str(record.get("backend") or NONE),
        status_text(record),
        format_count(record.get("prompt_tokens")),
        format_count(record.get("completion_tokens")),
        format_ms(record.get("ttft_ms")),
        format_ms(record.get("latency_ms")),
    )


def fixed_columns(cells: tuple[str, ...], widths: tuple[int, ...] = WIDTHS) -> str:
    """``cells`` padded (numbers to the right) or cut with ``…`` to ``widths``, one line."""
    out: list[str] = []
    for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        text = cell if len(cell) <= width else cell[: width - 1] + "…"
        out.append(text.rjust(width) if index in _RIGHT else text.ljust(width))
    return " ".join(out).rstrip()


def records_table(records: Sequence[Record], now: float) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="right" if index in _RIGHT else "left")
    for record in records:
        cells = usage_row(record, now)
        table.add_row(*cells[:4], Text(cells[4], style=status_style(record)), *cells[5:])
    return table


SummaryRow = tuple[str, str, int, int, int, int, float]
"""key (or user, team, model, API), model, requests, prompt, completion and total tokens,
cost."""

SummaryBy = Literal["key", "user", "team", "model", "api"]
SUMMARY_BY: tuple[SummaryBy, ...] = ("key", "user", "team", "model", "api")


def _summary_label(row: Record, by: SummaryBy) -> str:
    if by == "api":
        return str(row.get("api") or "other")
    if by == "user":
        return str(row.get("user_id") or "(no user)")
    if by == "team":
        return str(row.get("team") or "(no team)")
    if by == "model":
        return str(row.get("model") or NONE)
    return str(row.get("key_name") or row.get("key_id") or "(no key)")


def summary_rows(
    rows: Sequence[Record], by: SummaryBy = "key"
) -> tuple[list[SummaryRow], SummaryRow]:
    """The summary by key (or user, team, model, API) and model, sorted by them, and its
    totals row. The daemon answers per key, model, API, user and team: rows that differ only in
    what is not shown are added up."""
    merged: dict[tuple[str, str], list[int]] = {}
    costs: dict[tuple[str, str], float] = {}
    for row in rows:
        model = "" if by == "model" else str(row.get("model") or NONE)
        group = (_summary_label(row, by), model)
        sums = merged.setdefault(group, [0, 0, 0, 0])
        fields = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
        for index, field in enumerate(fields):
            sums[index] += int(row.get(field) or 0)
        costs[group] = costs.get(group, 0.0) + float(row.get("cost") or 0)
    out: list[SummaryRow] = [
        (label, model, sums[0], sums[1], sums[2], sums[3], costs[(label, model)])
        for (label, model), sums in merged.items()
    ]
    out.sort(key=lambda row: (row[0], row[1]))
    totals: SummaryRow = (
        "total",
        "",
        sum(row[2] for row in out),
        sum(row[3] for row in out),
        sum(row[4] for row in out),
        sum(row[5] for row in out),
        sum(row[6] for row in out),
    )
    return out, totals


def format_cost(value: float) -> str:
    """A cost: cents above one unit, four decimals below (a request costs fractions of one)."""
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


def summary_table(
    rows: Sequence[Record],
    since: float,
    window: float,
    by: SummaryBy = "key",
    currency: str = "",
) -> Table:
    body, totals = summary_rows(rows, by)
    table = Table(
        box=None,
        pad_edge=False,
        header_style="bold",
        show_footer=bool(body),
        footer_style="bold",
        title=f"usage in the last {format_duration(window)} (since {format_datetime(since)})",
        title_justify="left",
    )
    with_model = by != "model"
    with_cost = any(row[6] > 0 for row in body)
    headers = [by.upper() if by != "api" else "API"]
    footers = [totals[0]]
    if with_model:
        headers.append("MODEL")
        footers.append(totals[1])
    headers += ["REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    footers += [format_count(count) for count in totals[2:6]]
    if with_cost:
        headers.append(f"COST ({currency})" if currency else "COST")
        footers.append(format_cost(totals[6]))
    first_number = 2 if with_model else 1
    for index, (header, footer) in enumerate(zip(headers, footers, strict=True)):
        table.add_column(
            header, footer=footer, justify="right" if index >= first_number else "left"
        )
    for label, model, *counts, cost in body:
        cells = [label, model] if with_model else [label]
        cells += [format_count(count) for count in counts]
        if with_cost:
            cells.append(format_cost(cost))
        table.add_row(*cells)
    return table


def filters(key: str | None, model: str | None) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {}
    if key:
        params["key"] = key
    if model:
        params["model"] = model
    return params


# Commands --------------------------------------------------------------------------------------

KeyFilter = Annotated[
    str | None, typer.Option("--key", help="Only this key (id or name).", show_default=False)
]
ModelFilter = Annotated[
    str | None, typer.Option("--model", help="Only this model.", show_default=False)
]


@app.command("tail", epilog=EXIT_CODES_EPILOG)
def tail(
    key: KeyFilter = None,
    model: ModelFilter = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON record per line (NDJSON), for scripts.")
    ] = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Follow usage records as requests finish, until Ctrl-C."""
    console = stdout_console()

    def header() -> None:
        if not json_output:
            console.print(fixed_columns(COLUMNS), style="bold", soft_wrap=True, markup=False)

    status_at = sum(width + 1 for width in WIDTHS[:4])
    try:
        with daemon_session(Target(config, socket, admin_url, token)) as client:
            for record in client.stream("/usage/stream", filters(key, model), on_open=header):
                if json_output:
                    print_json_line(record)
                    continue
                line = Text(fixed_columns(usage_row(record, time.time(), clock=True)))
                line.stylize(status_style(record), status_at, status_at + WIDTHS[4])
                console.print(line, soft_wrap=True, highlight=False)
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.OK) from None
    # The daemon ends the stream only when it stops.
    print_error("the daemon closed the usage stream (did it stop?)")
    raise typer.Exit(ExitCode.UNREACHABLE)


@app.command("recent", epilog=EXIT_CODES_EPILOG)
def recent(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most records shown.")] = 50,
    key: KeyFilter = None,
    model: ModelFilter = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """The latest usage records the daemon kept, newest at the bottom."""
    params = {"limit": limit, **filters(key, model)}
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.get("/usage/recent", params)
    if json_output:
        print_json(answer)
        return
    records = list(answer.get("records") or [])
    if not records:
        stdout_console().print("no usage records", markup=False)
        return
    # The API answers newest first; a terminal reads best with the newest next to the prompt.
    stdout_console().print(records_table(records[::-1], time.time()))


@app.command("dead-letters", epilog=EXIT_CODES_EPILOG)
def dead_letters(
    requeue: Annotated[
        bool,
        typer.Option("--requeue", help="Give them all to the usage webhook again."),
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Most records shown.")] = 20,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Usage records the webhook receiver never accepted; --requeue delivers them again."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        if requeue:
            answer = client.post("/usage/dead-letters/requeue", {})
        else:
            answer = client.get("/usage/dead-letters", {"limit": limit})
    if json_output:
        print_json(answer)
        return
    if requeue:
        stdout_console().print(
            f"{answer.get('requeued', 0)} records back in the webhook outbox", markup=False
        )
        return
    letters = list(answer.get("records") or [])
    count = int(answer.get("count") or 0)
    if not letters:
        stdout_console().print("no dead letters", markup=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "ATTEMPTS", "LAST ERROR", "REQUEST"):
        table.add_column(column)
    for letter in letters:
        record = letter.get("record") or {}
        table.add_row(
            str(letter.get("id", "")),
            str(letter.get("attempts", "")),
            str(letter.get("error", "")),
            str(record.get("request_id", "")),
        )
    stdout_console().print(table)
    stdout_console().print(
        f"{count} dead letters; `llmproxy usage dead-letters --requeue` delivers them again",
        markup=False,
    )


@app.command("summary", epilog=EXIT_CODES_EPILOG)
def summary(
    since: Annotated[
        str, typer.Option("--since", help="How far back: 1h, 30m, 7d.", show_default=True)
    ] = "1h",
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="Group by key, user, team or API (each with its models), or by model alone.",
            show_default=True,
        ),
    ] = "key",
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Requests, tokens and cost by key, user, team, model or API over a period, with totals."""
    try:
        window = parse_since(since)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--since") from None
    grouping = next((choice for choice in SUMMARY_BY if choice == by), None)
    if grouping is None:
        raise typer.BadParameter(f"one of {', '.join(SUMMARY_BY)}", param_hint="--by")
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        # Whole seconds: the API reads an integer.
        answer = client.get("/usage/summary", {"since": max(1, round(window))})
    if json_output:
        print_json(answer)
        return
    rows = list(answer.get("rows") or [])
    start = float(answer.get("since") or time.time() - window)
    currency = str(answer.get("currency") or "")
    stdout_console().print(summary_table(rows, start, window, grouping, currency))
    if not rows:
        stdout_console().print("no usage in that period", markup=False)

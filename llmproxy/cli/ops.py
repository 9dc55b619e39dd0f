"""``llmproxy status`` and ``llmproxy reload``: is the daemon well, and apply an edited config.

``reload`` goes through the same path as SIGHUP and the file watcher
(:mod:`llmproxy.daemon.control`), so what it prints — the changes, or why the new config was refused
with its ``file:line`` — is what the daemon logs. ``--dry-run`` validates and diffs, and swaps
nothing in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

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
    NONE,
    ExitCode,
    err_console,
    format_count,
    format_duration,
    format_relative,
    labelled,
    print_error,
    print_json,
    stdout_console,
)

Document = Mapping[str, Any]

StatusLine = tuple[str, str, str]
"""label, value, rich style of the value."""


# Pure pieces -----------------------------------------------------------------------------------


def reload_summary(outcome: Document | None, now: float) -> tuple[str, str]:
    """The last reload in one line, and its style: ``ok 5m ago (sighup), config version 4``."""
    if not outcome:
        return "none since start", ""
    when = format_relative(float(outcome.get("at") or now), now)
    trigger = outcome.get("trigger") or "admin"
    dry = "dry run " if outcome.get("dry_run") else ""
    if outcome.get("ok"):
        return f"{dry}ok {when} ({trigger}), config version {outcome.get('config_version')}", ""
    error = str(outcome.get("error") or "unknown error").splitlines()
    first = error[0] if error else "unknown error"
    more = f" (+{len(error) - 1} more lines: llmproxy reload --dry-run)" if len(error) > 1 else ""
    return f"{dry}failed {when} ({trigger}): {first}{more}", "red"


def usage_summary(usage: Document | None) -> tuple[str, str]:
    """The usage pipeline's backlog, and its style (yellow when records wait or were given up)."""
    if not usage:
        return "not recorded (no usage database or webhook)", ""
    queued = int(usage.get("queued") or 0)
    outbox = int(usage.get("outbox_depth") or 0)
    dead = int(usage.get("dead_letters") or 0)
    text = (
        f"{format_count(queued)} queued, {format_count(outbox)} in the webhook outbox, "
        f"{format_count(dead)} dead letters"
    )
    return text, "yellow" if dead or outbox else ""


def status_lines(status: Document, now: float) -> list[StatusLine]:
    """The labelled lines of ``llmproxy status``."""
    config_path = status.get("config_path") or "(embedded demo config)"
    retired = int(status.get("retired_snapshots") or 0)
    in_flight = format_count(status.get("in_flight"))
    if retired:
        in_flight += f" ({retired} older config snapshots still finishing requests)"
    reloads: Document = status.get("reloads") or {}
    last, last_style = reload_summary(reloads.get("last"), now)
    usage, usage_style = usage_summary(status.get("usage"))
    uptime = status.get("uptime_seconds")
    workers = status.get("workers")
    if workers:
        alive = sum(1 for worker in workers if worker.get("alive"))
        in_flight += (
            f" (all {len(workers)} workers)"
            if alive == len(workers)
            else (f" ({alive} of {len(workers)} workers answering)")
        )
    return [
        ("version", str(status.get("version") or NONE), ""),
        ("pid", str(status.get("pid") or NONE), ""),
        ("uptime", format_duration(float(uptime)) if uptime is not None else NONE, ""),
        ("config", f"{config_path} (version {status.get('config_version', NONE)})", ""),
        ("listen", str(status.get("listen") or NONE), ""),
        ("in flight", in_flight, ""),
        (
            "reloads",
            f"{format_count(reloads.get('ok') or 0)} ok, "
            f"{format_count(reloads.get('failed') or 0)} failed",
            "",
        ),
        ("last reload", last, last_style),
        ("usage", usage, usage_style),
    ]


def worker_table(workers: list[Document]) -> Table:
    """``status --workers``: one row per worker (a gone one says so)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("worker", "pid", "state", "in flight", "config", "reloads", "usage queued"):
        table.add_column(
            column, justify="right" if column in {"in flight", "usage queued"} else "left"
        )
    for worker in workers:
        reloads: Document = worker.get("reloads") or {}
        alive = bool(worker.get("alive"))
        table.add_row(
            str(worker.get("index")),
            str(worker.get("pid") or NONE),
            "serving" if alive else "[red]gone[/red]",
            format_count(worker.get("in_flight")) if alive else NONE,
            f"version {worker.get('config_version', NONE)}",
            f"{format_count(reloads.get('ok') or 0)} ok, "
            f"{format_count(reloads.get('failed') or 0)} failed",
            format_count(worker.get("usage_queued")) if alive else NONE,
        )
    return table


def reload_lines(outcome: Document) -> list[str]:
    """What a successful reload (or dry run) changed, for people."""
    changes = [str(change) for change in outcome.get("changes") or []]
    version = outcome.get("config_version")
    if outcome.get("dry_run"):
        head = "dry run: the config is valid"
        if not changes:
            return [f"{head}; no changes from the running config"]
        return [f"{head}; a reload would change:", *(f"  - {change}" for change in changes)]
    if not changes:
        return [f"no changes: the file matches the running config (version {version})"]
    lines = [f"reloaded: config version {version}", *(f"  - {change}" for change in changes)]
    for worker in outcome.get("workers") or []:
        if not worker.get("reloaded"):
            lines.append(f"worker {worker.get('index')} has not reloaded yet")
        elif not worker.get("ok"):
            lines.append(f"worker {worker.get('index')} refused the new config")
    return lines


# Commands --------------------------------------------------------------------------------------


def status(
    workers: Annotated[
        bool, typer.Option("--workers", help="One line per worker process as well.")
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Is the daemon up, and how is it: version, uptime, config, load, reloads, usage backlog."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.get("/status")
    if json_output:
        print_json(answer)
        return
    console = stdout_console()
    console.print(labelled(status_lines(answer, time.time())), soft_wrap=True)
    if workers:
        rows = answer.get("workers")
        if rows:
            console.print(worker_table(list(rows)))
        else:
            console.print("one process: no other workers", highlight=False)


def reload(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show the changes; apply nothing.")
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Re-read the daemon's config file and apply it without dropping a request."""
    from llmproxy.cli.admin_client import AdminError

    target = Target(config, socket, admin_url, token)

    with daemon_session(target, json_output=json_output) as client:
        try:
            answer = client.post("/reload", {"dry_run": dry_run})
        except AdminError as error:
            if error.status != 422:
                raise
            _refused(error.body.get("outcome") or {}, error.message, json_output, error.body)
    if json_output:
        print_json(answer)
    if not answer.get("ok", True):
        _refused(answer, "reload refused", json_output=False, body=answer)
    if json_output:
        return
    for line in reload_lines(answer):
        stdout_console().print(line, markup=False, highlight=False, soft_wrap=True)


def _refused(
    outcome: Document, message: str, json_output: bool, body: Mapping[str, object]
) -> NoReturn:
    """Report a refused reload (the running config stays) and end with exit code 1."""
    if json_output:
        print_json(body)
    action = "dry run" if outcome.get("dry_run") else "reload"
    print_error(f"{action} refused; the running config is unchanged")
    details = str(outcome.get("error") or message)
    err_console.print(details, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(ExitCode.REFUSED)

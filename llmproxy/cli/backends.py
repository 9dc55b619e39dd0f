"""``llmproxy backends``: see how each inference server is doing, and take one out of rotation.

``status`` shows what the router sees (health, load, latency, errors); ``--watch`` keeps it on
screen, refreshed, until Ctrl-C — and keeps going across a daemon restart, showing the error in
place of the table meanwhile. ``drain`` stops new requests to a backend while the ones in flight
finish, for maintenance; ``undrain`` puts it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from rich.console import RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llmproxy.cli.completion import backend_names
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
    format_duration,
    format_ms,
    format_ratio,
    print_json,
    print_json_line,
    stdout_console,
)

if TYPE_CHECKING:
    from llmproxy.cli.admin_client import AdminClient

app = typer.Typer(
    help="Backend health and load, and draining for maintenance.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
)

Backend = Mapping[str, Any]
"""A backend as the admin API returns it (``docs/admin-api.md``: ``<backend>``)."""

HEALTH_STYLES = {
    "available": "green",
    "draining": "yellow",
    "ejected": "red",
    "probe down": "red",
    "unavailable": "red",
}


# Pure pieces -----------------------------------------------------------------------------------


def backend_health(backend: Backend) -> str:
    """One word for the router's view: ``draining``, ``ejected``, ``probe down``, ``available``.

    Draining comes first because an operator asked for it; an ejection (by passive failure
    detection) before a failed probe because it says for how long.
    """
    if backend.get("draining"):
        return "draining"
    if (backend.get("ejected_for_seconds") or 0) > 0:
        return "ejected"
    if backend.get("probe_healthy") is False:
        return "probe down"
    if backend.get("available") is False:
        return "unavailable"
    return "available"


def models_cell(backend: Backend) -> str:
    """The models a backend lists, each one out on its own marked with how long it stays out;
    models out on a backend that serves any model are listed after ``any``."""
    out: dict[str, float] = backend.get("models_out") or {}
    listed = list(backend.get("models") or [])
    names = listed or ["any"]
    names += [model for model in out if model not in listed]
    return ", ".join(
        f"{model} (out {format_duration(out[model])})" if model in out else model for model in names
    )


def backend_row(backend: Backend) -> tuple[str, ...]:
    """name, url, models, health, in flight, EWMA latency ms, error rate, ejected for, then the
    backend's own load (queue, KV cache use) and its share of prompt prefixes."""
    ejected_for = backend.get("ejected_for_seconds") or 0
    limit = backend.get("max_in_flight")
    in_flight = format_count(backend.get("in_flight"))
    return (
        str(backend.get("name", "")),
        str(backend.get("url", "")),
        models_cell(backend),
        backend_health(backend),
        f"{in_flight}/{limit}" if limit else in_flight,
        format_ms(backend.get("ttfb_ewma_ms")),
        format_ratio(backend.get("error_rate")),
        format_duration(ejected_for) if ejected_for > 0 else NONE,
        format_count(backend.get("queue_waiting"))
        if backend.get("queue_waiting") is not None
        else NONE,
        format_ratio(backend.get("kv_cache_usage")),
        format_ratio(backend.get("affinity_share")),
    )


COLUMNS = (
    "NAME",
    "URL",
    "MODELS",
    "HEALTH",
    "IN FLIGHT",
    "EWMA MS",
    "ERRORS",
    "EJECTED FOR",
    "QUEUE",
    "KV CACHE",
    "AFFINITY",
)
_RIGHT = {"IN FLIGHT", "EWMA MS", "ERRORS", "EJECTED FOR", "QUEUE", "KV CACHE", "AFFINITY"}


def backends_table(backends: Sequence[Backend]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in _RIGHT else "left")
    for backend in backends:
        cells = backend_row(backend)
        health = Text(cells[3], style=HEALTH_STYLES.get(cells[3], ""))
        table.add_row(*cells[:3], health, *cells[4:])
    return table


_View = TypeVar("_View")


def watch(
    render: Callable[[], _View],
    interval: float,
    *,
    show: Callable[[_View], None],
    sleep: Callable[[float], None] = time.sleep,
) -> NoReturn:
    """Call ``render`` every ``interval`` seconds and ``show`` the result; ends on Ctrl-C only."""
    while True:
        sleep(interval)
        show(render())


def backend_path(name: str, action: str) -> str:
    return f"/backends/{quote(name, safe='')}/{action}"


# Commands --------------------------------------------------------------------------------------


def _refreshed(client: AdminClient) -> RenderableType:
    """The table, or the error in its place: a watch survives a daemon restart."""
    from llmproxy.cli.admin_client import AdminError, DaemonUnreachable

    try:
        answer = client.get("/backends")
    except (AdminError, DaemonUnreachable) as error:
        return Text(f"{time.strftime('%H:%M:%S')} {error}", style="red")
    return _titled(backends_table(list(answer.get("backends") or [])))


def _titled(table: Table) -> Table:
    table.caption = f"{time.strftime('%H:%M:%S')}: refreshing, Ctrl-C to stop"
    return table


@app.command("status", epilog=EXIT_CODES_EPILOG)
def status(
    watch_: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep refreshing until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Health, load, latency and errors of every backend (with --json --watch: one line each)."""
    target = Target(config, socket, admin_url, token)
    try:
        with daemon_session(target, json_output=json_output) as client:
            # The first answer is fetched plainly: a wrong socket should fail at once, not loop.
            answer = client.get("/backends")
            if json_output:
                if not watch_:
                    print_json(answer)
                    return
                print_json_line(answer)
                watch(lambda: client.get("/backends"), interval, show=print_json_line)
            table = backends_table(list(answer.get("backends") or []))
            if not watch_:
                stdout_console().print(table)
                return
            with Live(_titled(table), console=stdout_console(), auto_refresh=False) as live:
                watch(
                    lambda: _refreshed(client),
                    interval,
                    show=lambda renderable: live.update(renderable, refresh=True),
                )
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.OK) from None


def _drain(name: str, action: str, target: Target, json_output: bool) -> Backend | None:
    with daemon_session(target, json_output=json_output) as client:
        answer = client.post(backend_path(name, action))
    if json_output:
        print_json(answer)
        return None
    backend: Backend = answer.get("backend") or {}
    return backend


NameArgument = Annotated[
    str,
    typer.Argument(
        help="Backend name, as `backends status` shows it.", autocompletion=backend_names
    ),
]


@app.command("drain", epilog=EXIT_CODES_EPILOG)
def drain(
    name: NameArgument,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Send no new requests to a backend; the ones in flight finish. Lasts until undrain."""
    backend = _drain(name, "drain", Target(config, socket, admin_url, token), json_output)
    if backend is not None:
        in_flight = format_count(backend.get("in_flight"))
        stdout_console().print(
            f"{backend.get('name', name)} is draining: no new requests; "
            f"{in_flight} in flight will finish.",
            markup=False,
            highlight=False,
        )


@app.command("undrain", epilog=EXIT_CODES_EPILOG)
def undrain(
    name: NameArgument,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Let a drained backend take new requests again."""
    backend = _drain(name, "undrain", Target(config, socket, admin_url, token), json_output)
    if backend is not None:
        stdout_console().print(
            f"{backend.get('name', name)} takes new requests again "
            f"(health: {backend_health(backend)}).",
            markup=False,
            highlight=False,
        )

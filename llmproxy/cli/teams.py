"""``llmproxy teams``: add, list, inspect, change and remove teams in the running daemon.

A team groups keys (``llmproxy keys add --team NAME``): its limits (``--rpm``, ``--tpm``,
``--max-concurrent``, ``--quota``) apply to all its keys together, beside each key's own — the
stricter wins — and its budget (``--budget`` per ``--period``) is what they may cost together.
Teams live in the daemon's builtin key store, so like ``keys`` every command goes through the
admin API and takes effect on every worker before its next request.

The rows, the fields and the request bodies are pure functions, tested without a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from llmproxy.budgets import PERIODS
from llmproxy.cli.connection import (
    AdminUrlOption,
    ConfigOption,
    JsonOption,
    SocketOption,
    Target,
    TokenOption,
    daemon_session,
)
from llmproxy.cli.keys import budget_text, period_value
from llmproxy.cli.output import (
    EXIT_CODES_EPILOG,
    NONE,
    ExitCode,
    format_count,
    format_datetime,
    labelled,
    print_json,
    print_note,
    stdout_console,
)
from llmproxy.teamfields import TEAM_CLEARABLE, team_doc

app = typer.Typer(
    help="Manage teams: keys that share limits and a budget.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
)

TeamJson = Mapping[str, Any]
"""A team as the admin API returns it (``docs/admin-api.md``: ``<team>``)."""


# Pure pieces -----------------------------------------------------------------------------------


def _limit(value: object) -> str:
    return NONE if value is None else format_count(int(str(value)))


def quota_text(team: TeamJson) -> str:
    """``1,234 / 10,000`` tokens, or ``1,234 / ∞`` without a quota."""
    used = format_count(int(team.get("used_quota") or 0))
    total = team.get("total_quota")
    return f"{used} / {format_count(total) if total is not None else '∞'}"


def team_row(team: TeamJson) -> tuple[str, ...]:
    """One row of ``teams list``: name, keys, budget, rpm, tpm, concurrency, quota."""
    return (
        str(team.get("name", "")),
        str(team.get("keys", NONE)),
        budget_text(team.get("budget"), team.get("period")),
        _limit(team.get("rpm")),
        _limit(team.get("tpm")),
        _limit(team.get("max_concurrent")),
        quota_text(team),
    )


def teams_table(teams: Sequence[TeamJson]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "KEYS", "BUDGET", "RPM", "TPM", "CONCURRENT", "QUOTA USED / TOTAL"):
        table.add_column(column, justify="left" if column in ("NAME", "BUDGET") else "right")
    for team in teams:
        table.add_row(*team_row(team))
    return table


def team_fields(team: TeamJson, tz: tzinfo | None = None) -> list[tuple[str, str]]:
    """The labelled lines of ``teams show``."""
    return [
        ("name", str(team.get("name", ""))),
        ("description", str(team.get("description") or NONE)),
        ("budget", budget_text(team.get("budget"), team.get("period"))),
        ("requests / min", _limit(team.get("rpm"))),
        ("tokens / min", _limit(team.get("tpm"))),
        ("max concurrent", _limit(team.get("max_concurrent"))),
        ("quota used / total", quota_text(team)),
        ("created", format_datetime(team.get("created_at"), tz)),
        ("updated", format_datetime(team.get("updated_at"), tz)),
    ]


def spent_text(spent: Mapping[str, Any], budget: object) -> str:
    """``81.20 of 100.00 USD (81 %)``: a team's spend this period against its budget."""
    amount = float(spent.get("amount") or 0)
    currency = str(spent.get("currency") or "")
    if not isinstance(budget, int | float) or isinstance(budget, bool) or budget <= 0:
        return f"{amount:,.2f} {currency}".strip()
    share = amount / budget * 100
    return f"{amount:,.2f} of {budget:,.2f} {currency} ({share:.0f} %)"


def members_table(keys: Sequence[Mapping[str, Any]]) -> Table:
    """The keys of ``teams show``: id, name, prefix, owner, status (never a secret)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "PREFIX", "USER", "STATUS"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            str(key.get("id", "")),
            str(key.get("name", "")),
            str(key.get("prefix", "")),
            str(key.get("user_id") or NONE),
            str(key.get("status", "")),
        )
    return table


def team_path(name: str) -> str:
    """The API path of one team."""
    return f"/teams/{quote(name, safe='')}"


CLEAR_CHOICES: tuple[str, ...] = tuple(TEAM_CLEARABLE)
"""``teams update --clear`` choices: the command-line names of the fields that have a "none"."""


def clear_choices(values: list[str] | None) -> list[str] | None:
    """``--clear`` values, each one of :data:`CLEAR_CHOICES` (a usage error otherwise)."""
    for value in values or ():
        if value not in TEAM_CLEARABLE:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(CLEAR_CHOICES)}")
    return values


def team_body(
    *,
    description: str | None = None,
    budget: float | None = None,
    period: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    quota: int | None = None,
    clear: Sequence[str] = (),
    reset_used_quota: bool = False,
) -> dict[str, object]:
    """The API fields for the options given (``None`` = not given) and the fields cleared."""
    body: dict[str, object] = {}
    checked_period = period_value(period, "--period")
    for name, value in (
        ("description", description),
        ("budget", budget),
        ("period", checked_period),
        ("rpm", rpm),
        ("tpm", tpm),
        ("max_concurrent", max_concurrent),
        ("total_quota", quota),
    ):
        if value is not None:
            body[name] = value
    for choice in clear:
        cleared = TEAM_CLEARABLE[choice]
        if cleared.name in body:
            raise typer.BadParameter(f"{choice} is both set and cleared", param_hint="--clear")
        body[cleared.name] = cleared.cleared()
    if reset_used_quota:
        body["used_quota"] = 0
    return body


# Options ---------------------------------------------------------------------------------------

NameArgument = Annotated[str, typer.Argument(help=team_doc("name"))]
DescriptionOption = Annotated[
    str | None, typer.Option("--description", help=team_doc("description"))
]
BudgetOption = Annotated[float | None, typer.Option("--budget", min=0, help=team_doc("budget"))]
PeriodOption = Annotated[
    str | None,
    typer.Option(
        "--period",
        help=team_doc("period") + " Default monthly.",
        autocompletion=lambda incomplete: [p for p in PERIODS if p.startswith(incomplete)],
    ),
]
RpmOption = Annotated[int | None, typer.Option("--rpm", min=1, help=team_doc("rpm"))]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=1, help=team_doc("tpm"))]
MaxConcurrentOption = Annotated[
    int | None, typer.Option("--max-concurrent", min=1, help=team_doc("max_concurrent"))
]
QuotaOption = Annotated[int | None, typer.Option("--quota", min=1, help=team_doc("total_quota"))]


# Commands --------------------------------------------------------------------------------------


@app.command("add", epilog=EXIT_CODES_EPILOG)
def add(
    name: NameArgument,
    description: DescriptionOption = None,
    budget: BudgetOption = None,
    period: PeriodOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    quota: QuotaOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Add a team; then give it keys with `llmproxy keys add --team NAME`."""
    body = team_body(
        description=description,
        budget=budget,
        period=period,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        quota=quota,
    )
    body["name"] = name
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.post("/teams", body)
    if json_output:
        print_json(answer)
        return
    stdout_console().print(labelled([(k, v, "") for k, v in team_fields(answer["team"])]))


@app.command("list", epilog=EXIT_CODES_EPILOG)
def list_teams(
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """List teams: their live keys, budget, limits and quota."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.get("/teams")
    if json_output:
        print_json(answer)
        return
    teams = list(answer.get("teams") or [])
    if not teams:
        print_note("no teams (llmproxy teams add NAME adds one)")
        return
    stdout_console().print(teams_table(teams))


@app.command("show", epilog=EXIT_CODES_EPILOG)
def show(
    name: NameArgument,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show a team's fields and its live keys (ids, names, prefixes; never secrets)."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.get(team_path(name))
    if json_output:
        print_json(answer)
        return
    console = stdout_console()
    lines = team_fields(answer["team"])
    spent = answer.get("spent")
    if isinstance(spent, Mapping):
        lines.insert(3, ("spent this period", spent_text(spent, answer["team"].get("budget"))))
    console.print(labelled([(k, v, "") for k, v in lines]), soft_wrap=True)
    keys = list(answer.get("keys") or [])
    console.print("")
    if keys:
        console.print(members_table(keys))
    else:
        console.print("no keys", markup=False, highlight=False)


@app.command("update", epilog=EXIT_CODES_EPILOG)
def update(
    name: NameArgument,
    description: DescriptionOption = None,
    budget: BudgetOption = None,
    period: PeriodOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    quota: QuotaOption = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            metavar="FIELD",
            callback=clear_choices,
            autocompletion=lambda incomplete: [
                name for name in CLEAR_CHOICES if name.startswith(incomplete)
            ],
            help="Unset a field (no limit, no budget); repeat for more. "
            f"FIELD is one of {', '.join(CLEAR_CHOICES)}.",
            show_default=False,
        ),
    ] = None,
    reset_used_quota: Annotated[
        bool, typer.Option("--reset-used-quota", help="Set the tokens used so far back to 0.")
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Change fields of a team; options not given stay as they are. Applies from the next
    request on every worker."""
    body = team_body(
        description=description,
        budget=budget,
        period=period,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        quota=quota,
        clear=list(dict.fromkeys(clear or [])),
        reset_used_quota=reset_used_quota,
    )
    if not body:
        raise typer.BadParameter("nothing to change: give at least one option to set")
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.patch(team_path(name), body)
    if json_output:
        print_json(answer)
        return
    stdout_console().print(labelled([(k, v, "") for k, v in team_fields(answer["team"])]))


@app.command("remove", epilog=EXIT_CODES_EPILOG)
def remove(
    name: NameArgument,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Remove it even if keys belong to it; they are left without a team."
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a team. Refused while live keys belong to it, unless --force. Asks first unless
    --yes."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        if not (yes or json_output):
            try:
                confirmed = typer.confirm(f"Remove team {name}?", err=True)
            except typer.Abort:  # end of input, or Ctrl-C at the prompt
                confirmed = False
                print_note("")
            if not confirmed:
                print_note("not removed")
                raise typer.Exit(ExitCode.REFUSED)
        answer = client.delete(team_path(name), {"force": 1} if force else None)
    if json_output:
        print_json(answer)
        return
    detached = int(answer.get("keys_detached") or 0)
    tail = f"; {detached} key(s) left without a team" if detached else ""
    stdout_console().print(f"Removed team {name}{tail}.", markup=False, highlight=False)

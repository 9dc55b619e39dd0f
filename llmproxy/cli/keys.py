"""``llmproxy keys``: issue, list, inspect, change and revoke API keys in the running daemon.

The daemon owns the builtin key store; going through its admin API (rather than opening the SQLite
file) means a change is seen by the auth cache at once and works wherever the daemon runs. A key is
named by ``REF``: its id, its display prefix, its (unique) name, or its secret — what an operator
holds when a key leaks. A secret is hashed here and only its SHA-256 is sent (``POST
/keys/lookup``), so it never reaches the daemon, a URL, a log line or an error message.

The row and field formatting and the request bodies are pure functions, tested without a daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table
from rich.text import Text

from llmproxy.apikey import has_valid_checksum, key_sha256, looks_like_secret
from llmproxy.budgets import PERIODS, check_period
from llmproxy.cli.completion import key_refs
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
    format_relative,
    labelled,
    print_json,
    print_note,
    stdout_console,
)
from llmproxy.cli.parsing import parse_expiry, parse_list, parse_metadata
from llmproxy.keyfields import CLEARABLE, doc

if TYPE_CHECKING:
    from llmproxy.cli.admin_client import AdminClient

app = typer.Typer(
    help="Manage API keys in the daemon's builtin key store.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
)

Key = Mapping[str, Any]
"""A key as the admin API returns it (``docs/admin-api.md``: ``<key>``)."""

STATE_STYLES = {
    "active": "green",
    "disabled": "yellow",
    "expired": "red",
    "quota exceeded": "red",
    "revoked": "dim red",
}


# Pure pieces -----------------------------------------------------------------------------------


def key_state(key: Key, now: float) -> str:
    """What the gateway does with the key right now, in words: ``active``, ``revoked``, ``expired``…

    The stored ``status`` is what an operator set; expiry and quota are judged at request time, so
    they are derived here the way the auth pipeline does.
    """
    if key.get("revoked_at") is not None:
        return "revoked"
    status = str(key.get("status") or "active")
    if status != "active":
        return status.replace("_", " ")
    expires_at = key.get("expires_at")
    if expires_at is not None and now >= expires_at:
        return "expired"
    total = key.get("total_quota")
    if total is not None and int(key.get("used_quota") or 0) >= total:
        return "quota exceeded"
    return "active"


def quota_text(key: Key) -> str:
    """``1,234 / 10,000`` tokens, or ``1,234 / ∞`` without a quota."""
    used = format_count(int(key.get("used_quota") or 0))
    total = key.get("total_quota")
    return f"{used} / {format_count(total) if total is not None else '∞'}"


def expiry_text(expires_at: float | None, now: float) -> str:
    """``never``, ``in 29d 23h`` or ``2d 4h ago``."""
    if expires_at is None:
        return "never"
    return format_relative(expires_at, now)


def key_row(key: Key, now: float) -> tuple[str, ...]:
    """One row of ``keys list``: id, name, prefix, user, state, quota, expiry."""
    return (
        str(key.get("id", "")),
        str(key.get("name", "")),
        str(key.get("prefix", "")),
        str(key.get("user_id") or NONE),
        key_state(key, now),
        quota_text(key),
        expiry_text(key.get("expires_at"), now),
    )


def keys_table(keys: Sequence[Key], now: float) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "PREFIX", "USER", "STATUS", "QUOTA USED / TOTAL", "EXPIRES"):
        table.add_column(column, justify="right" if column.startswith("QUOTA") else "left")
    for key in keys:
        cells = key_row(key, now)
        state = Text(cells[4], style=STATE_STYLES.get(cells[4], ""))
        table.add_row(*cells[:4], state, *cells[5:])
    return table


def _limit(value: object) -> str:
    return NONE if value is None else format_count(int(str(value)))


def key_fields(key: Key, now: float, tz: tzinfo | None = None) -> list[tuple[str, str]]:
    """The labelled lines of ``keys show``."""
    expires_at = key.get("expires_at")
    expires = "never"
    if expires_at is not None:
        expires = f"{format_datetime(expires_at, tz)} ({expiry_text(expires_at, now)})"
    metadata = key.get("metadata") or {}
    return [
        ("id", str(key.get("id", ""))),
        ("name", str(key.get("name", ""))),
        ("prefix", str(key.get("prefix", ""))),
        ("user", str(key.get("user_id") or NONE)),
        ("status", key_state(key, now)),
        ("created", format_datetime(key.get("created_at"), tz)),
        ("updated", format_datetime(key.get("updated_at"), tz)),
        ("expires", expires),
        ("revoked", format_datetime(key.get("revoked_at"), tz)),
        ("models", ", ".join(key.get("models") or []) or "any"),
        ("allowed ips", ", ".join(key.get("allowed_ips") or []) or "any"),
        ("quota used / total", quota_text(key)),
        ("requests / min", _limit(key.get("rpm"))),
        ("burst", _limit(key.get("burst"))),
        ("tokens / min", _limit(key.get("tpm"))),
        ("max concurrent", _limit(key.get("max_concurrent"))),
        ("priority", _limit(key.get("priority"))),
        ("team", str(key.get("team") or NONE)),
        ("budget", budget_text(key.get("budget"), key.get("budget_period"))),
        ("metadata", json.dumps(metadata, ensure_ascii=False) if metadata else NONE),
    ]


def budget_text(amount: object, period: object) -> str:
    """``100.00 monthly``, or ``-`` without a budget (the amount is in ``pricing_currency``)."""
    if amount is None:
        return NONE
    return f"{float(str(amount)):,.2f} {period or 'monthly'}"


def period_value(value: str | None, hint: str) -> str | None:
    """A ``--period`` / ``--budget-period`` value checked (a usage error otherwise)."""
    if value is None:
        return None
    try:
        return check_period(hint.lstrip("-"), value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


def key_panel(key: Key, now: float) -> Text:
    rows = [
        (label, value, STATE_STYLES.get(value, "") if label == "status" else "")
        for label, value in key_fields(key, now)
    ]
    return labelled(rows)


def key_path(ref: str) -> str:
    """The API path of one key; ``ref`` may hold any character a name can (not a secret)."""
    return f"/keys/{quote(ref, safe='')}"


def check_ref(ref: str) -> str:
    """``ref`` as given, after refusing a mistyped secret (a usage error that does not echo it).

    A secret that fails its checksum could never match, and saying so up front spares a
    round trip whose 404 would not say why.
    """
    if looks_like_secret(ref) and not has_valid_checksum(ref):
        raise typer.BadParameter(
            "this looks like a key's secret but is not a whole one (wrong length or checksum): "
            "paste it again, or give the key's id, prefix or name",
            param_hint="REF",
        )
    return ref


def find_key(client: AdminClient, ref: str) -> Key | None:
    """The key a secret names, asked by its hash; ``None`` when ``ref`` is no secret."""
    if not looks_like_secret(ref):
        return None
    answer = client.post("/keys/lookup", {"sha256": key_sha256(ref)})
    return answer.get("key") or {}


def key_ref(client: AdminClient, ref: str) -> str:
    """A reference the ``/keys/{ref}`` paths take: a secret becomes its key's id."""
    key = find_key(client, ref)
    return ref if key is None else str(key.get("id", ""))


CLEAR_CHOICES: tuple[str, ...] = tuple(CLEARABLE)
"""``keys update --clear`` choices: the command-line names of the fields that have a "none"."""


def clear_choices(values: list[str] | None) -> list[str] | None:
    """``--clear`` values, each one of :data:`CLEAR_CHOICES` (a usage error otherwise)."""
    for value in values or ():
        if value not in CLEARABLE:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(CLEAR_CHOICES)}")
    return values


class Settable(StrEnum):
    """The states ``keys update --status`` may set; expiry and quota are judged by the gateway."""

    active = "active"
    disabled = "disabled"


def key_fields_body(
    *,
    now: float,
    user_id: str | None = None,
    models: str | None = None,
    allowed_ips: str | None = None,
    quota: int | None = None,
    rpm: int | None = None,
    burst: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    priority: int | None = None,
    expires: str | None = None,
    team: str | None = None,
    budget: float | None = None,
    budget_period: str | None = None,
) -> dict[str, object]:
    """The API fields for the options given (``None`` = not given); ``BadParameter`` if wrong."""
    body: dict[str, object] = {}
    if user_id is not None:
        body["user_id"] = user_id
    if team is not None:
        body["team"] = team
    if budget is not None:
        body["budget"] = budget
    period = period_value(budget_period, "--budget-period")
    if period is not None:
        body["budget_period"] = period
    if models is not None:
        body["models"] = parse_list(models)
    if allowed_ips is not None:
        body["allowed_ips"] = parse_list(allowed_ips)
    for field, value in (
        ("total_quota", quota),
        ("rpm", rpm),
        ("burst", burst),
        ("tpm", tpm),
        ("max_concurrent", max_concurrent),
        ("priority", priority),
    ):
        if value is not None:
            body[field] = value
    if expires is not None:
        try:
            body["expires_at"] = parse_expiry(expires, now)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--expires") from None
    return body


def metadata_option(items: list[str] | None) -> dict[str, object] | None:
    """``--metadata`` items as a mapping (``None`` when none were given)."""
    if not items:
        return None
    try:
        return parse_metadata(items)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--metadata") from None


def update_body(
    fields: dict[str, object],
    *,
    name: str | None,
    status: Settable | None,
    clear: Sequence[str],
    metadata: dict[str, object] | None,
    current_metadata: Mapping[str, object] | None,
    reset_used_quota: bool,
) -> dict[str, object]:
    """The PATCH body of ``keys update``: options given, fields cleared, metadata merged.

    ``--metadata`` adds to the key's metadata (``current_metadata``) rather than replacing it;
    ``--clear metadata`` first empties it, so both together replace it.
    """
    body = dict(fields)
    if name is not None:
        body["name"] = name
    if status is not None:
        body["status"] = status.value
    for choice in clear:
        field = CLEARABLE[choice]
        if field.name in body:
            raise typer.BadParameter(f"{choice} is both set and cleared", param_hint="--clear")
        body[field.name] = field.cleared()
    if metadata is not None:
        base = {} if "metadata" in clear else dict(current_metadata or {})
        body["metadata"] = {**base, **metadata}
    if reset_used_quota:
        body["used_quota"] = 0
    return body


# Options ---------------------------------------------------------------------------------------

UserIdOption = Annotated[str | None, typer.Option("--user-id", help=doc("user_id"))]
ModelsOption = Annotated[
    str | None,
    typer.Option("--models", help=doc("models") + " Comma-separated."),
]
AllowedIpsOption = Annotated[
    str | None,
    typer.Option("--allowed-ips", help=doc("allowed_ips") + " Comma-separated."),
]
QuotaOption = Annotated[int | None, typer.Option("--quota", min=1, help=doc("total_quota"))]
RpmOption = Annotated[int | None, typer.Option("--rpm", min=0, help=doc("rpm"))]
BurstOption = Annotated[int | None, typer.Option("--burst", min=1, help=doc("burst"))]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=0, help=doc("tpm"))]
MaxConcurrentOption = Annotated[
    int | None, typer.Option("--max-concurrent", min=0, help=doc("max_concurrent"))
]
PriorityOption = Annotated[int | None, typer.Option("--priority", help=doc("priority"))]
TeamOption = Annotated[str | None, typer.Option("--team", help=doc("team"))]
BudgetOption = Annotated[float | None, typer.Option("--budget", min=0, help=doc("budget"))]
BudgetPeriodOption = Annotated[
    str | None,
    typer.Option(
        "--budget-period",
        help=doc("budget_period"),
        autocompletion=lambda incomplete: [p for p in PERIODS if p.startswith(incomplete)],
    ),
]
ExpiresOption = Annotated[
    str | None,
    typer.Option(
        "--expires",
        help="Expiry: a duration from now (30d, 12h), a date (2027-01-01, UTC), "
        "Unix seconds, or 'never'.",
    ),
]
MetadataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--metadata",
        help="name=value (text) or name:=json; repeat for more.",
        show_default=False,
    ),
]
RefArgument = Annotated[
    str,
    typer.Argument(
        help="Key id, display prefix, unique name, or the key's secret (sent only as its hash).",
        callback=check_ref,
        autocompletion=key_refs,
        show_default=False,
    ),
]


# Commands --------------------------------------------------------------------------------------


@app.command("add", epilog=EXIT_CODES_EPILOG)
def add(
    name: Annotated[str, typer.Option("--name", help=doc("name"))],
    user_id: UserIdOption = None,
    models: ModelsOption = None,
    allowed_ips: AllowedIpsOption = None,
    quota: QuotaOption = None,
    rpm: RpmOption = None,
    burst: BurstOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    priority: PriorityOption = None,
    expires: ExpiresOption = None,
    metadata: MetadataOption = None,
    team: TeamOption = None,
    budget: BudgetOption = None,
    budget_period: BudgetPeriodOption = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Issue a new key and print its secret — the only time it is ever shown."""
    body = key_fields_body(
        now=time.time(),
        user_id=user_id,
        models=models,
        allowed_ips=allowed_ips,
        quota=quota,
        rpm=rpm,
        burst=burst,
        tpm=tpm,
        max_concurrent=max_concurrent,
        priority=priority,
        expires=expires,
        team=team,
        budget=budget,
        budget_period=budget_period,
    )
    body["name"] = name
    extra = metadata_option(metadata)
    if extra is not None:
        body["metadata"] = extra
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.post("/keys", body)
    if json_output:
        print_json(answer)
        return
    key = answer.get("key") or {}
    # The notes go to stderr and the secret alone to stdout: `SECRET=$(llmproxy keys add ...)`.
    print_note(f"Created key {key.get('id')} ({key.get('name')}, prefix {key.get('prefix')}).")
    print_note("Its secret follows; store it now: it cannot be shown again.")
    stdout_console().print(
        str(answer.get("secret", "")), style="bold", markup=False, highlight=False
    )


@app.command("list", epilog=EXIT_CODES_EPILOG)
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    user_id: Annotated[
        str | None, typer.Option("--user-id", help="Only the keys of this owner.")
    ] = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """List keys: id, name, prefix, owner, status, quota and expiry."""
    params: dict[str, str | int | float] = {}
    if all_keys:
        params["all"] = 1
    if user_id is not None:
        params["user_id"] = user_id
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        answer = client.get("/keys", params)
    if json_output:
        print_json(answer)
        return
    keys = list(answer.get("keys") or [])
    if not keys:
        print_note("no keys" + ("" if all_keys else " (--all includes revoked keys)"))
        return
    stdout_console().print(keys_table(keys, time.time()))


@app.command("show", epilog=EXIT_CODES_EPILOG)
def show(
    ref: RefArgument,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show every field of one key (never its secret)."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        key = find_key(client, ref)
        answer = {"key": key} if key is not None else client.get(key_path(ref))
    if json_output:
        print_json(answer)
        return
    stdout_console().print(key_panel(answer.get("key") or {}, time.time()), soft_wrap=True)


@app.command("revoke", epilog=EXIT_CODES_EPILOG)
def revoke(
    ref: RefArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    socket: SocketOption = None,
    admin_url: AdminUrlOption = None,
    token: TokenOption = None,
) -> None:
    """Revoke a key for good: the next request with it is refused. Asks first unless --yes."""
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        ref = key_ref(client, ref)
        if not (yes or json_output):
            key = client.get(key_path(ref)).get("key") or {}
            question = (
                f"Revoke key {key.get('id')} ({key.get('name')}, prefix {key.get('prefix')})? "
                "This cannot be undone"
            )
            try:
                confirmed = typer.confirm(question, err=True)
            except typer.Abort:  # end of input, or Ctrl-C at the prompt
                confirmed = False
                print_note("")
            if not confirmed:
                print_note("not revoked")
                raise typer.Exit(ExitCode.REFUSED)
            ref = str(key.get("id") or ref)
        answer = client.post(f"{key_path(ref)}/revoke")
    if json_output:
        print_json(answer)
        return
    key = answer.get("key") or {}
    stdout_console().print(
        f"Revoked key {key.get('id')} ({key.get('name')}); requests with it are refused from now.",
        markup=False,
        highlight=False,
    )


@app.command("update", epilog=EXIT_CODES_EPILOG)
def update(
    ref: RefArgument,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    user_id: UserIdOption = None,
    models: ModelsOption = None,
    allowed_ips: AllowedIpsOption = None,
    quota: QuotaOption = None,
    rpm: RpmOption = None,
    burst: BurstOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    priority: PriorityOption = None,
    expires: ExpiresOption = None,
    team: TeamOption = None,
    budget: BudgetOption = None,
    budget_period: BudgetPeriodOption = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            help="name=value or name:=json, added to the key's metadata; repeat for more.",
            show_default=False,
        ),
    ] = None,
    status: Annotated[
        Settable | None, typer.Option("--status", help="Switch the key on or off.")
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            metavar="FIELD",
            callback=clear_choices,
            autocompletion=lambda incomplete: [
                name for name in CLEAR_CHOICES if name.startswith(incomplete)
            ],
            help="Unset a field (no limit, any model, never expires); repeat for more. "
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
    """Change fields of a key; options not given stay as they are."""
    fields = key_fields_body(
        now=time.time(),
        user_id=user_id,
        models=models,
        allowed_ips=allowed_ips,
        quota=quota,
        rpm=rpm,
        burst=burst,
        tpm=tpm,
        max_concurrent=max_concurrent,
        priority=priority,
        expires=expires,
        team=team,
        budget=budget,
        budget_period=budget_period,
    )
    extra = metadata_option(metadata)
    cleared = list(dict.fromkeys(clear or []))

    def body_with(current_metadata: Mapping[str, object] | None) -> dict[str, object]:
        return update_body(
            fields,
            name=name,
            status=status,
            clear=cleared,
            metadata=extra,
            current_metadata=current_metadata,
            reset_used_quota=reset_used_quota,
        )

    # Built before the daemon is asked, so a wrong combination is a usage error up front.
    body = body_with(None)
    if not body:
        raise typer.BadParameter("nothing to change: give at least one option to set")
    target = Target(config, socket, admin_url, token)
    with daemon_session(target, json_output=json_output) as client:
        ref = key_ref(client, ref)
        if extra is not None and "metadata" not in cleared:
            # --metadata adds to what the key has, which only the daemon knows.
            key = client.get(key_path(ref)).get("key") or {}
            ref = str(key.get("id") or ref)
            body = body_with(key.get("metadata"))
        answer = client.patch(key_path(ref), body)
    if json_output:
        print_json(answer)
        return
    stdout_console().print(key_panel(answer.get("key") or {}, time.time()), soft_wrap=True)

"""One definition of a team's fields: the key store's columns, the admin API, the CLI's options
and the docs all carry exactly the fields of :mod:`llmproxy.teamfields`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import typer.core
import typer.main

from llmproxy.cli import teams as teams_cli
from llmproxy.daemon.admin_teams import team_json
from llmproxy.keystore import KeyStore
from llmproxy.keystore.record import TEAM_COLUMNS
from llmproxy.teamfields import TEAM_ADD_FIELDS, TEAM_CLEARABLE, TEAM_FIELD_MAP, TEAM_FIELDS

DOCS = Path(__file__).parent.parent / "docs"
TIMES = {"created_at", "updated_at"}


def test_the_store_keeps_every_team_field_in_a_column(tmp_path: Path) -> None:
    """The teams table's columns are the fields (the budget's amount and period apart) and
    the times; the API shows each one."""
    assert set(TEAM_COLUMNS) == {*TEAM_FIELD_MAP, *TIMES}
    with KeyStore(tmp_path / "keys.db") as store:
        team = store.add_team(name="ml", budget=5, rpm=2)
    with sqlite3.connect(tmp_path / "keys.db") as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(teams)")}
    assert columns == set(TEAM_COLUMNS)
    shown = team_json(team)
    assert set(shown) == set(TEAM_COLUMNS)
    assert (shown["budget"], shown["period"], shown["rpm"]) == (5.0, "monthly", 2)


def test_the_cli_has_an_option_for_every_team_field() -> None:
    """add takes every add field, update those and --clear / --reset-used-quota; the help is
    the field's description."""
    group = typer.main.get_command(teams_cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    assert set(group.commands) == {"add", "list", "show", "update", "remove"}
    for command in ("add", "update"):
        options = {o.lstrip("-") for p in group.commands[command].params for o in p.opts}
        named = {TEAM_FIELD_MAP[name].cli_name for name in TEAM_ADD_FIELDS if name != "name"}
        assert named <= options
    update = group.commands["update"]
    options = {o.lstrip("-") for p in update.params for o in p.opts}
    assert {"clear", "reset-used-quota"} <= options
    assert set(TEAM_CLEARABLE) == {"description", "budget", "rpm", "tpm", "max-concurrent", "quota"}
    rpm = next(p for p in update.params if "--rpm" in p.opts)
    assert isinstance(rpm, typer.core.TyperOption)
    assert rpm.help == TEAM_FIELD_MAP["rpm"].doc


def test_the_admin_api_docs_name_every_team_field() -> None:
    text = (DOCS / "admin-api.md").read_text(encoding="utf-8")
    for field in TEAM_FIELDS:
        assert f'"{field.name}"' in text
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    assert "## Teams" in operations
    for field in TEAM_FIELDS:
        assert f"`{field.cli_name if field.option else field.name}`" in operations

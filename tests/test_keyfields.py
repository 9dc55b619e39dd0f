"""One definition of a key's fields: the config, the key store, the admin API, the CLI and the
docs all carry exactly the fields of :mod:`llmproxy.keyfields`, with its descriptions."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

from llmproxy.cli import keys as keys_cli
from llmproxy.config.model import StaticKey
from llmproxy.daemon.admin_keys import key_json
from llmproxy.keyfields import ADD_FIELDS, CLEARABLE, FIELDS, KEY_FIELDS, check_fields
from llmproxy.keystore import KeyStore
from llmproxy.keystore.record import STORE_FIELDS, KeyRecord

DOCS = Path(__file__).parent.parent / "docs"


def test_a_static_key_in_the_config_has_the_fields_and_their_descriptions() -> None:
    assert set(StaticKey.model_fields) == {"key", *FIELDS}
    for field in KEY_FIELDS:
        assert StaticKey.model_fields[field.name].description == field.doc


def test_the_key_store_keeps_every_field_in_a_column(tmp_path: Path) -> None:
    assert {f.name for f in dataclasses.fields(KeyRecord)} == {*STORE_FIELDS, *FIELDS}
    with KeyStore(tmp_path / "keys.db") as store:
        _, record = store.add(name="k", models=["m"], rpm=5, metadata={"tier": "pro"})
    with sqlite3.connect(tmp_path / "keys.db") as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(keys)")}
    assert columns == {*STORE_FIELDS, *FIELDS}
    shown = key_json(record)
    assert set(shown) == {*STORE_FIELDS, *FIELDS} - {"sha256"}
    assert (shown["models"], shown["rpm"], shown["metadata"]) == (["m"], 5, {"tier": "pro"})


def test_the_cli_has_an_option_for_every_field_and_clears_what_has_a_none() -> None:
    group = typer.main.get_command(keys_cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    add_options = {
        option.lstrip("-") for param in group.commands["add"].params for option in param.opts
    }
    assert {FIELDS[name].cli_name for name in ADD_FIELDS} <= add_options
    update = group.commands["update"]
    update_options = {option.lstrip("-") for param in update.params for option in param.opts}
    assert {field.cli_name for field in KEY_FIELDS if field.on_add} <= update_options
    assert {"status", "reset-used-quota"} <= update_options  # status and used_quota
    (clear,) = [param for param in update.params if "--clear" in param.opts]
    assert isinstance(clear, typer.core.TyperOption)
    assert clear.help is not None
    assert f"one of {', '.join(CLEARABLE)}." in clear.help
    refused = CliRunner().invoke(keys_cli.app, ["update", "k", "--clear", "name"])
    assert refused.exit_code == 2
    assert "'name' is not one of user-id, quota" in refused.output
    for name in ("rpm", "quota", "models"):
        option = next(p for p in update.params if f"--{name}" in p.opts)
        assert isinstance(option, typer.core.TyperOption)
        assert option.help is not None
        assert option.help.startswith(CLEARABLE[name].doc.split(";")[0])


def test_clearing_sets_each_fields_none_and_the_store_accepts_it() -> None:
    cleared = {field.name: field.cleared() for field in CLEARABLE.values()}
    assert check_fields(cleared) == {
        "user_id": "",
        "total_quota": None,
        "expires_at": None,
        "models": (),
        "allowed_ips": (),
        "rpm": None,
        "burst": None,
        "tpm": None,
        "max_concurrent": None,
        "priority": None,
        "metadata": {},
        "team": "",
        "budget": None,
    }
    with pytest.raises(ValueError, match=r"status: not a key field; fields: name, user_id,"):
        check_fields({"status": "active"}, ADD_FIELDS)


def test_the_admin_api_docs_name_every_field() -> None:
    text = (DOCS / "admin-api.md").read_text(encoding="utf-8")
    for field in KEY_FIELDS:
        assert f'"{field.name}"' in text

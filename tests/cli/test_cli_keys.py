"""`llmproxy keys ...` against a fake admin API: what is sent, and what the operator sees."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin
from tests.cli.test_rows import make_key


def sock(admin: FakeAdmin) -> list[str]:
    return ["--socket", str(admin.socket)]


def test_add_sends_every_option_and_prints_the_secret_once(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("POST", "/keys", {"secret": "sk-llmp-SECRET", "key": make_key()}, status=201)
    before = time.time()
    result = cli(
        "keys", "add", "--name", "ci", "--user-id", "alice", "--models", "a, b",
        "--quota", "1000", "--rpm", "60", "--tpm", "9000", "--max-concurrent", "4",
        "--priority", "-1", "--expires", "30d", "--allowed-ips", "10.0.0.0/8,1.2.3.4",
        "--metadata", "team=ml", "--metadata", "tier:=2", *sock(admin),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = admin.seen[0].body
    expires = body.pop("expires_at")
    assert before + 30 * 86400 <= expires <= time.time() + 30 * 86400
    assert body == {
        "name": "ci",
        "user_id": "alice",
        "models": ["a", "b"],
        "allowed_ips": ["10.0.0.0/8", "1.2.3.4"],
        "total_quota": 1000,
        "rpm": 60,
        "tpm": 9000,
        "max_concurrent": 4,
        "priority": -1,
        "metadata": {"team": "ml", "tier": 2},
    }
    # The secret alone on stdout (`SECRET=$(llmproxy keys add ...)`), the warning on stderr.
    assert result.stdout == "sk-llmp-SECRET\n"
    assert "store it now: it cannot be shown again" in result.stderr
    assert "key_abc" in result.stderr


def test_add_sends_only_the_name_when_nothing_else_is_given(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("POST", "/keys", {"secret": "sk-x", "key": make_key()}, status=201)
    assert cli("keys", "add", "--name", "ci", *sock(admin)).exit_code == 0
    assert admin.seen[0].body == {"name": "ci"}


def test_add_json_is_the_api_answer(cli: Invoke, admin: FakeAdmin) -> None:
    answer = {"secret": "sk-x", "key": make_key()}
    admin.route("POST", "/keys", answer, status=201)
    result = cli("keys", "add", "--name", "ci", "--json", *sock(admin))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == answer


def test_list_table(cli: Invoke, admin: FakeAdmin) -> None:
    listed = [
        make_key(user_id="alice", total_quota=1000, used_quota=250),
        make_key(id="key_old", name="old", revoked_at=time.time() - 5),
    ]
    admin.route("GET", "/keys", {"keys": listed})
    result = cli("keys", "list", "--all", "--user-id", "alice", *sock(admin))
    assert result.exit_code == 0, result.output
    assert admin.seen[0].query == {"all": "1", "user_id": "alice"}
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "PREFIX", "USER", "STATUS", "QUOTA", "USED", "/", "TOTAL", "EXPIRES",
    ]  # fmt: skip
    assert lines[1].split() == ["key_abc", "ci", "sk-llmp-abc", "alice", "active", "250", "/",
                                "1,000", "never"]  # fmt: skip
    assert lines[2].split()[:5] == ["key_old", "old", "sk-llmp-abc", "-", "revoked"]


def test_list_without_all_sends_no_filter(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/keys", {"keys": []})
    result = cli("keys", "list", *sock(admin))
    assert result.exit_code == 0
    assert admin.seen[0].query == {}
    assert "no keys" in result.stderr


def test_show_prints_every_field(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/keys/ci", {"key": make_key(models=["llama"], metadata={"t": 1})})
    result = cli("keys", "show", "ci", *sock(admin))
    assert result.exit_code == 0
    fields = {
        line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in result.stdout.splitlines()
    }
    assert fields["id"] == "key_abc"
    assert fields["models"] == "llama"
    assert fields["metadata"] == '{"t": 1}'
    assert fields["status"] == "active"


def test_show_quotes_an_odd_ref(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/keys/team a/b", {"key": make_key()})
    assert cli("keys", "show", "team a/b", *sock(admin)).exit_code == 0
    assert admin.seen[0].path == "/keys/team a/b"


def test_revoke_asks_and_revokes_the_key_it_showed(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/keys/ci", {"key": make_key()})
    admin.route("POST", "/keys/key_abc/revoke", {"key": make_key(revoked_at=time.time())})
    result = cli("keys", "revoke", "ci", *sock(admin), input="y\n")
    assert result.exit_code == 0, result.output
    assert "Revoke key key_abc (ci, prefix sk-llmp-abc)?" in result.stderr
    assert [(seen.method, seen.path) for seen in admin.seen] == [
        ("GET", "/keys/ci"),
        ("POST", "/keys/key_abc/revoke"),
    ]
    assert "Revoked key key_abc" in result.stdout


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_revoke_declined_changes_nothing(cli: Invoke, admin: FakeAdmin, answer: str) -> None:
    admin.route("GET", "/keys/ci", {"key": make_key()})
    result = cli("keys", "revoke", "ci", *sock(admin), input=answer)
    assert result.exit_code == 1
    assert "not revoked" in result.stderr
    assert [seen.method for seen in admin.seen] == ["GET"]


@pytest.mark.parametrize("flag", ["--yes", "-y", "--json"])
def test_revoke_without_asking(cli: Invoke, admin: FakeAdmin, flag: str) -> None:
    revoked = {"key": make_key(revoked_at=time.time())}
    admin.route("POST", "/keys/ci/revoke", revoked)
    result = cli("keys", "revoke", "ci", flag, *sock(admin))
    assert result.exit_code == 0
    assert [(seen.method, seen.path) for seen in admin.seen] == [("POST", "/keys/ci/revoke")]
    assert "Revoke key" not in result.stderr
    if flag == "--json":
        assert json.loads(result.stdout) == revoked


def test_update_sends_the_changes_and_shows_the_key(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("PATCH", "/keys/ci", {"key": make_key(status="disabled", rpm=5)})
    result = cli(
        "keys", "update", "ci", "--rpm", "5", "--status", "disabled", "--clear", "expires",
        "--clear", "models", "--reset-used-quota", "--name", "ci2", *sock(admin),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert admin.seen[0].body == {
        "rpm": 5,
        "status": "disabled",
        "expires_at": None,
        "models": [],
        "used_quota": 0,
        "name": "ci2",
    }
    assert "disabled" in result.stdout


def test_update_metadata_adds_to_what_the_key_has(cli: Invoke, admin: FakeAdmin) -> None:
    current: dict[str, Any] = {"team": "ml", "tier": 1}
    admin.route("GET", "/keys/ci", {"key": make_key(metadata=current)})
    admin.route("PATCH", "/keys/key_abc", {"key": make_key()})
    result = cli("keys", "update", "ci", "--metadata", "tier:=2", *sock(admin))
    assert result.exit_code == 0, result.output
    assert admin.seen[-1].body == {"metadata": {"team": "ml", "tier": 2}}


def test_update_metadata_with_clear_replaces_it(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("PATCH", "/keys/ci", {"key": make_key()})
    result = cli(
        "keys", "update", "ci", "--clear", "metadata", "--metadata", "a=b", *sock(admin)
    )  # fmt: skip
    assert result.exit_code == 0
    assert [seen.method for seen in admin.seen] == ["PATCH"]
    assert admin.seen[0].body == {"metadata": {"a": "b"}}

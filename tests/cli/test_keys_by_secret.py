"""``keys show|update|revoke SECRET``: a leaked key is found by its hash, never echoed or sent.

Against a real daemon: the CLI sends only the secret's SHA-256 (``POST /keys/lookup``), and no
answer, error or URL ever holds the secret itself.
"""

from __future__ import annotations

import json

import httpx

from llmproxy.apikey import generate_key, key_sha256
from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin
from tests.cli.live_daemon import Daemon, daemon
from tests.cli.test_rows import make_key

__all__ = ["daemon"]  # the module's fixture


def test_a_leaked_secret_is_shown_updated_and_revoked(cli: Invoke, daemon: Daemon) -> None:
    """show, update and revoke take the secret; the gateway refuses it at once after revoke."""
    config = ["-c", str(daemon.config)]
    secret = cli("keys", "add", "--name", "leaked", *config).stdout.strip()
    assert daemon.chat(secret) == 200

    shown = cli("keys", "show", secret, "--json", *config)
    assert shown.exit_code == 0, shown.output
    key = json.loads(shown.stdout)["key"]
    assert key["name"] == "leaked"
    assert secret not in shown.output

    updated = cli("keys", "update", secret, "--user-id", "mallory-victim", *config)
    assert updated.exit_code == 0, updated.output
    assert "mallory-victim" in updated.stdout
    assert secret not in updated.output

    revoked = cli("keys", "revoke", secret, *config, input="y\n")
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked key {key['id']} (leaked)" in revoked.stdout
    assert secret not in revoked.output
    assert daemon.chat(secret) == 401

    # A revoked key's secret and an unknown one get the same "no key" answer, without it.
    for gone in (secret, generate_key()):
        for command in (["show"], ["revoke", "--yes"], ["update", "--rpm", "5"]):
            result = cli("keys", command[0], gone, *command[1:], *config)
            assert result.exit_code == 1, result.output
            assert "no active key has this secret" in result.stderr
            assert gone not in result.output


def test_a_mistyped_secret_is_a_usage_error_that_does_not_echo_it(
    cli: Invoke, daemon: Daemon
) -> None:
    """A secret that fails its checksum exits 2 before any request, and is not printed."""
    secret = generate_key()
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for text in (typo, secret + "x"):
        result = cli("keys", "show", text, "-c", str(daemon.config))
        assert result.exit_code == 2, result.output
        assert "not a whole one" in result.output
        assert text not in result.output


def test_the_admin_api_never_echoes_a_secret_put_in_a_url(daemon: Daemon) -> None:
    """GET /keys/SECRET is refused with 400 and a message without the secret."""
    secret = generate_key()
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://admin") as client:
        answer = client.get(f"/keys/{secret}")
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "secret_in_url"
        assert secret not in answer.text
        bad = client.post("/keys/lookup", json={"sha256": "not-hex"})
        assert bad.status_code == 400
        assert "sha256" in bad.json()["error"]["message"]
        unknown = client.post("/keys/lookup", json={"sha256": key_sha256(secret)})
        assert unknown.status_code == 404


def test_only_the_hash_is_sent(cli: Invoke, admin: FakeAdmin) -> None:
    """The request the CLI makes for a secret holds its SHA-256, and the secret nowhere."""
    secret = generate_key()
    admin.route("POST", "/keys/lookup", {"key": make_key(id="key_leak")})
    admin.route("POST", "/keys/key_leak/revoke", {"key": make_key(id="key_leak")})
    result = cli("keys", "revoke", secret, "--yes", "--socket", str(admin.socket))
    assert result.exit_code == 0, result.output
    lookup, revoke = admin.seen
    assert (lookup.method, lookup.path, lookup.body) == (
        "POST",
        "/keys/lookup",
        {"sha256": key_sha256(secret)},
    )
    assert revoke.path == "/keys/key_leak/revoke"
    assert all(secret not in repr(seen) for seen in admin.seen)

"""Who the client is, and what the gateway says about it upstream.

``X-Forwarded-For`` names the client only from a trusted proxy; values that become upstream
headers (a key's user_id, decision metadata, a backend's headers) are checked where they enter,
and a bad one is a clear refusal, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.daemon import LLMPROXY
from tests.security.daemon import base_config, capture_backend, daemon, free_port
from tests.security.wire import http_request

KEY = "sk-office-0123456789"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _auth(**extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "pipeline": [
            {
                "name": "inline",
                "type": "static",
                "keys": [{"key": KEY, "allowed_ips": ["10.0.0.0/8"], "user_id": "alice"}],
            }
        ],
        "forward_metadata": {"user_id": "X-User-Id"},
        **extra,
    }


def _chat(**headers: str) -> bytes:
    return http_request(
        "POST", b"/v1/chat/completions", BODY, {"authorization": f"Bearer {KEY}", **headers}
    )


def test_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """From loopback with no trusted proxies, X-Forwarded-For does not get past allowed_ips,
    and the backend is told only the real peer (no spoofed entry, no duplicate)."""
    with capture_backend() as backend:
        with daemon(tmp_path, base_config(backend.url, free_port(), auth=_auth())) as running:
            for spoof in ({"x-forwarded-for": "10.1.2.3"}, {"forwarded": "for=10.1.2.3"}):
                reply = running.request(_chat(**spoof))
                assert (reply.status, reply.error_code()) == (403, "ip_not_allowed")
            assert backend.received == []


def test_forwarded_for_from_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    """With the peer in server.trusted_proxies the chain is read from the right; upstream gets
    the received chain plus the peer, once, and the key's user id as configured."""
    with capture_backend() as backend:
        config = base_config(
            backend.url,
            free_port(),
            server={"trusted_proxies": ["127.0.0.1"]},
            auth=_auth(),
        )
        with daemon(tmp_path, config) as running:
            reply = running.request(_chat(**{"x-forwarded-for": "203.0.113.9, 10.1.2.3"}))
            assert reply.status == 200
            received = backend.received[-1]
            assert received.header(b"x-forwarded-for") == b"203.0.113.9, 10.1.2.3, 127.0.0.1"
            assert received.header(b"x-user-id") == b"alice"
            # The nearest untrusted hop is the client: a forged left-most entry does not help.
            reply = running.request(_chat(**{"x-forwarded-for": "10.9.9.9, 198.51.100.7"}))
            assert (reply.status, reply.error_code()) == (403, "ip_not_allowed")


def test_client_cannot_forge_forwarded_metadata(tmp_path: Path) -> None:
    """A client's own X-User-Id, in any spelling, never reaches the backend."""
    with capture_backend() as backend:
        config = base_config(
            backend.url,
            free_port(),
            server={"trusted_proxies": ["127.0.0.0/8"]},
            auth=_auth(),
        )
        with daemon(tmp_path, config) as running:
            reply = running.request(
                _chat(**{"x-forwarded-for": "10.0.0.1", "x-user-id": "mallory", "x_user_id": "m"})
            )
            assert reply.status == 200
            headers = backend.received[-1].headers
            assert (b"x-user-id", b"alice") in headers
            assert all(value != b"mallory" and name != b"x_user_id" for name, value in headers)


LUA_CRLF = 'return {allow = true, metadata = {user_id = "eve\\r\\nx-admin: 1"}}\n'


def test_decision_metadata_that_cannot_be_a_header_is_a_clear_500(tmp_path: Path) -> None:
    """A Lua decision whose forwarded metadata holds CR/LF gets the request refused with an
    OpenAI-style 500 and a log line naming the provider; nothing is sent upstream."""
    with capture_backend() as backend:
        auth = _auth()
        auth["pipeline"][0]["lua_script"] = LUA_CRLF  # type: ignore[index]
        auth["pipeline"][0]["keys"][0].pop("allowed_ips")  # type: ignore[index]
        with daemon(tmp_path, base_config(backend.url, free_port(), auth=auth)) as running:
            reply = running.request(_chat())
            assert (reply.status, reply.error_code()) == (500, "invalid_forwarded_metadata")
            assert backend.received == []
            log = running.log_text()
            assert "auth provider inline" in log
            assert "user_id" in log
            assert "Traceback" not in log


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [*LLMPROXY, "config", "check", str(path)], capture_output=True, text=True, check=False
    )


def test_config_refuses_values_that_cannot_be_headers(tmp_path: Path) -> None:
    """config check names the line of a backend header, a key's user_id or a forwarded header
    name that could not be sent."""
    cases = {
        'backends: [{url: "http://a", headers: {X-Team: "gpu\\r\\nx-admin: 1"}}]\n': "headers",
        'backends: [{url: "http://a", headers: {"Bad Name": "x"}}]\n': "not a valid header name",
        'backends: [{url: "http://a"}]\napi_keys: [{key: k, user_id: "a\\nb"}]\n': "user_id",
        'backends: [{url: "http://a"}]\nauth: {forward_metadata: {user_id: "X User"}}\n': (
            "not a valid header name"
        ),
    }
    for text, fragment in cases.items():
        result = _check(tmp_path, text)
        assert result.returncode == 2, result.stdout + result.stderr
        assert fragment in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_key_store_refuses_control_characters(tmp_path: Path) -> None:
    """`keys add` refuses a user_id with CR/LF: it could not be forwarded as a header."""
    from llmproxy.keystore import KeyStore

    with (
        KeyStore(tmp_path / "keys.db") as store,
        pytest.raises(ValueError, match="control characters"),
    ):
        store.add(name="x", user_id="eve\r\nx-admin: 1")

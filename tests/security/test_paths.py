"""Paths: every rule reads the canonical path, and the backend receives exactly that path.

Raw sockets send each target byte for byte (HTTP clients would normalise the interesting ones
away); a capture backend records what arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.security.daemon import Daemon, behind_gateway, examples, static_auth
from tests.security.wire import CaptureBackend, http_request

LIMITED = "sk-limited-0123456789"  # may use m1 only
OPEN = "sk-open-0123456789"  # any model
NO_MODEL = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()
OTHER_MODEL = json.dumps({"model": "m2", "messages": [{"role": "user", "content": "hi"}]}).encode()
ALLOWED = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, CaptureBackend]]:
    auth = static_auth(
        {"key": LIMITED, "models": ["m1"]},
        {"key": OPEN},
        skip_paths=["/health", "/ready", "/metrics", "/v1/models"],
    )
    with behind_gateway(tmp_path_factory.mktemp("paths"), auth=auth) as running:
        yield running


def _post(target: bytes, body: bytes, key: str | None) -> bytes:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return http_request("POST", target, body, headers)


@pytest.mark.parametrize(
    ("target", "key", "body", "status", "code"),
    [
        (b"/v1/x/../chat/completions", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/x/%2e%2e/chat/completions", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/../metrics", LIMITED, b"{}", 400, "invalid_path"),
        (b"/v1/../../start_profile", OPEN, b"{}", 400, "invalid_path"),
        (b"/v1/models/../chat/completions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/models%2F..%2Fchat%2Fcompletions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/models%2f..%2fchat%2fcompletions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/models/..%2Fchat/completions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/models%5C..%5Cchat%5Ccompletions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/models\\..\\chat\\completions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1/modelsX/chat/completions", None, ALLOWED, 401, "missing_api_key"),
        (b"/v1/models;x/../chat/completions", None, ALLOWED, 400, "invalid_path"),
        (b"/v1//chat/completions", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/chat/completions/", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/chat/./completions", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/ch%61t/completions", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/chat/completions%00", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/chat/completions%25", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/v1/chat/%c0%ae%c0%ae/x", LIMITED, NO_MODEL, 400, "invalid_path"),
        (b"/V1/CHAT/COMPLETIONS", LIMITED, NO_MODEL, 400, "missing_model"),
        (b"/v1/Chat/Completions", LIMITED, OTHER_MODEL, 403, "model_not_allowed"),
        (b"/v1/rerank", LIMITED, NO_MODEL, 403, "model_required"),
        (b"/v1/models/m2", None, b"", 405, "method_not_allowed"),
        (b"/v1/load_lora_adapter", OPEN, ALLOWED, 404, "unknown_path"),
        (b"/v1/chat/completionsx", OPEN, ALLOWED, 404, "unknown_path"),
    ],
)
def test_reported_bypasses_are_closed(
    setup: tuple[Daemon, CaptureBackend],
    target: bytes,
    key: str | None,
    body: bytes,
    status: int,
    code: str,
) -> None:
    """Dot segments, encoded separators, prefix tricks and case variants are refused or judged
    as the endpoint they are; none of them reaches the backend."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(target, body, key))
    assert (answer.status, answer.error_code()) == (status, code)
    assert len(backend.received) == before


def test_canonical_target_reaches_the_backend_byte_for_byte(
    setup: tuple[Daemon, CaptureBackend],
) -> None:
    """An allowed request's target (escapes of non-ASCII and reserved bytes, query) arrives
    exactly as sent: the HTTP client does not normalise it again."""
    running, backend = setup
    target = b"/v1/chat/completions?x=%2F..%2F&y=1"
    answer = running.request(_post(target, ALLOWED, OPEN))
    assert answer.status == 200
    assert backend.received[-1].target == target
    answer = running.request(_post(b"/v1/files/caf%C3%A9%20x", ALLOWED, OPEN))
    assert answer.status == 200
    assert backend.received[-1].target == b"/v1/files/caf%C3%A9%20x"


@pytest.mark.parametrize(
    ("method", "headers", "status", "code"),
    [
        ("CONNECT", {}, 405, "method_not_allowed"),
        ("TRACE", {}, 405, "method_not_allowed"),
        ("PROPFIND", {}, 405, "method_not_allowed"),
        ("POST", {"content-type": "text/plain"}, 400, "duplicate_header"),
        ("POST", {"content-encoding": "identity\r\ncontent-encoding: gzip"}, 415, None),
    ],
)
def test_methods_and_judged_headers_reach_the_backend_only_as_judged(
    setup: tuple[Daemon, CaptureBackend],
    method: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    """Methods the HTTP client would rewrite (CONNECT) or the API does not use are refused; a
    second content-type or content-encoding (joined upstream into one the gateway did not
    judge) is refused."""
    running, backend = setup
    before = len(backend.received)
    request = http_request(method, b"/v1/chat/completions", ALLOWED, headers)
    if method != "POST":
        request = request.replace(b"POST", method.encode(), 1)
    answer = running.request(
        request.replace(
            b"host: gateway", b"host: gateway\r\nauthorization: Bearer " + OPEN.encode()
        )
    )
    assert answer.status == status
    assert answer.error_code() == (code or "unsupported_media_type")
    assert len(backend.received) == before


def test_header_bytes_are_forwarded_as_sent(setup: tuple[Daemon, CaptureBackend]) -> None:
    """A UTF-8 header value reaches the backend byte for byte; one that is not UTF-8 (which the
    HTTP client could not pass on unchanged) is refused; Accept-Encoding is not passed on."""
    running, backend = setup
    auth = {"authorization": f"Bearer {OPEN}", "accept-encoding": "gzip"}
    request = http_request("POST", b"/v1/chat/completions", ALLOWED, auth)
    utf8 = request.replace(b"host: gateway", "host: gateway\r\nx-name: café".encode())
    assert running.request(utf8).status == 200
    assert backend.received[-1].header(b"x-name") == "café".encode()
    assert backend.received[-1].header(b"accept-encoding") is None
    latin1 = request.replace(b"host: gateway", b"host: gateway\r\nx-name: caf\xe9")
    answer = running.request(latin1)
    assert (answer.status, answer.error_code()) == (400, "invalid_header")


def test_models_are_listed_per_key(setup: tuple[Daemon, CaptureBackend]) -> None:
    """GET /v1/models lists only the models the key may use (and only models served)."""
    running, _ = setup
    limited = running.request(
        http_request("GET", b"/v1/models", headers={"authorization": f"Bearer {LIMITED}"})
    )
    # The capture backend names no models: discovery finds none, so only what the key may use
    # *and* a backend serves is listed, and nothing else leaks.
    assert limited.status == 200
    assert [m["id"] for m in limited.json()["data"]] == []
    one = running.request(http_request("GET", b"/v1/models/m2"))
    assert (one.status, one.error_code()) == (404, "model_not_found")


SEGMENTS = st.sampled_from(
    [
        "v1",
        "V1",
        "chat",
        "Chat",
        "completions",
        "models",
        "embeddings",
        ".",
        "..",
        "",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%00",
        "%0a",
        "%25",
        "%252e",
        ";",
        "..;",
        "%c0%af",
        "%ef%bc%8f",
        "x",
        "%61",
        "\\",
        "%20",
        "~",
        "@",
        ":",
    ]
)
TARGETS = st.lists(SEGMENTS, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))


@examples(300)
@given(target=TARGETS, body=st.sampled_from([NO_MODEL, OTHER_MODEL]))
def test_no_path_variant_gets_a_refused_request_through(
    setup: tuple[Daemon, CaptureBackend], target: str, body: bytes
) -> None:
    """Property: for any path built from separators, dot segments and their encodings, a key
    limited to m1 that names no model or m2 never reaches the backend, and every answer is an
    OpenAI-style error."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(target.encode(), body, LIMITED))
    assert 400 <= answer.status < 500
    assert answer.error_code()
    assert len(backend.received) == before


@examples(300)
@given(target=TARGETS)
def test_without_a_key_nothing_is_forwarded(
    setup: tuple[Daemon, CaptureBackend], target: str
) -> None:
    """Property: with /v1/models as a skip path, no variant of any path gets a request to the
    backend without a key."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(target.encode(), ALLOWED, None))
    assert answer.error_code() or answer.status == 200
    assert len(backend.received) == before


@examples(200)
@given(target=TARGETS)
def test_forwarded_target_is_the_judged_one(
    setup: tuple[Daemon, CaptureBackend], target: str
) -> None:
    """Property: whatever is forwarded arrives byte for byte as sent, so the backend decodes the
    path the gateway judged; whatever is not is refused with an OpenAI-style error."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(target.encode(), ALLOWED, OPEN))
    if len(backend.received) > before:
        assert answer.status == 200
        assert backend.received[-1].target == target.encode()
    else:
        assert answer.error_code()


def test_log_has_no_traceback(setup: tuple[Daemon, CaptureBackend], tmp_path: Path) -> None:
    """None of the above left a traceback in the daemon's log."""
    running, _ = setup
    assert "Traceback" not in running.log_text()

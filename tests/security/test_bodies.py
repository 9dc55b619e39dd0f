"""Bodies: the gateway judges the JSON members exactly as the backend parses them.

A capture backend parses what it received both as Python does (the last duplicate wins) and as
a first-duplicate-wins parser does; for every request that got through, both readings agree
with what the gateway decided on (the model it allowed, the priority it set, the stream it
metered).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.security.daemon import Daemon, behind_gateway, examples, static_auth
from tests.security.wire import CaptureBackend, http_request

KEY = "sk-body-0123456789"  # m1 only, priority 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, CaptureBackend]]:
    with behind_gateway(
        tmp_path_factory.mktemp("bodies"),
        {"send_priority": True},  # the gateway sets its own priority: a client's must not win
        auth=static_auth({"key": KEY, "models": ["m1"], "priority": 5}),
    ) as running:
        yield running


def _post(body: bytes) -> bytes:
    return http_request("POST", b"/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})


def _escaped(name: str, mask: int) -> str:
    """``name`` as a JSON key with the letters picked by ``mask`` written as \\u escapes."""
    return "".join(
        f"\\u{ord(char):04x}" if mask >> (index % 16) & 1 else char
        for index, char in enumerate(name)
    )


NAMES = st.sampled_from(
    ["model", "stream", "stream_options", "priority", "max_tokens", "n", "user", "messages", "x"]
)
VALUES: dict[str, Any] = {
    "model": st.sampled_from(["m1", "m2", None, 7, ""]),
    "stream": st.sampled_from([True, False, None, "true", 1]),
    "stream_options": st.sampled_from(
        [None, {}, {"include_usage": False}, {"include_usage": True}, 5]
    ),
    "priority": st.sampled_from([-100, 0, 3, None, "high"]),
    "max_tokens": st.sampled_from([1, 16, None, -1, 1.5]),
    "n": st.sampled_from([1, 2, None]),
    "user": st.sampled_from(["u", None]),
    "messages": st.just([{"role": "user", "content": 'hi "model": \\"m2\\"'}]),
    "x": st.sampled_from([{"model": "m2"}, "priority", [1, {"stream": True}]]),
}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    members = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=7)):
        key = _escaped(name, draw(st.integers(0, 3)) * draw(st.sampled_from([0, 0, 1, 5])))
        value = json.dumps(draw(VALUES[name]))
        space = draw(st.sampled_from(["", " ", "\n"]))
        members.append(f'"{key}"{space}:{value}')
    return ("{" + ",".join(members) + "}").encode()


@examples(600)
@given(body=bodies())
def test_what_gets_through_is_read_alike_by_every_parser(
    setup: tuple[Daemon, CaptureBackend], body: bytes
) -> None:
    """Property: a body with duplicate, escaped or mistyped judged members is refused with an
    OpenAI-style 400; one that gets through is read the same by a last-wins and a first-wins
    parser, names the allowed model, carries the gateway's priority, and, when it streams,
    asks for usage."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(body))
    if len(backend.received) == before:
        assert 400 <= answer.status < 500
        assert answer.error_code()
        return
    assert answer.status == 200
    received = backend.received[-1]
    last, first = received.parsed(), received.parsed_first()
    for member in ("model", "stream", "stream_options", "priority", "max_tokens", "n", "user"):
        assert last.get(member) == first.get(member), member
    assert last["model"] == "m1"
    assert last["priority"] == 5
    if last.get("stream") is True:
        assert last["stream_options"]["include_usage"] is True


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model":"m1","priority":1,"priorit\\u0079":-100}', "duplicate_member"),
        (b'{"model":"m1","model":"m2"}', "duplicate_member"),
        (b'{"model":"m1","mode\\u006c":"m2"}', "duplicate_member"),
        (
            b'{"model":"m1","stream":true,"stream_\\u006fptions":{},"stream_options":null}',
            "duplicate_member",
        ),
        (b'{"model":"m1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_body"),
        (b'{"mod\\u0065l":"m2"}', "model_not_allowed"),
        (b'\xef\xbb\xbf{"model":"m1"}', "invalid_json"),
        (b'{"model":"m1"} {"model":"m2"}', "invalid_json"),
        (b'{"model":"m1","max_tokens":NaN}', "invalid_json"),
        (b'{"model":"m\xff"}', "invalid_json"),
    ],
)
def test_reported_body_tricks_are_refused(
    setup: tuple[Daemon, CaptureBackend], body: bytes, code: str
) -> None:
    """The issue's escaped duplicate priority, the 100,000-deep body, and their relatives."""
    running, backend = setup
    before = len(backend.received)
    answer = running.request(_post(body))
    assert 400 <= answer.status < 500
    assert answer.error_code() == code
    assert len(backend.received) == before


def test_escaped_stream_options_keeps_usage_exact(setup: tuple[Daemon, CaptureBackend]) -> None:
    """``stream_\\u006fptions`` is read as stream_options: the gateway still asks for usage
    (include_usage true reaches the backend) and hides the usage event from the client."""
    running, backend = setup
    body = b'{"model":"m1","stream":true,"stream_\\u006fptions":{"include_usage":false}}'
    answer = running.request(_post(body))
    assert answer.status == 200
    assert backend.received[-1].parsed()["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in answer.body
    assert answer.body.endswith(b"data: [DONE]\n\n")


def test_no_traceback_in_the_log(setup: tuple[Daemon, CaptureBackend]) -> None:
    """None of the bodies above left a traceback in the daemon's log."""
    running, _ = setup
    assert "Traceback" not in running.log_text()

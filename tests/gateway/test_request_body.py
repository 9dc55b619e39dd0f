"""The body as the backend will parse it: judged members, duplicates, depth, and the gateway's
own edits (include_usage, priority), which change nothing else."""

from __future__ import annotations

import json

import pytest

from llmproxy.errors import GatewayError
from llmproxy.gateway.request_body import (
    MAX_DEPTH,
    RequestPeek,
    peek_body,
    too_deep,
    with_priority,
    with_usage_requested,
)

BODY = (
    '{"model": "llama", "messages": [{"role": "user", "content": "Grüße, 世界 \\u00e9"}],\n'
    ' "temperature": 0.70, "top_p": 1e-1, "stream": true, "zeta": {"b": 1, "a": 2}}'
).encode()


def decoded(body: bytes) -> list[tuple[str, object]]:
    """The members, in order (a list of pairs keeps the order visible to ==)."""
    return json.loads(body, object_pairs_hook=list)  # type: ignore[no-any-return]


def requested(body: bytes) -> bytes:
    return with_usage_requested(body, peek_body(body, model_required=False))


def refusal(body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        peek_body(body, model_required=True)
    assert caught.value.status == 400
    return caught.value


def test_adds_include_usage_in_front_keeping_every_byte() -> None:
    """Without stream_options the member goes in front and the original bytes follow unchanged,
    whitespace, 0.70, 1e-1, raw UTF-8 and \\u escapes included."""
    body = requested(b"  " + BODY)
    assert body == b'  {"stream_options":{"include_usage":true},' + BODY[1:]
    assert decoded(body) == [("stream_options", [("include_usage", True)]), *decoded(BODY)]


@pytest.mark.parametrize(
    "options",
    [
        '"stream_options": null',
        '"stream_options": {"include_usage": false}',
        '"stream_options": {}',
        '"stream_\\u006fptions": {"include_usag\\u0065": false}',
    ],
)
def test_replaces_null_false_or_escaped(options: str) -> None:
    """null, false, a missing include_usage, or the members spelt with escapes become one
    stream_options with include_usage true, in place."""
    original = ('{"stream": true, ' + options + ', "model": "m"}').encode()
    assert decoded(requested(original)) == [
        ("stream", True),
        ("stream_options", [("include_usage", True)]),
        ("model", "m"),
    ]


def test_keeps_other_stream_options() -> None:
    """Other stream_options members (vLLM's continuous_usage_stats) are kept, in order."""
    original = b'{"stream":true,"stream_options":{"continuous_usage_stats":true}}'
    assert requested(original) == (
        b'{"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}'
    )


def test_nested_stream_options_is_not_ours() -> None:
    """A stream_options nested elsewhere is no top-level member: the member goes in front."""
    original = b'{"stream": true, "metadata": {"stream_options": "nested"}}'
    peek = peek_body(original, model_required=False)
    assert not peek.has_stream_options
    assert requested(original) == b'{"stream_options":{"include_usage":true},' + original[1:]


def test_client_asked_is_seen_through_escapes() -> None:
    """include_usage true, however its key is spelt, is the client's own request."""
    for body in (
        b'{"stream" : true, "stream_options": {"include_usage" : true}}',
        b'{"stream":true,"stream_options":{"include_\\u0075sage":true}}',
    ):
        assert peek_body(body, model_required=False).include_usage


def test_priority_is_set_from_what_was_decoded() -> None:
    """The gateway's priority replaces the client's, however the client spelt its member."""
    assert with_priority(b' {"model": "m"}', RequestPeek(model="m"), 3) == (
        b' {"priority":3,"model": "m"}'
    )
    for original in (
        b'{"model":"m","priority":-100}',
        b'{"model":"m","priorit\\u0079":-100}',
    ):
        peek = peek_body(original, model_required=True)
        assert peek.has_priority
        assert json.loads(with_priority(original, peek, 7)) == {"model": "m", "priority": 7}


@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"model":"a","model":"b"}', "model"),
        (b'{"model":"a","mode\\u006c":"b"}', "model"),
        (b'{"model":"a","model":null}', "model"),
        (b'{"model":"m","stream":false,"stream":true}', "stream"),
        (b'{"model":"m","priority":1,"priorit\\u0079":-100}', "priority"),
        (b'{"model":"m","max_tokens":1,"max_tokens":100000}', "max_tokens"),
        (b'{"model":"m","n":1,"\\u006e":50}', "n"),
        (b'{"model":"m","user":"a","user":"b"}', "user"),
        (b'{"model":"m","stream_options":{},"stream_options":null}', "stream_options"),
        (
            b'{"model":"m","stream_options":{"include_usage":true,"include_usag\\u0065":false}}',
            "stream_options.include_usage",
        ),
    ],
)
def test_a_judged_member_twice_is_refused(body: bytes, member: str) -> None:
    """Parsers disagree on which duplicate wins: a judged member twice is a 400 naming it."""
    error = refusal(body)
    assert error.code == "duplicate_member"
    assert error.param == member


def test_other_duplicates_and_nested_names_pass() -> None:
    """Members the gateway does not judge, and judged names nested deeper, are not its business."""
    body = b'{"model":"m","x":1,"x":2,"messages":[{"model":"a","model":"b"}]}'
    assert peek_body(body, model_required=True).model == "m"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"m","max_tokens":-1}', "max_tokens"),
        (b'{"model":"m","max_tokens":1.0}', "max_tokens"),
        (b'{"model":"m","max_tokens":true}', "max_tokens"),
        (b'{"model":"m","n":"2"}', "n"),
        (b'{"model":"m","stream":1}', "stream"),
        (b'{"model":"m","user":5}', "user"),
        (b'{"model":"m","stream_options":5}', "stream_options"),
        (b'{"model":"m","max_tokens":2147483648}', "max_tokens"),
        (b'{"model":"m","n":1' + b"0" * 4000 + b"}", "n"),
    ],
)
def test_judged_members_of_the_wrong_type_are_refused(body: bytes, param: str) -> None:
    """A judged member the gateway cannot read as the backend's schema means is a 400."""
    error = refusal(body)
    assert error.code == "invalid_body"
    assert error.param == param


@pytest.mark.parametrize(
    "model",
    [b"a\\u0000b", b"a\\nb", b"tab\\there", b"del\\u007f", b"x" * 513],
)
def test_a_model_with_control_characters_or_runaway_length_is_refused(model: bytes) -> None:
    """A model is a name: a NUL, a newline or 513 characters is the client's mistake, a 400
    (it would become a label, a log field and a usage record column); unicode names pass."""
    error = refusal(b'{"model":"' + model + b'"}')
    assert (error.status, error.code, error.param) == (400, "invalid_model", "model")
    named = peek_body('{"model":"Qwen/Qwen2.5-7B-指令"}'.encode(), model_required=True)
    assert named.model == "Qwen/Qwen2.5-7B-指令"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[{"content":"\xff\xc0\xae"}]}',
        b'{"model":"m","k\xff":1}',
    ],
)
def test_invalid_utf8_anywhere_is_refused(body: bytes) -> None:
    """Bytes that are not UTF-8 are refused even in members the gateway skips (the backend's
    parser would refuse or read them otherwise); valid non-ASCII text passes."""
    assert refusal(body).code == "invalid_json"
    assert peek_body('{"model":"m","x":"Grüße 世界"}'.encode(), model_required=True).model == "m"


def test_escaped_keys_are_read_as_the_backend_reads_them() -> None:
    """Keys are compared after unescaping."""
    peek = peek_body(b'{"mod\\u0065l":"m","str\\u0065am":true,"\\u006e":3}', model_required=True)
    assert (peek.model, peek.streaming, peek.completions) == ("m", True, 3)


def test_depth_limit() -> None:
    """Nesting to MAX_DEPTH passes; one level more, or unbalanced brackets past it, is a 400
    before any decoder recurses (a 100,000-deep body too)."""

    def nested(depth: int) -> bytes:
        inner = b"[" * (depth - 1) + b"]" * (depth - 1)
        return b'{"model":"m","x":' + inner + b"}"

    assert peek_body(nested(MAX_DEPTH), model_required=True).model == "m"
    assert refusal(nested(MAX_DEPTH + 1)).code == "invalid_body"
    assert refusal(nested(100_000)).code == "invalid_body"
    assert refusal(b'{"model":"m","x":' + b"[" * 100_000 + b"}").code == "invalid_body"


def test_depth_ignores_brackets_in_strings() -> None:
    """Brackets inside strings (escaped quotes included) are text, not nesting."""
    text = json.dumps('[[{"' * 200).encode()
    assert not too_deep(b'{"a":' + text + b"}", MAX_DEPTH)
    assert too_deep(b"[" * 70 + b"]" * 70, MAX_DEPTH)
    assert not too_deep(b"[" * 64 + b"]" * 64, MAX_DEPTH)

"""request_with_usage adds stream_options.include_usage and changes nothing else."""

from __future__ import annotations

import json

import pytest

from llmproxy.usage import request_with_usage

BODY = (
    '{"model": "llama", "messages": [{"role": "user", "content": "Grüße, 世界 \\u00e9"}],\n'
    ' "temperature": 0.70, "max_tokens": 1e2, "stream": true, "zeta": {"b": 1, "a": 2}}'
).encode()


def decoded(body: bytes) -> list[tuple[str, object]]:
    """The members, in order (a list of pairs keeps the order visible to ==)."""
    return json.loads(body, object_pairs_hook=list)  # type: ignore[no-any-return]


def test_adds_include_usage() -> None:
    """A stream without stream_options gets {"include_usage": true} appended; rest is equal."""
    body, client_asked = request_with_usage(BODY)
    assert client_asked is False
    assert decoded(body) == [*decoded(BODY), ("stream_options", [("include_usage", True)])]


def test_keeps_value_bytes() -> None:
    """Values keep their exact spelling: 0.70, 1e2, raw UTF-8 and \\u escapes."""
    body, _ = request_with_usage(BODY)
    for spelling in ('"temperature":0.70', '"max_tokens":1e2', "Grüße, 世界 \\u00e9"):
        assert spelling.encode() in body


@pytest.mark.parametrize(
    "options",
    [
        '"stream_options": null',
        '"stream_options": {"include_usage": false}',
        '"stream_options": {}',
    ],
)
def test_replaces_null_or_false(options: str) -> None:
    """null, false or a missing include_usage become true, in place."""
    original = ('{"stream": true, ' + options + ', "model": "m"}').encode()
    body, client_asked = request_with_usage(original)
    assert client_asked is False
    assert decoded(body) == [
        ("stream", True),
        ("stream_options", [("include_usage", True)]),
        ("model", "m"),
    ]


def test_keeps_other_stream_options() -> None:
    """Other stream_options members (vLLM's continuous_usage_stats) are kept, in order."""
    original = b'{"stream":true,"stream_options":{"continuous_usage_stats":true}}'
    body, client_asked = request_with_usage(original)
    assert client_asked is False
    assert body == (
        b'{"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}'
    )


def test_client_already_asked() -> None:
    """A body that already asks for usage comes back as the same bytes, client_asked True."""
    original = b'{"stream" : true, "stream_options": {"include_usage" : true}}'
    body, client_asked = request_with_usage(original)
    assert body is original
    assert client_asked is True


@pytest.mark.parametrize(
    "original",
    [
        b'{"model":"m","messages":[]}',
        b'{"model":"m","stream":false}',
        b'{"model":"m","stream":"true"}',
        b'["stream", true]',
        b'"stream"',
        b'{"stream": true',
        b'{"stream":true,"stream_options":"yes"}',
        b"",
    ],
    ids=[
        "no-stream",
        "false",
        "string",
        "array",
        "string-body",
        "truncated",
        "bad-options",
        "empty",
    ],
)
def test_nothing_to_do(original: bytes) -> None:
    """Not a JSON object with "stream": true: the same bytes back, nothing to strip."""
    body, client_asked = request_with_usage(original)
    assert body is original
    assert client_asked is True


def test_known_stream_gets_the_member_in_front_with_every_byte_kept() -> None:
    """With streaming=True (the caller parsed the body) the member is added before the others
    and the original bytes follow unchanged, whitespace included."""
    body, client_asked = request_with_usage(b"  " + BODY, streaming=True)
    assert client_asked is False
    assert body == b'  {"stream_options":{"include_usage":true},' + BODY[1:]
    assert decoded(body) == [("stream_options", [("include_usage", True)]), *decoded(BODY)]


@pytest.mark.parametrize(
    "original",
    [
        b'{"stream": true, "stream_options": {"include_usage": false}}',
        b'{"stream": true, "stream_options": {"include_usage": true}}',
        b'{"stream": true, "metadata": {"stream_options": "nested, not ours"}}',
    ],
)
def test_known_stream_with_stream_options_merges_as_before(original: bytes) -> None:
    """When the text stream_options appears anywhere, the exact merge decides, as without
    the hint."""
    assert request_with_usage(original, streaming=True) == request_with_usage(original)

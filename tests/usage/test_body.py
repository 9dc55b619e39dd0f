"""usage_from_body reads the usage of non-streamed responses, and nothing else."""

from __future__ import annotations

import random

import msgspec
import pytest

from llmproxy.usage import Usage, usage_from_body
from llmproxy.usage.extract import string_value_at

CHAT_BODY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1718000000,'
    b'"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":'
    b'"assistant","content":"Hi! \\"usage\\": none here","tool_calls":[]},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":12,'
    b'"total_tokens":17,"completion_tokens":5,"prompt_tokens_details":null},'
    b'"prompt_logprobs":null}'
)


def test_chat_completion() -> None:
    """A chat.completion body gives the backend's usage and choices[0].finish_reason."""
    assert usage_from_body(CHAT_BODY) == Usage(12, 5, 17, "backend", "stop")


def test_text_completion() -> None:
    """A text_completion body, usage first and spaced JSON, is read the same way."""
    body = (
        b'{"usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}, '
        b'"id": "cmpl-1", "object": "text_completion", '
        b'"choices": [{"index": 0, "text": "abc", "finish_reason": "length"}]}'
    )
    assert usage_from_body(body) == Usage(3, 7, 10, "backend", "length")


def test_embeddings() -> None:
    """An embeddings body (prompt and total only) has no completion tokens and no finish."""
    vectors = [[random.random() for _ in range(256)] for _ in range(4)]
    body = msgspec.json.encode(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": "e5",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )
    assert usage_from_body(body) == Usage(8, 0, 8, "backend", None)


def test_nested_usage_key_is_not_taken() -> None:
    """A "usage" key nested after the real one is skipped for the top-level object."""
    body = CHAT_BODY[:-1] + b',"metadata":{"usage":{"prompt_tokens":999}}}'
    assert usage_from_body(body) == Usage(12, 5, 17, "backend", "stop")


def test_usage_with_details() -> None:
    """The prompt's cached tokens are read from ``prompt_tokens_details``."""
    body = (
        b'{"choices":[{"finish_reason":null}],"usage":{"prompt_tokens":2,'
        b'"completion_tokens":1,"total_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":1}}}'
    )
    assert usage_from_body(body) == Usage(2, 1, 3, "backend", None, cached_tokens=1)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"id":"x","choices":[]}',
        b'{"usage":null}',
        b'{"error":{"message":"bad","type":"BadRequestError","code":400}}',
        CHAT_BODY[:-40],
        b'{"usage":{"prompt_tokens":"12"}}',
        b'{"usage":{"prompt_tokens":-1}}',
        b'["usage"]',
        b'{"object":"usage"}',
        b"not json at all",
    ],
    ids=[
        "empty",
        "no-usage",
        "null",
        "error",
        "truncated",
        "string",
        "negative",
        "array",
        "value-not-key",
        "not-json",
    ],
)
def test_absent_or_malformed(body: bytes) -> None:
    """No usage object, or one that cannot be read, gives None."""
    assert usage_from_body(body) is None


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'"stop",', "stop"),
        (b' \t"length"}', "length"),
        (b'"a\\"b\\\\"}', 'a"b\\'),
        (b'"caf\\u00e9"', "café"),
        (b"null", None),
        (b'"unterminated', None),
        (b'"bad \\x escape"', None),
    ],
)
def test_string_value_at(data: bytes, value: str | None) -> None:
    """A JSON string is read whole, escapes decoded; null or a broken string gives None."""
    assert string_value_at(b"xx" + data, 2) == value


def test_choices_without_finish_reason() -> None:
    """A body whose choices carry no finish_reason gives None for it."""
    body = b'{"choices":[{"index":0}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    assert usage_from_body(body) == Usage(1, 1, 2, "backend", None)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_usage_of_a_large_answer_is_caught_on_the_way(chunk: int) -> None:
    """Past the hold limit, the usage object is caught as it goes by, wherever it stands: vLLM
    writes prompt_logprobs (which grow with the prompt) after usage, and a legacy logprobs
    dict keyed by the token "usage" does not count."""
    from llmproxy.usage import ResponseUsage

    logprobs = ",".join(
        f'{{"{n}": {{"logprob": -0.1, "decoded_token": "usage"}}}}' for n in range(30_000)
    )
    body = (
        '{"id":"c","choices":[{"index":0,"message":{"content":"hi"},"logprobs":{"top_logprobs":'
        '[{"usage": -1.5}]},"finish_reason":"length"}],'
        '"usage":{"prompt_tokens":9000,"completion_tokens":1000,"total_tokens":10000,'
        '"prompt_tokens_details":{"cached_tokens":0}},'
        f'"prompt_logprobs":[null,{logprobs}]}}'
    ).encode()
    assert len(body) > 1 << 20
    reader = ResponseUsage(hold_limit=64 * 1024)
    for start in range(0, len(body), chunk):
        reader.feed(body[start : start + chunk])
    assert reader.usage() == Usage(9000, 1000, 10000, "backend", "length")

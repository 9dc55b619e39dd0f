"""``--api`` of ``python -m bench`` and ``bench.ab``, and ``--apis`` of ``bench.ab``: the bodies,
paths, scenario names, configs and mock answers they produce.

Pure functions only: running a benchmark is a timed report, never a test. What these pin down is
what makes a comparison across APIs honest: every target gets the same bytes, a chat run stays
byte for byte what earlier runs sent, and the mock answers each API in that API's shape.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.__main__ import parse_args
from bench.ab import _apply_apis, build_apis
from bench.bodies import APIS, PATHS, Api, parse_apis
from bench.loadgen import build_request
from bench.runner import SCENARIOS
from bench.stream_mock import _STREAM_HEAD, ChatAnswer, answer_for
from bench.targets import render_gateway_config
from bench.wrk import render_lua
from llmproxy.config.model import Config

_CHAT_BODY = '{"model": "mock-model", "messages": [{"role": "user", "content": "Say hello"}]}'
"""The body every chat run before ``--api`` sent: a chat run must not change it."""


def _lua_body(script: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(script.split("wrk.body = '", 1)[1].split("'\n", 1)[0])
    return body


def test_chat_bodies_are_unchanged() -> None:
    """Chat keeps the exact bytes of earlier runs, so results stay comparable across versions:
    wrk's body, ``bench.ab``'s streamed body (``stream`` after ``model``) and the loadgen's
    (``stream`` last)."""
    assert f"wrk.body = '{_CHAT_BODY}'\n" in render_lua(16)
    streamed = _CHAT_BODY.replace('"messages"', '"stream": true, "messages"', 1)
    assert f"wrk.body = '{streamed}'\n" in render_lua(16, stream=True)
    request = build_request(8000, stream=True, tokens=16, itl=0.0)
    assert request.endswith(_CHAT_BODY[:-1].encode() + b', "stream": true}')


def test_messages_body_caps_the_answer_at_the_token_count() -> None:
    """A Messages body carries ``max_tokens`` (required) equal to the tokens asked for: a
    chat-only backend answers ``max_tokens`` tokens when the gateway translates, so passthrough
    and translation return answers of the same length."""
    body = _lua_body(render_lua(40, "messages", stream=True))
    assert body["max_tokens"] == 40
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert body["stream"] is True
    assert "stream" not in _lua_body(render_lua(40, "messages"))


def test_responses_body_has_input_and_output_cap() -> None:
    """A Responses body has ``input`` (not ``messages``) and ``max_output_tokens``."""
    body = _lua_body(render_lua(16, "responses"))
    assert body == {"model": "mock-model", "input": "Say hello", "max_output_tokens": 16}


@pytest.mark.parametrize("api", APIS)
def test_loadgen_request_goes_to_the_api_path(api: Api) -> None:
    """The generator's request line names the API's path and its Content-Length fits the body."""
    request = build_request(8000, stream=False, tokens=16, itl=0.0, api=api)
    head, body = request.split(b"\r\n\r\n", 1)
    assert head.startswith(f"POST {PATHS[api]} HTTP/1.1\r\n".encode())
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body)["stream"] is False


def test_api_list_is_parsed_in_order_without_repeats() -> None:
    """``--api`` takes a list (one run, every API in the same rounds); unknown names are refused."""
    assert parse_apis("messages, chat,messages") == ("messages", "chat")
    with pytest.raises(ValueError, match="unknown API 'anthropic'"):
        parse_apis("chat,anthropic")


def test_scenario_on_another_api_is_its_own_row() -> None:
    """Chat keeps the scenario's name (and its verdicts); another API is ``name@api``."""
    single = next(s for s in SCENARIOS if s.name == "single")
    assert single.on("chat") == single
    messages = single.on("messages")
    assert (messages.name, messages.api, messages.stream) == ("single@messages", "messages", True)
    assert "/v1/messages" in messages.title


def test_default_run_is_unchanged() -> None:
    """Without options the bench runs the scenarios it always ran, on chat only; the one-at-a-time
    non-streamed scenario is opt-in."""
    args = parse_args([])
    assert args.scenarios == "nonstream,stream,single,stream16,decode"
    assert args.apis == ("chat",)
    args = parse_args(["--scenarios", "single,single-json", "--api", "chat,messages"])
    assert args.apis == ("chat", "messages")
    json_one = next(s for s in SCENARIOS if s.name == "single-json")
    assert (json_one.concurrency, json_one.stream, json_one.default) == (1, False, False)
    with pytest.raises(SystemExit):
        parse_args(["--api", "completions"])


def _ab_config(build: str, *settings: str) -> Config:
    rendered = json.loads(render_gateway_config(8000, 9001, core=True))
    for setting in settings:
        _apply_apis(rendered, build, setting)
    return Config.model_validate(rendered)


def test_ab_apis_sets_one_builds_backend() -> None:
    """``--apis trans:chat_completions`` makes only that build's backend chat-only (the gateway
    then translates Messages for it); the other build keeps passthrough for every API."""
    assert _ab_config("trans", "trans:chat_completions").backends[0].apis == ("chat_completions",)
    assert _ab_config("pass", "trans:chat_completions").backends[0].apis == ()
    both = _ab_config("x", "x:chat_completions, messages")
    assert both.backends[0].apis == ("chat_completions", "messages")
    with pytest.raises(ValueError, match="unknown"):
        _ab_config("x", "x:chat")


def test_ab_api_for_both_builds_or_one() -> None:
    """``--api API`` sends both builds one API; ``--api NAME:API`` one build another, whatever
    the order, so two APIs are compared in the same rounds; wrong values are refused."""
    builds = ["chat", "msgs"]
    assert build_apis([], builds) == {"chat": "chat", "msgs": "chat"}
    assert build_apis(["messages"], builds) == {"chat": "messages", "msgs": "messages"}
    assert build_apis(["msgs:messages"], builds) == {"chat": "chat", "msgs": "messages"}
    assert build_apis(["msgs:responses", "messages"], builds) == {
        "chat": "messages",
        "msgs": "responses",
    }
    with pytest.raises(ValueError, match="not one of the builds"):
        build_apis(["other:messages"], builds)
    with pytest.raises(ValueError, match="unknown API 'embeddings'"):
        build_apis(["embeddings"], builds)


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 message (the mock's stream after its head)."""
    out, rest = b"", data
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return out
        out, rest = out + rest[:size], rest[size + 2 :]


def _stream(answer: ChatAnswer, tokens: int) -> list[dict[str, Any]]:
    """The data of every event of a streamed answer, checked against its ``event:`` name."""
    wire = answer.opening() + b"".join(answer.token(i) for i in range(tokens)) + answer.closing()
    events = []
    for block in _dechunk(wire).decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        events.append(data)
    return events


def test_mock_streams_anthropic_events_for_messages() -> None:
    """``/v1/messages`` streams Anthropic's events: the opening ones with no text (what time to
    first token sees, as the chat's role chunk), a delta per token, the usage in
    ``message_delta``."""
    events = _stream(answer_for(b"/v1/messages", 3, usage=False), 3)
    kinds = [event["type"] for event in events]
    assert kinds == [
        "message_start", "ping", "content_block_start",
        "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[7]["usage"] == {"output_tokens": 3}
    whole = answer_for(b"/v1/messages?beta=true", 3, usage=False).whole()
    message = json.loads(whole.split(b"\r\n\r\n", 1)[1])
    assert (message["type"], message["usage"]["output_tokens"]) == ("message", 3)


def test_mock_streams_responses_events_in_sequence() -> None:
    """``/v1/responses`` streams the Responses API's events numbered 0, 1, 2…, ends with
    ``response.completed`` and its usage, and every response has an id of its own."""
    answer = answer_for(b"/v1/responses", 4, usage=False)
    events = _stream(answer, 4)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event["type"] for event in events].count("response.output_text.delta") == 4
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["output_tokens"] == 4
    assert answer_for(b"/v1/responses", 4, usage=False).whole() != answer.whole()


def test_mock_answers_chat_on_any_other_path() -> None:
    """Chat stays the answer of every other path (the decode scenario relies on it), streamed
    with ``[DONE]`` and the usage event only when asked for."""
    answer = answer_for(b"/v1/chat/completions", 2, usage=True)
    body = _dechunk(answer.opening() + answer.token(0) + answer.token(1) + answer.closing())
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' in body
    assert type(answer_for(b"/anything", 2, usage=False)) is ChatAnswer
    assert _STREAM_HEAD.startswith(b"HTTP/1.1 200 OK\r\n")

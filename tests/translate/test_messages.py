"""The Anthropic Messages API over a chat completions backend: what the ``anthropic`` SDK sends is
translated for the backend, and what the backend answers is read back by the SDK as Anthropic's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import Message, TextBlock, ThinkingBlock, ToolParam, ToolUseBlock

from llmproxy.errors import anthropic_error_body
from llmproxy.translate import (
    ChatStreamToMessages,
    TranslationError,
    UpstreamResponseError,
    chat_error_to_messages,
    chat_response_to_messages,
    messages_request_to_chat,
)

MODEL = "qwen3"
USER = [{"role": "user", "content": "Hi"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


class Gateway:
    """What the gateway does for ``/v1/messages`` on a chat backend, over a canned backend
    answer: translate the request, then the answer (whole, streamed, or an error)."""

    def __init__(self, answer: bytes | list[bytes], status: int = 200) -> None:
        self.answer = answer
        self.status = status
        self.chat: dict[str, Any] = {}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        try:
            chat_body = messages_request_to_chat(request.read())
        except TranslationError as exc:
            return httpx2.Response(400, content=anthropic_error_body(400, exc.message))
        self.chat = json.loads(chat_body)
        if self.status >= 400:
            assert isinstance(self.answer, bytes)
            return httpx2.Response(
                self.status, content=chat_error_to_messages(self.status, self.answer)
            )
        if isinstance(self.answer, list):
            stream = ChatStreamToMessages(self.chat["model"])
            body = b"".join(stream.feed(chunk) for chunk in self.answer) + stream.finish()
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
        return httpx2.Response(200, content=chat_response_to_messages(self.answer, MODEL))

    def client(self) -> anthropic.Anthropic:
        transport = httpx2.MockTransport(self)
        return anthropic.Anthropic(
            api_key="x",
            base_url="http://test",
            max_retries=0,
            http_client=httpx2.Client(transport=transport),
        )


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    ).encode()


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
    **choice: Any,
) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "model": MODEL}
    if delta is None and finish is None:
        body["choices"] = []
    else:
        body["choices"] = [
            {"index": 0, "delta": delta or {}, "finish_reason": finish, **choice},
        ]
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def call(index: int, id: str | None = None, name: str | None = None, arguments: str = "") -> Any:
    """A tool-call delta, as chat servers stream them."""
    function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    return {"tool_calls": [{"index": index, **({"id": id} if id else {}), "function": function}]}


DONE = b"data: [DONE]\n\n"
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}}


def chat_request(**members: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 100, "messages": USER, **members}
    chat: dict[str, Any] = json.loads(messages_request_to_chat(json.dumps(body).encode()))
    return chat


def refusal(**members: Any) -> TranslationError:
    body = {"model": MODEL, "max_tokens": 100, "messages": USER, **members}
    with pytest.raises(TranslationError) as caught:
        messages_request_to_chat(json.dumps(body).encode())
    return caught.value


def blocks(message: Message) -> list[tuple[str, Any]]:
    """Each block as (type, what it says)."""
    said: list[tuple[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            said.append(("text", block.text))
        elif isinstance(block, ThinkingBlock):
            said.append(("thinking", block.thinking))
        elif isinstance(block, ToolUseBlock):
            said.append(("tool_use", (block.id, block.name, block.input)))
        else:
            said.append((block.type, None))
    return said


def translate(stream: Iterable[bytes], message_id: str | None = "msg_1") -> bytes:
    translator = ChatStreamToMessages(MODEL, message_id=message_id)
    return b"".join(translator.feed(piece) for piece in stream) + translator.finish()


def final_message(stream: list[bytes] | Gateway) -> Message:
    """The message the SDK's stream helper assembles from the translated ``stream``."""
    gateway = stream if isinstance(stream, Gateway) else Gateway(stream)
    with gateway.client().messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as sdk_stream:
        return sdk_stream.get_final_message()


def events(anthropic_sse: bytes) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for event in anthropic_sse.split(b"\n\n")[:-1]:
        name, data = event.split(b"\n")
        assert name.startswith(b"event: ")
        assert data.startswith(b"data: ")
        parsed.append((name[7:].decode(), json.loads(data[6:])))
    return parsed


# The request


def test_system_string_is_a_leading_system_message() -> None:
    """A system string becomes the first chat message, with role system."""
    gateway = Gateway(completion({"role": "assistant", "content": "Hello"}))
    gateway.client().messages.create(
        model=MODEL, max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    assert gateway.chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert gateway.chat["model"] == MODEL
    assert gateway.chat["max_tokens"] == 50


def test_system_blocks_are_joined_and_cache_control_is_not_forwarded() -> None:
    """System text blocks are joined with a blank line; cache_control, anywhere, is accepted and
    not sent (prefix caching on the backend is automatic)."""
    gateway = Gateway(completion({"role": "assistant", "content": "Hello"}))
    ephemeral: Any = {"type": "ephemeral"}
    gateway.client().messages.create(
        model=MODEL,
        max_tokens=50,
        system=[
            {"type": "text", "text": "You are a CLI.", "cache_control": ephemeral},
            {"type": "text", "text": "Answer in French.", "cache_control": ephemeral},
        ],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": ephemeral}],
            }
        ],
        tools=[{**WEATHER, "cache_control": ephemeral}],
    )
    assert gateway.chat["messages"] == [
        {"role": "system", "content": "You are a CLI.\n\nAnswer in French."},
        {"role": "user", "content": "Hi"},
    ]
    assert "cache_control" not in json.dumps(gateway.chat)


def test_text_and_images_become_content_parts() -> None:
    """Text and images (base64 and url sources) keep their order as chat content parts."""
    chat = chat_request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                ],
            }
        ]
    )
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
            ],
        }
    ]


def test_sampling_members_map_to_their_chat_names() -> None:
    """temperature, top_p, top_k pass; stop_sequences is stop; metadata.user_id is user;
    stream asks for usage in the stream."""
    chat = chat_request(
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["###"],
        metadata={"user_id": "u-1"},
        stream=True,
    )
    assert {key: chat[key] for key in ("temperature", "top_p", "top_k", "stop", "user")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["###"],
        "user": "u-1",
    }
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert "stream_options" not in chat_request(stream=False)


def test_tools_become_functions() -> None:
    """A client tool is a function whose parameters are its input_schema."""
    chat = chat_request(tools=[WEATHER])
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert "tool_choice" not in chat


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_variants(tool_choice: dict[str, Any], expected: object) -> None:
    """Each tool_choice type has its chat spelling; parallel calls stay the backend's default."""
    chat = chat_request(tools=[WEATHER], tool_choice=tool_choice)
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_disable_parallel_tool_use() -> None:
    """disable_parallel_tool_use is parallel_tool_calls false."""
    chat = chat_request(
        tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True}
    )
    assert chat["tool_choice"] == "required"
    assert chat["parallel_tool_calls"] is False


def test_tool_use_and_tool_result_history() -> None:
    """An assistant tool_use is a tool call; the next user turn's tool_results are tool messages
    placed before that turn's own text; an error result says so."""
    gateway = Gateway(completion({"role": "assistant", "content": "Sunny in Paris, rain in Oslo."}))
    message = gateway.client().messages.create(
        model=MODEL,
        max_tokens=50,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [
                            {"type": "text", "text": "timeout"},
                            {"type": "text", "text": "retry"},
                        ],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
    )
    assert blocks(message) == [("text", "Sunny in Paris, rain in Oslo.")]
    assert gateway.chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: timeout\n\nretry"},
        {"role": "user", "content": "Summarise."},
    ]
    assert "continue_final_message" not in gateway.chat


def test_thinking_is_accepted_and_not_forwarded() -> None:
    """The thinking option and thinking blocks in history are not sent: a chat backend has no
    place for them (its model reasons or not, and templates drop old reasoning)."""
    chat = chat_request(
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[
            {"role": "user", "content": "2+2?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "add", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "4"},
                ],
            },
            {"role": "user", "content": "Sure?"},
        ],
    )
    assert chat["messages"][1] == {"role": "assistant", "content": "4"}
    assert "thinking" not in chat
    assert "budget_tokens" not in json.dumps(chat)


def test_a_last_assistant_turn_is_continued() -> None:
    """A prefilled assistant turn is continued by the backend, not answered."""
    chat = chat_request(
        messages=[{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]
    )
    assert chat["messages"][-1] == {"role": "assistant", "content": "{"}
    assert chat["continue_final_message"] is True
    assert chat["add_generation_prompt"] is False


def test_unknown_top_level_member_is_kept() -> None:
    """A member Messages does not know (a vLLM sampling parameter) reaches the backend as is."""
    gateway = Gateway(completion({"role": "assistant", "content": "ok"}))
    gateway.client().messages.create(
        model=MODEL,
        max_tokens=10,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"min_p": 0.05, "repetition_penalty": 1.1, "guided_choice": ["a", "b"]},
    )
    assert gateway.chat["min_p"] == 0.05
    assert gateway.chat["repetition_penalty"] == 1.1
    assert gateway.chat["guided_choice"] == ["a", "b"]


def test_a_kept_member_may_not_collide_with_a_translated_one() -> None:
    """A chat member the translation writes, also given by the client, is refused, not lost."""
    error = refusal(stop_sequences=["x"], stop=["y"])
    assert error.param == "stop"


def test_unknown_block_type_is_refused() -> None:
    """A block chat completions cannot carry (a document) is a 400 naming its type."""
    gateway = Gateway(completion({"role": "assistant", "content": "never"}))
    with pytest.raises(anthropic.BadRequestError, match="document"):
        gateway.client().messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Read this"},
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "hi"},
                        },
                    ],
                }
            ],
        )
    assert gateway.chat == {}
    error = refusal(messages=[{"role": "user", "content": [{"type": "document"}]}])
    assert error.param == "messages[0].content[0].type"


def test_server_tool_is_refused() -> None:
    """A server tool (web search) runs on Anthropic's side: refused with its name."""
    error = refusal(tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}])
    assert "web_search_20250305" in error.message
    assert error.param == "tools[1].type"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "assistant", "content": [URL_IMAGE]}], "messages[0].content[0]"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}],
                }
            ],
            "messages[0].content[0]",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "a", "content": [URL_IMAGE]}
                    ],
                }
            ],
            "messages[0].content[0].content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}],
            "messages[0].content[0].source.type",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{}]}]}],
            "messages[0].content[0]",
        ),
        ([{"role": "system", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
    ],
)
def test_what_chat_cannot_express_is_refused(messages: list[Any], param: str) -> None:
    """Images outside user turns, tool_use from a user, files, citations, wrong roles or types:
    a TranslationError pointing at the member."""
    assert refusal(messages=messages).param == param


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"messages": []}',
        b'{"model": "m", "messages": [], "max_tokens": "9"}',
    ],
)
def test_malformed_requests_are_refused(body: bytes) -> None:
    """Malformed JSON, a body that is not an object, a missing model, a wrong type."""
    with pytest.raises(TranslationError):
        messages_request_to_chat(body)


# The whole answer


def test_answer_with_text_and_tool_calls() -> None:
    """Text and tool calls come back as blocks with parsed input, stop_reason tool_use, usage."""
    gateway = Gateway(
        completion(
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "chatcmpl-tool-1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "chatcmpl-tool-2",
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    },
                ],
            },
            finish="tool_calls",
        )
    )
    message = gateway.client().messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    )
    assert blocks(message) == [
        ("text", "Let me look."),
        ("tool_use", ("chatcmpl-tool-1", "get_weather", {"city": "Paris"})),
        ("tool_use", ("chatcmpl-tool-2", "now", {})),
    ]
    assert message.id == "msg_abc"
    assert message.model == MODEL
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 11
    assert message.usage.output_tokens == 7


def test_reasoning_content_is_a_thinking_block() -> None:
    """reasoning_content comes first, as a thinking block; an empty text is left out."""
    answer = completion({"role": "assistant", "content": "", "reasoning_content": "Hmm."})
    message = Message.model_validate_json(chat_response_to_messages(answer, MODEL))
    assert blocks(message) == [("thinking", "Hmm.")]
    assert message.stop_reason == "end_turn"


def test_stop_sequence_is_reported() -> None:
    """vLLM's matched stop string is Anthropic's stop_sequence."""
    gateway = Gateway(completion({"role": "assistant", "content": "a"}, stop_reason="###"))
    message = gateway.client().messages.create(
        model=MODEL,
        max_tokens=50,
        stop_sequences=["###"],
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert gateway.chat["stop"] == ["###"]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("stop", "end_turn"),
        (None, "end_turn"),
    ],
)
def test_finish_reasons(finish: str | None, stop_reason: str) -> None:
    """Each chat finish_reason has its Anthropic stop_reason."""
    answer = completion({"role": "assistant", "content": "a"}, finish=finish)  # type: ignore[arg-type]
    message = Message.model_validate_json(chat_response_to_messages(answer, MODEL))
    assert message.stop_reason == stop_reason
    assert message.stop_sequence is None


def test_invalid_tool_arguments_are_kept_as_text_and_restored() -> None:
    """Arguments that are not a JSON object reach the client as text, under _raw_arguments, and
    go back to the backend exactly as the model wrote them."""
    broken = '{"city": "Par'
    answer = completion(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": broken},
                }
            ],
        },
        finish="tool_calls",
    )
    message = Message.model_validate_json(chat_response_to_messages(answer, MODEL))
    assert blocks(message) == [("tool_use", ("c1", "get_weather", {"_raw_arguments": broken}))]
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "bad", "is_error": True}
            ],
        },
    ]
    chat = chat_request(messages=history)
    assert chat["messages"][1]["tool_calls"][0]["function"]["arguments"] == broken
    assert chat["messages"][1]["content"] is None


@pytest.mark.parametrize("body", [b"<html>", b'{"choices": []}', b'{"choices": [{"index": 0}]}'])
def test_an_answer_that_is_not_a_completion(body: bytes) -> None:
    """A 2xx that is not a chat completion is the backend's fault, not the client's."""
    with pytest.raises(UpstreamResponseError):
        chat_response_to_messages(body, MODEL)


# The streamed answer

TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo ✓"}),
    chunk({}, finish="stop"),
    chunk(usage=(12, 3)),
    DONE,
]


def test_text_stream_through_the_sdk() -> None:
    """The SDK's stream helper assembles the translated events into the whole message."""
    gateway = Gateway(TEXT_STREAM)
    with gateway.client().messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert texts == ["Hel", "lo ✓"]
    assert blocks(message) == [("text", "Hello ✓")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 3)
    assert gateway.chat["stream"] is True
    assert gateway.chat["stream_options"] == {"include_usage": True}


def test_stream_event_sequence() -> None:
    """message_start, ping, one text block, message_delta and message_stop, in that order."""
    sequence = events(translate(TEXT_STREAM))
    assert [name for name, _ in sequence] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert sequence[0][1]["message"]["id"] == "msg_1"
    assert sequence[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_stream_cut_at_every_byte_offset() -> None:
    """However the backend's bytes are cut, with \\n or \\r\\n line ends, the output is the same."""
    whole = b"".join(TEXT_STREAM)
    expected = translate([whole])
    for cut in range(len(whole) + 1):
        assert translate([whole[:cut], whole[cut:]]) == expected, cut
    assert translate(whole[i : i + 1] for i in range(len(whole))) == expected
    crlf = whole.replace(b"\n", b"\r\n")
    for cut in range(len(crlf) + 1):
        assert translate([crlf[:cut], crlf[cut:]]) == expected, cut


def test_tool_call_arguments_split_over_chunks() -> None:
    """Tool-call arguments are gathered and sent as one partial_json when their block ends (so
    arguments that are not JSON never break the client's stream); a second call opens a second
    block."""
    stream = [
        chunk({"role": "assistant", "content": "Checking."}),
        chunk(call(0, "call_a", "get_weather")),
        chunk(call(0, arguments='{"ci')),
        chunk(call(0, arguments='ty": "Pa')),
        chunk(call(0, arguments='ris"}')),
        chunk(call(1, "call_b", "now", "{}")),
        chunk({}, finish="tool_calls"),
        chunk(usage=(30, 20)),
        DONE,
    ]
    gateway = Gateway(stream)
    with gateway.client().messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Hi"}],
    ) as sdk_stream:
        message = sdk_stream.get_final_message()
    assert blocks(message) == [
        ("text", "Checking."),
        ("tool_use", ("call_a", "get_weather", {"city": "Paris"})),
        ("tool_use", ("call_b", "now", {})),
    ]
    assert message.stop_reason == "tool_use"
    partials = [
        data["delta"]["partial_json"]
        for name, data in events(translate(stream))
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert partials == ['{"city": "Paris"}', "{}"]


def test_tool_calls_all_numbered_zero_are_told_apart_by_id() -> None:
    """A server that gives every call index 0 still yields one block per call."""
    stream = [
        chunk(call(0, "a", "now", "{}")),
        chunk(call(0, "b", "get_weather", '{"city": "Oslo"}')),
        chunk({}, finish="stop"),
        DONE,
    ]
    message = final_message(stream)
    assert blocks(message) == [
        ("tool_use", ("a", "now", {})),
        ("tool_use", ("b", "get_weather", {"city": "Oslo"})),
    ]
    assert message.stop_reason == "tool_use"


def test_a_tool_call_named_late_loses_nothing() -> None:
    """Arguments sent before the call's name are held and sent once its block can start."""
    stream = [
        chunk(call(0, "a", arguments='{"city": ')),
        chunk(call(0, name="get_weather", arguments='"Rome"}')),
        chunk({}, finish="tool_calls"),
        DONE,
    ]
    assert blocks(final_message(stream)) == [("tool_use", ("a", "get_weather", {"city": "Rome"}))]


def test_reasoning_stream_is_a_thinking_block_then_text() -> None:
    """reasoning_content (or vLLM's newer reasoning) deltas are a thinking block before the text."""
    stream = [
        chunk({"role": "assistant", "reasoning_content": "Two and "}),
        chunk({"reasoning": "two."}),
        chunk({"content": "4"}),
        chunk({}, finish="stop", usage=(5, 6)),
        DONE,
    ]
    message = final_message(stream)
    assert blocks(message) == [("thinking", "Two and two."), ("text", "4")]
    block = message.content[0]
    assert isinstance(block, ThinkingBlock)
    assert block.signature == ""
    assert [
        data["index"] for name, data in events(translate(stream)) if name == "content_block_start"
    ] == [0, 1]


def test_done_without_usage_still_ends_the_message() -> None:
    """A backend that sends no usage: the message ends at [DONE], with zero output tokens."""
    stream = [chunk({"content": "a"}), chunk({}, finish="length"), DONE]
    message = final_message(stream)
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)
    names = [name for name, _ in events(translate(stream))]
    assert names.count("message_delta") == names.count("message_stop") == 1
    assert names[-1] == "message_stop"


def test_stream_without_done_ends_at_finish() -> None:
    """A backend that stops after the finish chunk without [DONE]: finish() ends the message."""
    translator = ChatStreamToMessages(MODEL)
    out = translator.feed(chunk({"content": "a"}) + chunk({}, finish="stop"))
    assert b"message_stop" not in out
    out += translator.finish()
    assert [name for name, _ in events(out)][-2:] == ["message_delta", "message_stop"]
    assert translator.finish() == b""


def test_usage_after_the_finish_chunk_ends_the_message_at_once() -> None:
    """The usage-only chunk after finish_reason ends the message; [DONE] after it adds nothing."""
    translator = ChatStreamToMessages(MODEL, message_id="msg_1")
    translator.feed(chunk({"content": "a"}) + chunk({}, finish="stop"))
    out = translator.feed(chunk(usage=(9, 2)))
    assert [name for name, _ in events(out)] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events(out)[1][1]["usage"] == {"input_tokens": 9, "output_tokens": 2}
    assert translator.feed(DONE) == b""
    assert translator.finish() == b""


def test_usage_in_every_chunk() -> None:
    """With continuous usage stats the prompt size is in message_start, and the message ends once,
    at the finish chunk, with its counts; the final usage chunk and [DONE] add nothing."""
    stream = [
        chunk({"role": "assistant", "content": ""}, usage=(8, 0)),
        chunk({"content": "a"}, usage=(8, 1)),
        chunk({"content": "b"}, finish="stop", usage=(8, 2)),
        chunk(usage=(8, 2)),
        DONE,
    ]
    sequence = events(translate(stream))
    assert sequence[0][1]["message"]["usage"] == {"input_tokens": 8, "output_tokens": 0}
    deltas = [data for name, data in sequence if name == "message_delta"]
    assert deltas == [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 8, "output_tokens": 2},
        }
    ]
    message = final_message(stream)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 2)


def test_streamed_stop_sequence() -> None:
    """vLLM's stop_reason on the finish chunk is the message's stop_sequence."""
    stream = [chunk({"content": "a"}), chunk({}, finish="stop", stop_reason="END"), DONE]
    message = final_message(stream)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_message_id_comes_from_the_backend_unless_given() -> None:
    """Without a message_id, the message is named after the chat completion."""
    sequence = events(translate(TEXT_STREAM, message_id=None))
    assert sequence[0][1]["message"]["id"] == "msg_abc"


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (b'data: {"error": {"message": "KV cache full", "code": 503}}\n\n', "overloaded_error"),
        (b'data: {"error": {"message": "too long", "code": 400}}\n\n', "invalid_request_error"),
        (b'data: {"object": "error", "message": "boom", "code": "x"}\n\n', "api_error"),
        (b'event: error\ndata: {"error": "boom"}\n\n', "api_error"),
    ],
)
def test_upstream_error_event(event: bytes, kind: str) -> None:
    """An error the backend sends mid-stream is an Anthropic error event; the SDK raises it."""
    stream = [chunk({"content": "partial"}), event, DONE]
    out = translate(stream)
    assert events(out)[-1][0] == "error"
    assert events(out)[-1][1]["error"]["type"] == kind
    assert b"message_stop" not in out
    with pytest.raises(anthropic.APIStatusError) as caught:
        final_message(stream)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == kind


def test_unreadable_event_is_an_error() -> None:
    """A data event that is not a chunk ends the stream with an error, not a silent skip."""
    out = translate([chunk({"content": "a"}), b"data: {oops\n\n", DONE])
    assert [name for name, _ in events(out)][-1] == "error"


def test_cut_stream_is_an_error() -> None:
    """A stream that ends before any finish_reason is reported, not passed off as whole."""
    out = translate([chunk({"content": "a"})])
    assert events(out)[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "the backend ended the stream before its answer finished",
            },
        },
    )


def test_error_for_a_broken_upstream() -> None:
    """error() is one Anthropic error event; after it nothing more is said."""
    translator = ChatStreamToMessages(MODEL)
    translator.feed(chunk({"content": "a"}))
    out = translator.error("connection reset by backend")
    assert events(out) == [
        (
            "error",
            {
                "type": "error",
                "error": {"type": "api_error", "message": "connection reset by backend"},
            },
        )
    ]
    assert translator.feed(chunk({"content": "b"})) == b""
    assert translator.finish() == b""
    assert translator.error("again") == b""


def test_comments_and_multiline_data_are_read() -> None:
    """SSE comments are skipped and data spread over lines is joined."""
    body = json.dumps(
        {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}
    )
    comma = body.index(", ") + 1
    head, tail = body[:comma], body[comma:]
    stream = [b": keep-alive\n\n", f"data: {head}\ndata: {tail}\n\n".encode(), b"data: [DONE]"]
    assert blocks(final_message(stream)) == [("text", "x")]


# Errors


@pytest.mark.parametrize(
    ("status", "exception", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.RequestTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.InternalServerError, "overloaded_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_backend_errors_raise_the_sdk_exceptions(
    status: int, exception: type[anthropic.APIStatusError], kind: str
) -> None:
    """A backend error is Anthropic's error shape: the SDK raises its typed exception, with the
    backend's message."""
    body = json.dumps({"error": {"message": f"backend says {status}", "type": "x", "code": status}})
    gateway = Gateway(body.encode(), status=status)
    with pytest.raises(exception, match=f"backend says {status}") as caught:
        gateway.client().messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.type == kind


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"object": "error", "message": "old vLLM"}', "old vLLM"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"error": "plain"}', "plain"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"x" * 5000, "x" * 1000),
        (b"", "the backend answered HTTP 502 with no message"),
    ],
)
def test_error_message_is_the_backends_own(body: bytes, message: str) -> None:
    """The message comes from whichever field the server uses, or its bounded text."""
    assert json.loads(chat_error_to_messages(502, body)) == {
        "type": "error",
        "error": {"type": "api_error", "message": message},
    }


def test_streaming_error_status_from_the_backend() -> None:
    """A backend refusing a streamed request before it starts is an error the SDK raises."""
    gateway = Gateway(b'{"error": {"message": "slow down"}}', status=429)
    with pytest.raises(anthropic.RateLimitError, match="slow down"):
        final_message(gateway)


# Edges


def test_a_refusal_is_text_with_stop_reason_refusal() -> None:
    """An OpenAI-style refusal is said, as text, and is the stop reason."""
    answer = completion({"role": "assistant", "content": None, "refusal": "I can't help."})
    message = Message.model_validate_json(chat_response_to_messages(answer, MODEL))
    assert blocks(message) == [("text", "I can't help.")]
    assert message.stop_reason == "refusal"


def test_arguments_sent_as_an_object_are_the_input() -> None:
    """Some servers send tool arguments as an object instead of JSON text."""
    answer = completion(
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "now", "arguments": {"tz": "UTC"}}}],
        },
        finish="tool_calls",
    )
    message = Message.model_validate_json(chat_response_to_messages(answer, MODEL))
    [block] = message.content
    assert isinstance(block, ToolUseBlock)
    assert (block.name, block.input) == ("now", {"tz": "UTC"})
    assert block.id.startswith("toolu_")


def test_only_the_first_choice_is_streamed() -> None:
    """A Message is one answer: other choices (n > 1) are not mixed into it."""
    other = chunk({"content": "other"}, index=1)
    stream = [chunk({"content": "first"}), other, chunk(finish="stop"), DONE]
    assert blocks(final_message(stream)) == [("text", "first")]


def test_a_tool_call_never_named_is_still_shown() -> None:
    """A call whose name never came is a tool_use with an empty name, not dropped."""
    stream = [chunk(call(0, "a", arguments="{}")), chunk(finish="tool_calls"), DONE]
    assert blocks(final_message(stream)) == [("tool_use", ("a", "", {}))]


def test_a_tool_without_schema_and_an_empty_system_prompt() -> None:
    """A client tool needs an input_schema; an empty system prompt adds no message."""
    assert refusal(tools=[{"name": "x"}]).param == "tools[0]"
    chat = chat_request(system=[], tools=[{"name": "x", "input_schema": {}}])
    assert chat["messages"] == [{"role": "user", "content": "Hi"}]
    assert chat["tools"] == [{"type": "function", "function": {"name": "x", "parameters": {}}}]


def test_an_endless_event_is_an_error() -> None:
    """A backend that never ends an event is not followed past the bound."""
    translator = ChatStreamToMessages(MODEL)
    translator.feed(chunk({"content": "a"}))
    out = translator.feed(b"data: " + b"x" * (16 * 1024 * 1024))
    assert events(out)[-1][0] == "error"
    assert translator.finish() == b""

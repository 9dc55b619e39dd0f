"""Anthropic Messages request -> chat completions request.

Decisions (each one a place where the two APIs differ):

- ``cache_control`` is accepted anywhere and not forwarded: prefix caching on vLLM and SGLang is
  automatic, so the hint has nothing to say there. It is the one deliberate omission.
- ``thinking`` (top level) is accepted and not forwarded: whether a backend reasons is fixed by its
  model and reasoning parser, and chat completions has no portable switch or budget for it (vLLM's
  ``chat_template_kwargs`` differ per model). What the backend reasons comes back as thinking.
- ``thinking`` and ``redacted_thinking`` blocks in assistant history are dropped: a chat request
  has no place to send reasoning back, and the chat templates of reasoning models strip earlier
  turns' reasoning anyway. Their signatures mean nothing to another model.
- Several text blocks become one string joined with a blank line (``system``, ``tool_result``),
  keeping blocks apart the way a writer would; an assistant turn's text blocks are joined with
  nothing, since they are pieces of one answer (this translation splits a chat answer into blocks
  only around tool calls and thinking).
- ``tool_result.is_error`` has no chat field: the tool message's text is prefixed ``Error: ``.
- A last assistant turn (Anthropic's prefill) sets ``continue_final_message`` and clears
  ``add_generation_prompt``, which vLLM and SGLang read to continue that turn's text.
- Any other top-level member is kept as is (vLLM takes extra sampling parameters such as
  ``min_p`` or ``repetition_penalty``). A kept member that this translation also writes
  (``stop``, ``user``, ``stream_options``...) is refused rather than overwritten.
- What chat completions cannot express is refused with a :class:`TranslationError` naming it:
  server tools, ``document`` and other unknown blocks, images in tool results or assistant turns,
  citations, image sources other than ``base64`` and ``url``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from llmproxy.translate._chat_wire import RAW_ARGUMENTS
from llmproxy.translate._errors import TranslationError

_encode = msgspec.json.encode


class _Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class _UrlSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class _Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str
    citations: list[Any] | None = None


class _Image(msgspec.Struct, tag="image", tag_field="type"):
    source: _Base64Source | _UrlSource


class _ToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_Text | _Image] | None = None
    is_error: bool = False


class _Thinking(msgspec.Struct, tag="thinking", tag_field="type"):
    pass


class _RedactedThinking(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    pass


_Block = _Text | _Image | _ToolUse | _ToolResult | _Thinking | _RedactedThinking


class _Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(msgspec.Struct):
    name: str
    type: str | None = None  # absent or "custom" for a client tool; a server tool names itself
    description: str | None = None
    input_schema: msgspec.Raw = msgspec.Raw()  # empty when absent (msgspec has no Raw | None)


class _Auto(msgspec.Struct, tag="auto", tag_field="type"):
    disable_parallel_tool_use: bool = False


class _AnyTool(msgspec.Struct, tag="any", tag_field="type"):
    disable_parallel_tool_use: bool = False


class _NamedTool(msgspec.Struct, tag="tool", tag_field="type"):
    name: str
    disable_parallel_tool_use: bool = False


class _NoTool(msgspec.Struct, tag="none", tag_field="type"):
    disable_parallel_tool_use: bool = False


class _Metadata(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str | None = None


class _ThinkingConfig(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class _Request(msgspec.Struct):
    model: str
    messages: list[_Message]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    system: str | list[_Text] | None = None
    metadata: _Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[_Tool] | None = None
    tool_choice: _Auto | _AnyTool | _NamedTool | _NoTool | None = None
    thinking: _ThinkingConfig | None = None


_KNOWN = frozenset(_Request.__struct_fields__)
_decode_request = msgspec.json.Decoder(_Request).decode
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_AT = re.compile(r"(?P<what>.*) - at `\$\.?(?P<path>.*)`", re.DOTALL)
_BAD_TAG = re.compile(r"Invalid value '(?P<tag>.*)'", re.DOTALL)


def messages_request_to_chat(body: bytes) -> bytes:
    """Anthropic Messages request JSON -> chat completions request JSON.

    Raises :class:`TranslationError` for malformed JSON, wrong types and anything chat
    completions cannot express (see the module docstring for what is mapped how)."""
    try:
        members = _decode_members(body)
        request = _decode_request(body)
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise TranslationError(f"the request body is not valid JSON: {exc}") from None
    chat: dict[str, Any] = {"model": request.model, "messages": _chat_messages(request)}
    _sampling(request, chat)
    _prefill(request, chat)
    if request.tools is not None:
        chat["tools"] = [_tool(tool, k) for k, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        _tool_choice(request.tool_choice, chat)
    for key, raw in members.items():
        if key in _KNOWN:
            continue
        if key in chat:
            raise TranslationError(
                f"{key}: this chat completions member is written by the translation of the "
                "Messages request; leave it out",
                key,
            )
        chat[key] = raw
    return _encode(chat)


def _invalid(exc: msgspec.ValidationError) -> TranslationError:
    """msgspec's error, with the path said the way the request spells it."""
    match = _AT.fullmatch(str(exc))
    if match is None:
        return TranslationError(f"request body: {exc}")
    what, path = match["what"], match["path"]
    tag = _BAD_TAG.fullmatch(what)
    if tag is not None and path.endswith("type"):
        what = f"type '{tag['tag']}' cannot be translated to chat completions"
    return TranslationError(f"{path}: {what}", path)


def _sampling(request: _Request, chat: dict[str, Any]) -> None:
    if request.max_tokens is not None:
        chat["max_tokens"] = request.max_tokens
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.stop_sequences is not None:
        chat["stop"] = request.stop_sequences
    if request.stream is not None:
        chat["stream"] = request.stream
        if request.stream:
            chat["stream_options"] = {"include_usage": True}
    if request.metadata is not None and request.metadata.user_id is not None:
        chat["user"] = request.metadata.user_id


def _prefill(request: _Request, chat: dict[str, Any]) -> None:
    """A last assistant turn is text for the model to go on from (Anthropic's prefill), not a
    finished answer: vLLM and SGLang continue it when asked so."""
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "assistant" and "tool_calls" not in chat["messages"][-1]:
        chat["continue_final_message"] = True
        chat["add_generation_prompt"] = False


def _chat_messages(request: _Request) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = request.system
    if isinstance(system, list):
        system = "\n\n".join(_text(block, f"system[{k}]") for k, block in enumerate(system))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role == "user":
            messages.extend(_user_turn(message.content, where))
        else:
            messages.append(_assistant_turn(message.content, where))
    return messages


def _user_turn(content: str | list[_Block], where: str) -> list[dict[str, Any]]:
    """Tool results first, as ``tool`` messages (chat wants them right after the assistant's
    ``tool_calls``), then the turn's own text and images as one ``user`` message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    turn: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(block, _ToolResult):
            turn.append(_tool_message(block, at))
        elif isinstance(block, _Text):
            parts.append({"type": "text", "text": _text(block, at)})
        elif isinstance(block, _Image):
            parts.append(_image_part(block))
        else:
            raise _misplaced(block, at, "a user")
    if parts or not turn:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        turn.append({"role": "user", "content": parts[0]["text"] if only_text else parts or ""})
    return turn


def _assistant_turn(content: str | list[_Block], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(block, _Text):
            texts.append(_text(block, at))
        elif isinstance(block, _ToolUse):
            function = {"name": block.name, "arguments": _arguments(block.input)}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif not isinstance(block, _Thinking | _RedactedThinking):
            raise _misplaced(block, at, "an assistant")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        if not texts:
            message["content"] = None
    return message


def _misplaced(block: msgspec.Struct, at: str, turn: str) -> TranslationError:
    kind = block.__struct_config__.tag
    return TranslationError(f"{at}: a {kind} block cannot appear in {turn} turn", at)


def _text(block: _Text, at: str) -> str:
    if block.citations:
        raise TranslationError(
            f"{at}.citations: citations cannot be translated to chat completions", at
        )
    return block.text


def _image_part(block: _Image) -> dict[str, Any]:
    source = block.source
    if isinstance(source, _Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: _ToolResult, at: str) -> dict[str, Any]:
    content = block.content
    if isinstance(content, list):
        texts: list[str] = []
        for k, part in enumerate(content):
            if not isinstance(part, _Text):
                raise TranslationError(
                    f"{at}.content[{k}]: an image in a tool_result cannot be translated to chat "
                    "completions (a tool message carries text only)",
                    f"{at}.content[{k}]",
                )
            texts.append(_text(part, f"{at}.content[{k}]"))
        content = "\n\n".join(texts)
    text = content or ""
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _arguments(tool_input: dict[str, Any]) -> str:
    raw = tool_input.get(RAW_ARGUMENTS)
    if isinstance(raw, str) and len(tool_input) == 1:
        return raw
    return _encode(tool_input).decode()


def _tool(tool: _Tool, k: int) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise TranslationError(
            f"tools[{k}]: '{tool.type}' is a server tool, run by Anthropic's API; a chat "
            "completions backend has no server tools",
            f"tools[{k}].type",
        )
    schema = tool.input_schema
    if not bytes(schema).startswith(b"{"):
        raise TranslationError(
            f"tools[{k}].input_schema: a JSON schema object is required", f"tools[{k}]"
        )
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(choice: _Auto | _AnyTool | _NamedTool | _NoTool, chat: dict[str, Any]) -> None:
    if isinstance(choice, _Auto):
        chat["tool_choice"] = "auto"
    elif isinstance(choice, _AnyTool):
        chat["tool_choice"] = "required"
    elif isinstance(choice, _NamedTool):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        chat["tool_choice"] = "none"
    if choice.disable_parallel_tool_use:
        chat["parallel_tool_calls"] = False

"""The leading part of a request's prompt, which `prefix_affinity` hashes to pick a backend.

Inference servers cache the KV state of prompt *prefixes*: the system prompt, then the earlier
turns of a conversation. Two requests that start with the same ``prefix_chars`` characters of
prompt will, on the same replica, share that cache. So the key is the prompt as the model sees it
(roles and texts, in order), cut to ``prefix_chars``: a tenant's long system prompt makes all its
requests share a key; a short one lets the first turns of a conversation decide.

Only the fields needed are decoded (msgspec structs), and only when the strategy asks for it.
"""

from __future__ import annotations

import msgspec

DEFAULT_PREFIX_CHARS = 2048


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[_Part] | None = None


class _Prompt(msgspec.Struct):
    messages: list[_Message] | None = None
    prompt: str | list[str | int | list[int]] | None = None


_decode = msgspec.json.Decoder(_Prompt).decode


def prompt_prefix(body: bytes, prefix_chars: int = DEFAULT_PREFIX_CHARS) -> str | None:
    """The first ``prefix_chars`` characters of the prompt in ``body``; None when it has none.

    Chat messages are joined as ``role\\x1ftext\\x1e`` so that a role change is part of the key;
    a completions ``prompt`` is taken as it is (the first one of a batch). Token-id prompts are
    keyed by their ids. A body that does not decode has no prefix (the request still goes on;
    routing then falls back to load).
    """
    try:
        prompt = _decode(body)
    except msgspec.MsgspecError:
        return None
    pieces: list[str] = []
    size = 0
    if prompt.messages:
        for message in prompt.messages:
            text = _text(message.content)
            piece = f"{message.role}\x1f{text}\x1e"
            pieces.append(piece)
            size += len(piece)
            if size >= prefix_chars:
                break
    elif isinstance(prompt.prompt, str):
        pieces.append(prompt.prompt[:prefix_chars])
    elif prompt.prompt:
        first = prompt.prompt[0]
        if isinstance(first, str):
            pieces.append(first[:prefix_chars])
        else:
            tokens = first if isinstance(first, list) else prompt.prompt
            pieces.append(",".join(str(token) for token in tokens[: prefix_chars // 4]))
    joined = "".join(pieces)[:prefix_chars]
    return joined or None


def _text(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or f"<{part.type}>" for part in content)

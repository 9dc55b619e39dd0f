"""What a decision script returns, and the errors it can raise. Pure: no Lua runtime here.

The sandbox hands :func:`decision_from_values` the script's answer already flattened by its Lua
half (``allow, message, status, key1, value1, ...``, strings as UTF-8 bytes); this module checks
what only makes sense on the Python side (the HTTP status range) and builds the frozen result.
"""

from __future__ import annotations

from dataclasses import dataclass

MetadataValue = str | int | float | bool


class LuaError(Exception):
    """A decision script failed; the message starts with the script's name (file or provider)."""


class LuaCompileError(LuaError):
    """The script does not compile: ``<name>:<line>: <Lua's message>``."""


class LuaRuntimeError(LuaError):
    """The script raised, returned something that is not a decision, or ran out of budget."""


@dataclass(frozen=True, slots=True)
class LuaDecision:
    """A script's verdict on one request.

    ``status`` is the HTTP status the script asked for when it denies (400–599), ``None`` when it
    allows or did not ask; ``metadata`` is merged into the request's identity by the pipeline.
    """

    allow: bool
    message: str | None
    status: int | None
    metadata: dict[str, MetadataValue]


def text(value: bytes | str) -> str:
    """A Lua string as Python text; bytes that are not UTF-8 become U+FFFD, never an exception."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def decision_from_values(name: str, values: tuple[object, ...]) -> LuaDecision:
    """The decision in ``values`` (``allow, message, status, k1, v1, ...``) of script ``name``.

    Raises :class:`LuaRuntimeError` when a denial asks for a status outside 400–599.
    """
    allow = values[0] is True
    raw_message = values[1] if len(values) > 1 else None
    raw_status = values[2] if len(values) > 2 else None
    message = text(raw_message) if isinstance(raw_message, bytes | str) else None
    status: int | None = None
    if not allow and isinstance(raw_status, int | float):
        status = int(raw_status)
        if not 400 <= status <= 599:
            raise LuaRuntimeError(
                f"{name}: bad return value: `status` {status} is not an HTTP error status (400-599)"
            )
    metadata: dict[str, MetadataValue] = {}
    for index in range(3, len(values) - 1, 2):
        key, value = values[index], values[index + 1]
        if not isinstance(key, bytes | str):  # the Lua half lets only strings through
            continue
        if isinstance(value, bytes):
            metadata[text(key)] = text(value)
        elif isinstance(value, str | int | float | bool):
            metadata[text(key)] = value
    return LuaDecision(allow=allow, message=message, status=status, metadata=metadata)

"""The ASGI types the gateway speaks (the three-callable interface uvicorn and granian serve)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY_WRITER = "llmproxy.body_writer"
"""The ASGI scope extension under which the listener offers a :class:`BodyWriter`."""


class BodyWriter(Protocol):
    """Writes a started response's body straight to the client's socket, in the response's own
    framing, bypassing ``send``: what the stream relay uses for every chunk between the start and
    the end message (both still sent through ``send``), so a chunk costs one socket write and no
    message dict, coroutine or flow-control await."""

    def write(self, data: bytes) -> bool:
        """Write ``data`` (framed as a chunk when the response is chunked); False when the client
        is gone or the response is not open."""
        ...

    @property
    def paused(self) -> bool:
        """The client's socket buffer is full: stop feeding it until the resume callback."""
        ...

    def on_resume(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when the client takes data again (None: nobody to tell)."""
        ...

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
        """Write ``data`` (framed as a chunk when the response is chunked). False: stop feeding
        — the client's buffer is full (wait for the resume callback), or the client is gone or
        the response not open (the data was not written)."""
        ...

    def on_resume(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when the client takes data again (None: nobody to tell)."""
        ...

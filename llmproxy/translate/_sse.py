"""Server-sent events out of a byte stream cut anywhere: the ``data`` of each complete event."""

from __future__ import annotations

MAX_EVENT = 16 * 1024 * 1024
"""An event still open past this many bytes is refused: a backend that never ends its events
(no blank line) must not make the gateway hold an ever longer tail. Tool-call arguments can make
long events, so the bound is far above what any server writes token by token."""


class EventTooLarge(Exception):
    """The backend wrote :data:`MAX_EVENT` bytes without ending an event."""


class SseEvents:
    """Splits SSE bytes into events, keeping an incomplete tail for the next chunk::

        events = SseEvents()
        for chunk in upstream:
            for name, data in events.feed(chunk):
                ...
        for name, data in events.finish():   # a last event the stream ended without a blank line
            ...

    Each event is ``(name, data)``: ``name`` is the ``event:`` field (``b""`` when absent) and
    ``data`` the ``data:`` lines joined by ``\\n``; events without data and comments are skipped.
    Line ends may be ``\\n`` or ``\\r\\n``, mixed. The usual chunk (whole ``data:`` events) costs
    one ``bytearray`` append, one ``rfind`` and one ``split``: the tail is never rescanned.
    """

    __slots__ = ("_cr", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()
        self._cr = False  # the last chunk ended in "\r", which may begin a "\r\n"

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """The events that ``chunk`` completes, in order."""
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        tail = self._tail
        start = max(len(tail) - 1, 0)  # a "\n\n" may straddle the old tail and the chunk
        tail += chunk
        end = tail.rfind(b"\n\n", start)
        if end < 0:
            if len(tail) > MAX_EVENT:
                raise EventTooLarge(f"an event longer than {MAX_EVENT} bytes")
            return []
        complete = bytes(tail[:end])
        del tail[: end + 2]
        return _events(complete)

    def finish(self) -> list[tuple[bytes, bytes]]:
        """The last event, when the stream ended without the blank line that closes it."""
        rest = bytes(self._tail) + (b"\r" if self._cr else b"")
        self._tail.clear()
        self._cr = False
        return _events(rest)


def _events(block: bytes) -> list[tuple[bytes, bytes]]:
    events: list[tuple[bytes, bytes]] = []
    for event in block.split(b"\n\n"):
        if event.startswith(b"data: ") and b"\n" not in event:
            events.append((b"", event[6:]))  # what every chat server writes
        elif event:
            parsed = _event(event)
            if parsed is not None:
                events.append(parsed)
    return events


def _event(event: bytes) -> tuple[bytes, bytes] | None:
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    return (name, b"\n".join(data)) if data else None

"""What a streamed answer tells a user: when text arrived, how much, and whether it ended well.

:class:`StreamScan` is the gateway's own SSE scanner (:class:`llmproxy.usage.StreamUsage`, the
one that counts usage and drives the durable hold) with arrival times kept beside it. A
*content* event is one that carries text (``delta.content`` of a chat chunk, ``text`` of a
completion chunk, also reasoning text or tool calls): the first one is the time to first token —
a role-only first chunk or a keep-alive comment is not something a user sees. The final usage
event (``stream_options.include_usage``) gives the exact output token count; without one,
content events are counted instead. A stream is whole only when it ends with ``data: [DONE]``
and had no error event (the gateway reports a backend failing mid-stream as an SSE ``error``
event, never as a fake ``finish_reason``).
"""

from __future__ import annotations

from llmproxy.apis import CHAT, ENDPOINT_API
from llmproxy.usage import stream_meter, usage_from_body


class StreamScan:
    """Events of one SSE body, fed in arbitrary pieces (see the module docstring); ``endpoint``
    says which API's events (Anthropic Messages and OpenAI Responses streams are typed events:
    a token is a ``content_block_delta`` / ``response.*.delta``, the end ``message_stop`` /
    ``response.completed``)."""

    __slots__ = ("_meter", "first_content", "last_content")

    def __init__(self, endpoint: str = CHAT) -> None:
        self._meter = stream_meter(ENDPOINT_API.get(endpoint), strip_usage_event=False)
        self.first_content: float | None = None
        self.last_content: float | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Take the next piece of the body, which arrived at ``now``."""
        before = self._meter.content_events
        self._meter.feed(data)
        if self._meter.content_events > before:
            if self.first_content is None:
                self.first_content = now
            self.last_content = now

    @property
    def content_events(self) -> int:
        return self._meter.content_events

    @property
    def done(self) -> bool:
        return self._meter.done

    @property
    def error(self) -> str | None:
        """The first error event's payload (shortened), or None."""
        error = self._meter.error
        return None if error is None else error[:200].decode(errors="replace")

    @property
    def output_tokens(self) -> int:
        """Tokens of the answer: the usage event's count, else the content events."""
        reported = self._meter.reported_completion
        return reported if reported is not None else self._meter.content_events

    @property
    def mean_gap(self) -> float | None:
        """Mean seconds between content events (inter-token latency); None below two events."""
        events = self.content_events
        if events < 2 or self.first_content is None or self.last_content is None:
            return None
        return (self.last_content - self.first_content) / (events - 1)

    @property
    def complete(self) -> bool:
        """The stream ended properly (``[DONE]``, ``message_stop``, ``response.completed``) and
        carried no error event."""
        return self.done and self.error is None


def body_output_tokens(body: bytes) -> int | None:
    """``usage.completion_tokens`` of a whole (non-streamed) JSON answer, or None."""
    usage = usage_from_body(body)
    return None if usage is None else usage.completion_tokens

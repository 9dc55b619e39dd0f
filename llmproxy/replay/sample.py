"""One request as the replay saw it, and the error classes a request can end in.

Times are ``time.perf_counter()`` readings of the replaying process. ``start`` is when the user
would have sent the request: the scheduled time in open loop, or the actual send when that came
first (the dispatcher sends up to 1.5 ms early, as the loop's timers resolve no finer) —
so the client's own lateness is counted against the server, and its earliness never for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CONNECT: Final = "connect"
"""No connection: refused, unresolvable, unreachable."""
TIMEOUT: Final = "timeout"
"""No complete answer within ``--timeout``."""
DISCONNECTED: Final = "disconnected"
"""The connection closed before a response status arrived."""
BROKEN_STREAM: Final = "broken_stream"
"""The response started but did not end well: cut off, no ``[DONE]``, or an SSE error event."""


def http_error(status: int) -> str:
    """The error class of an HTTP error status: ``http_429``."""
    return f"http_{status}"


@dataclass(slots=True)
class Sample:
    """What happened to one request."""

    endpoint: str
    model: str
    scheduled: float
    """When it was due (perf_counter seconds)."""
    sent: float
    """When the client actually started sending it."""
    end: float
    """When the answer ended, or the request failed."""
    status: int = 0
    """HTTP status; 0 when no response arrived."""
    error: str | None = None
    """Its error class (:data:`CONNECT`, :data:`TIMEOUT`, ``http_<status>``…), None when fine."""
    first_token: float | None = None
    """When the first content arrived (first body byte when not streamed)."""
    mean_gap: float | None = None
    """Mean seconds between content events (streamed answers with two events or more)."""
    output_tokens: int = 0
    detail: str | None = None
    """What went wrong, in the words of the exception or the error body (shortened)."""

    @property
    def start(self) -> float:
        """Where its latencies count from (see the module docstring)."""
        return min(self.scheduled, self.sent)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        """Seconds from :attr:`start` to the first token."""
        return None if self.first_token is None else self.first_token - self.start

    @property
    def latency(self) -> float:
        """Seconds from :attr:`start` to the end of the answer."""
        return self.end - self.start

    @property
    def send_lag(self) -> float:
        """How late the client sent it (negative when a timer fired early)."""
        return self.sent - self.scheduled

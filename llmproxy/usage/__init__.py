"""Token usage of every request: read from what the backend sends, counted when it sends none.

- :func:`estimate_prompt_tokens`: a cheap prompt estimate, before the request goes upstream.
- :class:`StreamUsage`: follow a relayed SSE stream (and strip the usage event the client did
  not ask for); :class:`EventStreamUsage`: the same for Anthropic Messages and OpenAI Responses
  streams (:func:`stream_meter` picks); :class:`ResponseUsage` / :func:`usage_from_body`: read
  a non-streamed response.

Both end in a :class:`Usage`, whose ``source`` says how exact it is.
"""

from llmproxy.finish import UsageSource
from llmproxy.usage.events import EventStreamUsage, StreamMeter, stream_meter
from llmproxy.usage.extract import (
    ResponseUsage,
    Usage,
    estimate_prompt_tokens,
    usage_from_body,
)
from llmproxy.usage.stream import StreamUsage

__all__ = [
    "EventStreamUsage",
    "ResponseUsage",
    "StreamMeter",
    "StreamUsage",
    "Usage",
    "UsageSource",
    "estimate_prompt_tokens",
    "stream_meter",
    "usage_from_body",
]

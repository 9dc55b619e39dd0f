"""Token usage of every request: read from what the backend sends, counted when it sends none.

- :func:`estimate_prompt_tokens`: a cheap prompt estimate, before the request goes upstream.
- :func:`request_with_usage`: make a streaming request ask for its usage event.
- :class:`StreamUsage`: follow a relayed SSE stream (and strip the usage event the client did
  not ask for); :func:`usage_from_body`: read a non-streamed response.

Both end in a :class:`Usage`, whose ``source`` says how exact it is.
"""

from llmproxy.usage.extract import (
    Usage,
    UsageSource,
    estimate_prompt_tokens,
    request_with_usage,
    usage_from_body,
)
from llmproxy.usage.stream import StreamUsage

__all__ = [
    "StreamUsage",
    "Usage",
    "UsageSource",
    "estimate_prompt_tokens",
    "request_with_usage",
    "usage_from_body",
]

"""An OpenAI-compatible fake vLLM: the backend for the demo, the test suite and the benchmark.

It also speaks Anthropic's Messages API (``/v1/messages``) and OpenAI's Responses API
(``/v1/responses``, with the stored responses a ``previous_response_id`` needs), on the same clock.

Start one in a test and point the gateway (or an OpenAI client) at it::

    from llmproxy.mock import MockBackend, MockSettings

    async with MockBackend(MockSettings(models=("llama",), itl=0.01)) as mock:
        ...  # mock.url == "http://127.0.0.1:<free port>"; mock.stats counts what happened

Per-request ``x-mock-*`` headers and ``/mock/*`` control endpoints steer it without a restart;
see :mod:`llmproxy.mock.settings` and :mod:`llmproxy.mock.server`. Opt-in knobs turn it into a
GPU with limits (batch slots and a queue, prefill cost, a prefix cache): :mod:`llmproxy.mock.gpu`.
"""

from llmproxy.mock._text import completion_text, estimate_tokens
from llmproxy.mock.server import MockBackend, serve_forever
from llmproxy.mock.settings import Fault, MockSettings
from llmproxy.mock.stats import MockStats

__all__ = [
    "Fault",
    "MockBackend",
    "MockSettings",
    "MockStats",
    "completion_text",
    "estimate_tokens",
    "serve_forever",
]

"""Which endpoint answers a ``/v1`` call, and in which API's shape its errors are written.

The table is keyed by method and exact path, so the hot paths cost one dict lookup; a path whose
last segment is an id (``/v1/responses/resp_…``) is found under ``{id}`` on a second lookup.
"""

from __future__ import annotations

from llmproxy.mock._endpoints import (
    Endpoint,
    ErrorBody,
    chat_completions,
    completions,
    echo,
    embeddings,
    list_models,
)
from llmproxy.mock._messages import anthropic_error_body, count_tokens, messages
from llmproxy.mock._responses import create_response, delete_response, retrieve_response
from llmproxy.mock._wire import error_body

API_ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/embeddings"): embeddings,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/echo"): echo,
    ("POST", "/v1/echo"): echo,
    ("POST", "/v1/messages"): messages,
    ("POST", "/v1/messages/count_tokens"): count_tokens,
    ("POST", "/v1/responses"): create_response,
    ("GET", "/v1/responses/{id}"): retrieve_response,
    ("DELETE", "/v1/responses/{id}"): delete_response,
}


def find_endpoint(method: str, path: str) -> Endpoint | None:
    """The endpoint for ``method path``, or None (a 404)."""
    endpoint = API_ENDPOINTS.get((method, path))
    if endpoint is None:
        parent, _, last = path.rpartition("/")
        if last:
            endpoint = API_ENDPOINTS.get((method, parent + "/{id}"))
    return endpoint


def error_body_for(path: str) -> ErrorBody:
    """Anthropic's error shape under ``/v1/messages`` (its clients parse nothing else), vLLM's
    OpenAI shape everywhere else."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_error_body
    return error_body

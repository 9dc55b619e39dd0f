"""Why the auth pipeline refuses a key: its own type, which the gateway maps to an HTTP answer.

Auth knows nothing of HTTP responses; it says the status and the OpenAI-style code a refusal
deserves (``401 invalid_api_key``, ``403 model_not_allowed``, ``429 insufficient_quota``,
``503 auth_unavailable``...) and the request path turns that into the error body once.
"""

from __future__ import annotations


class AuthRefused(Exception):
    """A key, or a request with it, may not pass."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

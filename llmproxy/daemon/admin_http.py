"""The admin API's HTTP conventions, shared by its handlers: errors, JSON bodies, query values.

Every failure is an :class:`AdminError` raised wherever it is found and turned into the OpenAI-style
body once, by the API's error middleware, so the CLI can print ``error.message`` and branch on
``error.code`` whatever went wrong (see ``docs/admin-api.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Final

from aiohttp import web

_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "invalid_request",
    422: "config_invalid",
    503: "unavailable",
}


class AdminError(Exception):
    """A refused admin request: its status, message and machine-readable code.

    ``extra`` adds top-level members beside ``error`` (a refused reload carries its ``outcome``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON answer for this error."""
        return error_response(self.status, self.message, self.code, self.extra, self.headers)


def error_response(
    status: int,
    message: str,
    code: str,
    extra: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``{"error": {"message", "type", "code"}}`` (plus ``extra``) with ``status``."""
    error = {"message": message, "type": _TYPES.get(status, "internal_error"), "code": code}
    return json_response({"error": error, **(extra or {})}, status=status, headers=headers)


def json_response(
    data: Mapping[str, object], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer."""
    return web.json_response(data, status=status, headers=headers, dumps=json.dumps)


def invalid(message: str) -> AdminError:
    """A 400 for a malformed body or a bad field or query value."""
    return AdminError(400, message, "invalid_request")


async def json_object(request: web.Request) -> dict[str, object]:
    """The request body as a JSON object; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f"expected a JSON object as the body, got {type(data).__name__}")
    return data


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    """A whole-number query parameter within ``[low, high]``."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise invalid(f"{name}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise invalid(f"{name}: must be from {low} to {high}, got {value}")
    return value


def query_seconds(request: web.Request, name: str, default: float) -> float:
    """A positive, finite number of seconds from the query."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"{name}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise invalid(f"{name}: expected a positive number of seconds, got {text!r}")
    return value


def query_flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: ``1``, ``true`` or ``yes`` (any case) mean yes."""
    return request.query.get(name, "").strip().lower() in {"1", "true", "yes"}


def query_text(request: web.Request, name: str) -> str | None:
    """A text query parameter; empty counts as absent."""
    return request.query.get(name) or None

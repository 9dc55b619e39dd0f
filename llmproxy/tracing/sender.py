"""OTLP/HTTP: one export's protobuf body POSTed to ``<endpoint>/v1/traces``, on the export thread.

The standard library's ``http.client`` over one kept-alive connection: an export is a request
and a response, nothing per export that can be done once (no session, no header merging, no
certificate lookups — which is what the SDK's ``requests``-based exporter spent most of its
non-encoding time on). As the SDK's exporter does, it retries what a collector may answer
better a moment later (429, 502, 503, 504, a refused or broken connection) with exponential
backoff, and the whole export, retries included, is bounded by ``export_timeout``.

Two OpenTelemetry environment variables keep their meaning, as with the SDK exporter:
``OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`` / ``OTEL_EXPORTER_OTLP_COMPRESSION`` (``gzip``; off
by default — on loopback or a LAN it costs more CPU than it saves), and
``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` / ``OTEL_EXPORTER_OTLP_HEADERS`` when ``tracing.headers``
is empty.
"""

from __future__ import annotations

import gzip
import http.client
import os
import random
import threading
import time
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from llmproxy import __version__

RETRYABLE = frozenset({429, 502, 503, 504})
"""Answers worth another try within the export's time (OTLP/HTTP's "retryable" statuses)."""


def export_settings(
    headers: Mapping[str, str], environ: Mapping[str, str] = os.environ
) -> tuple[dict[str, str], bool]:
    """The headers of each export and whether to gzip, from the config and the environment."""
    sent = dict(headers)
    if not sent:
        text = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get(
            "OTEL_EXPORTER_OTLP_HEADERS", ""
        )
        for item in text.split(","):
            name, equals, value = item.partition("=")
            if equals and name.strip():
                sent[unquote(name.strip()).lower()] = unquote(value.strip())
    compression = environ.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") or environ.get(
        "OTEL_EXPORTER_OTLP_COMPRESSION", ""
    )
    return sent, compression.strip().lower() == "gzip"


class OtlpHttpSender:
    """POSTs export bodies to a collector; used by one thread at a time::

    sender = OtlpHttpSender("http://collector:4318", {}, timeout=5.0)
    sender.send(body)   # True when the collector accepted it (2xx), within the timeout
    sender.close()      # stops a retry wait at once; closes the connection
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        *,
        compress: bool = False,
    ) -> None:
        url = urlsplit(f"{endpoint}/v1/traces")
        self._https = url.scheme == "https"
        self._host = url.netloc
        self._path = url.path
        self._timeout = timeout
        self._compress = compress
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"llmproxy/{__version__}",
            **headers,
        }
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None
        self._closed = threading.Event()
        self.last_error = ""
        """Why the last failed export failed (for the warning log)."""

    def send(self, body: bytes) -> bool:
        """POST ``body``; True on a 2xx. Retries (see the module docstring) until the
        timeout; a connection the collector closed while idle is reopened at once."""
        if self._compress:
            body = gzip.compress(body, compresslevel=6)
        deadline = time.monotonic() + self._timeout
        backoff = 1.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return False
            status, reused = self._post(body, remaining)
            if 200 <= status < 300:
                return True
            if status == 0 and reused:
                continue  # a kept-alive connection went stale: a fresh one, no wait
            if status and status not in RETRYABLE:
                return False
            wait = backoff * random.uniform(0.8, 1.2)
            if time.monotonic() + wait >= deadline:
                return False
            self._closed.wait(wait)
            backoff *= 2

    def _post(self, body: bytes, timeout: float) -> tuple[int, bool]:
        """One POST: the status (0 when no answer came), and whether the connection was an
        already open one."""
        connection = self._connection
        reused = connection is not None
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._connection = kind(self._host, timeout=timeout)
        else:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        try:
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            self.last_error = f"{type(error).__name__}: {error}"
            self._drop()
            return 0, reused
        if response.will_close:
            self._drop()
        if not 200 <= response.status < 300:
            self.last_error = f"HTTP {response.status}"
        return response.status, reused

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Stop waiting to retry, and close the connection."""
        self._closed.set()
        self._drop()

"""The access log: one structured line per request, written off the request path.

The request path only builds a small dict and hands it to a queue; a listener thread formats and
writes it (stdlib ``QueueHandler``/``QueueListener``), so a slow terminal or disk never slows a
request. Lines carry the key's name and display prefix, never the key.

``format: json`` gives one JSON object per line; ``text`` gives nginx's combined format followed
by the gateway's own fields (``rid= model= backend= tokens= ttft= rt=``).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import IO, Any, Literal

import msgspec

from llmproxy.finish import Finished, milliseconds

_ENCODER = msgspec.json.Encoder()


class _Formatter(logging.Formatter):
    def __init__(self, style: Literal["json", "text"]) -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = record.args  # type: ignore[assignment]
        if self._json:
            return _ENCODER.encode(entry).decode()
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(entry["time"]))
        ttft = f"{entry['ttft_ms']:.1f}" if entry["ttft_ms"] is not None else "-"
        return (
            f"{entry['client_ip'] or '-'} - {entry['key_prefix'] or '-'} [{stamp}] "
            f'"{entry["method"]} {entry["path"]} HTTP/1.1" {entry["status"]} {entry["bytes"]} '
            f'"-" "-" rid={entry["request_id"]} key={entry["key_name"] or "-"} '
            f"model={entry['model'] or '-'} backend={entry['backend'] or '-'} "
            f"tokens={entry['prompt_tokens']}+{entry['completion_tokens']} ttft={ttft} "
            f"rt={entry['duration_ms']:.1f}"
        )


class AccessLog:
    """A queue-fed access log; :meth:`start` before serving, :meth:`stop` after."""

    def __init__(
        self, style: Literal["json", "text"] = "json", stream: IO[str] | None = None
    ) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(_Formatter(style))
        self._listener = logging.handlers.QueueListener(self._queue, handler)

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        """Write what is queued, then stop the thread."""
        self._listener.stop()

    def finished(self, done: Finished) -> None:
        """The access-log sink: one line per ended request (see :mod:`llmproxy.finish`)."""
        self.write(
            {
                "time": time.time(),
                "request_id": done.request_id,
                "client_ip": done.client_ip,
                "method": done.method,
                "path": done.endpoint,
                "key_name": done.key_name,
                "key_prefix": done.key_prefix,
                "model": done.model,
                "backend": done.backend,
                "status": done.status,
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "ttft_ms": milliseconds(done.ttft) if done.ttft is not None else None,
                "duration_ms": milliseconds(done.duration),
                "bytes": done.bytes_sent,
                "cancelled": done.cancelled,
            }
        )

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one request's line (cheap: no formatting here)."""
        record = logging.LogRecord("llmproxy.access", logging.INFO, "", 0, "", None, None)
        record.args = entry
        self._queue.put_nowait(record)

"""The report of a run as one JSON document.

The document is the record of a run — settings, environment, figures, the client's own health —
so two runs can be compared later (:mod:`llmproxy.replay.compare`) without re-running anything.
The terminal tables (:mod:`llmproxy.cli.replay_render`) are rendered *from this document*, not
from the live objects, so what ``--json`` prints (or ``--output`` writes) and what the table
shows cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from llmproxy.replay.lag import ClientHealth
from llmproxy.replay.source import Scan
from llmproxy.replay.stats import Summary

REPORT_FORMAT: Final = 1
"""Version of the JSON document; :mod:`.compare` refuses documents it does not know."""

Document = dict[str, Any]


def build_document(
    summary: Summary,
    health: ClientHealth,
    warnings: list[str],
    *,
    settings: Mapping[str, Any],
    environment: Mapping[str, Any],
    source: Scan | None = None,
    interrupted: bool = False,
) -> Document:
    """The JSON document of a run (see :data:`REPORT_FORMAT`)."""
    document: Document = {
        "llmproxy_replay": REPORT_FORMAT,
        "settings": dict(settings),
        "environment": dict(environment),
        "results": {
            "interrupted": interrupted,
            "sent": summary.sent,
            "ok": summary.ok,
            "failed": summary.failed,
            "error_rate": round(summary.error_rate, 6),
            "wall_s": round(summary.wall_s, 3),
            "send_rate": _round(summary.send_rate),
            "request_rate": _round(summary.request_rate),
            "output_tokens": summary.output_tokens,
            "tokens_per_s": _round(summary.tokens_per_s),
            "ttft_ms": summary.ttft.as_json(),
            "itl_ms": summary.itl.as_json(),
            "latency_ms": summary.latency.as_json(),
            "service_ms": summary.service.as_json(),
            "send_lag_ms": summary.send_lag.as_json(),
            "statuses": summary.statuses,
            "errors": summary.errors,
            "error_examples": summary.error_examples,
            "by_endpoint": summary.by_endpoint,
            "by_model": summary.by_model,
        },
        "client": {
            "loop_lag_ms": health.loop_lag.as_json(),
            "cpu_share": round(health.cpu_share, 3),
            "warnings": list(warnings),
        },
    }
    if source is not None:
        document["source"] = {
            "files": [str(path) for path in source.paths],
            "requests": source.requests,
            "malformed_lines": source.malformed,
            "problems": [
                {"file": str(p.path), "line": p.line, "message": p.message} for p in source.problems
            ],
            "ordered_by": "time" if source.by_time else "offset",
            "reordered": source.reordered,
            "span_s": round(source.span, 3),
        }
    return document


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)

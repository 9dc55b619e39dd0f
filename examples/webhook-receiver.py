"""A usage_hook receiver: verifies the signature, deduplicates by record id, prints running totals.

Run it, then point the gateway at it::

    python examples/webhook-receiver.py --port 3000 --secret "$USAGE_HOOK_SECRET"

    usage_hook:
      enabled: true
      url: http://127.0.0.1:3000/api/usage
      secret: ${USAGE_HOOK_SECRET}

It accepts both formats: ``batch`` (``{"records": [...]}``) and ``seed`` (one record per POST).
Delivery is at least once, so the same record may arrive twice: it is counted once, by ``id``.
A real receiver keeps the seen ids in its database (a unique key), not in memory.

The signature is ``X-LLMProxy-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared secret of
``<X-LLMProxy-Timestamp> + "." + <the exact body bytes>``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from collections import defaultdict

from aiohttp import web

MAX_SKEW = 300
"""Seconds a signed timestamp may differ from this clock (refuses replayed old deliveries)."""


def signature_ok(secret: str, request: web.Request, body: bytes) -> bool:
    """Whether the delivery was signed with ``secret`` recently."""
    timestamp = request.headers.get("X-LLMProxy-Timestamp", "")
    signature = request.headers.get("X-LLMProxy-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), signature)


class Totals:
    """Tokens per user, each record counted once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.duplicates = 0
        self.tokens: dict[str, int] = defaultdict(int)

    def add(self, record: dict[str, object]) -> None:
        record_id = str(record["id"])
        if record_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(record_id)
        total = record.get("total_tokens", 0)
        self.tokens[str(record.get("user_id") or "-")] += total if isinstance(total, int) else 0


def make_app(secret: str) -> web.Application:
    """The receiver application; POST /api/usage."""
    totals = Totals()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if secret and not signature_ok(secret, request, body):
            return web.Response(status=401, text="bad signature")
        data = json.loads(body)
        records = data.get("records", [data])
        for record in records:
            totals.add(record)
        print(
            f"{len(records)} records; {len(totals.seen)} unique, {totals.duplicates} duplicates;",
            dict(totals.tokens),
            flush=True,
        )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/usage", receive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--secret", default="", help="usage_hook.secret; empty skips the check")
    args = parser.parse_args()
    web.run_app(make_app(args.secret), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

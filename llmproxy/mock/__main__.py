"""``python -m llmproxy.mock --port 9001``: run a mock backend in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast, get_args

from llmproxy.mock.server import serve_forever
from llmproxy.mock.settings import Fault, MockSettings


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[MockSettings, str, int, str | None]:
    """Turn command-line flags into ``(settings, host, port)``; the flags mirror the knobs."""
    defaults = MockSettings()
    parser = argparse.ArgumentParser(
        prog="python -m llmproxy.mock", description="Run an OpenAI-compatible fake vLLM backend."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--models", default=",".join(defaults.models), help="comma-separated")
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--ttft", type=float, default=defaults.ttft, help="seconds")
    parser.add_argument("--itl", type=float, default=defaults.itl, help="seconds between tokens")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--fault", choices=get_args(Fault), default=None)
    parser.add_argument("--fault-after", type=int, default=defaults.fault_after)
    parser.add_argument("--name", default=defaults.name)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--slots", type=int, default=defaults.slots, help="generations at once (0: unlimited)"
    )
    parser.add_argument(
        "--prefill-per-token",
        type=float,
        default=defaults.prefill_per_token,
        help="seconds per uncached prompt token",
    )
    parser.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=defaults.prefix_cache_blocks,
        help="LRU prefix cache size in blocks (0: no cache)",
    )
    parser.add_argument(
        "--block-chars",
        type=int,
        default=defaults.block_chars,
        help="prompt characters per cache block",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export a span per request to this OTLP/HTTP collector (needs llmproxy[otel])",
    )
    args = parser.parse_args(argv)
    try:
        settings = MockSettings(
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            tokens=args.tokens,
            ttft=args.ttft,
            itl=args.itl,
            embedding_dim=args.embedding_dim,
            fault=cast(Fault | None, args.fault),
            fault_after=args.fault_after,
            name=args.name,
            api_key=args.api_key,
            slots=args.slots,
            prefill_per_token=args.prefill_per_token,
            prefix_cache_blocks=args.prefix_cache_blocks,
            block_chars=args.block_chars,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return settings, args.host, args.port, args.otlp_endpoint


def main(argv: Sequence[str] | None = None) -> None:
    settings, host, port, otlp_endpoint = parse_args(argv)
    serve_forever(settings, host, port, otlp_endpoint)


if __name__ == "__main__":
    main()

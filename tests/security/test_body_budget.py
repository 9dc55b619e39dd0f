"""server.body_buffer_limit: the bodies one process holds while judging them are bounded."""

from __future__ import annotations

import asyncio
import json

from tests.harness import gateway, make_config, mock_backend
from tests.security.wire import read_response

LIMIT = 4096


async def test_bodies_over_the_process_budget_get_503_and_the_budget_comes_back() -> None:
    """While one client trickles a 3 KiB body, another 3 KiB body would pass the process
    budget: it is refused with 503 server_busy and Retry-After. Once the first is done, the
    budget is free again."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], server={"body_buffer_limit": LIMIT})
        async with gateway(config) as gw:
            port = int(gw.url.rsplit(":", 1)[1])
            body = json.dumps({"model": "mock-model", "prompt": "x" * 3000}).encode()
            head = (
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
            slow.write(head + body[:100])
            await slow.drain()
            await asyncio.sleep(0.2)  # the gateway now holds the first body's declared size
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            refused = await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            assert refused.status == 503
            assert refused.error_code() == "server_busy"
            assert refused.headers[b"retry-after"] == b"1"
            slow.write(body[100:])
            served = await asyncio.wait_for(read_response(slow_reader), 5)
            slow.close()
            assert served.status == 200
            assert gw.state.body_budget.held == 0
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            again = await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            assert again.status == 200

"""server.body_buffer_limit: the bodies one process holds while judging them are bounded."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.harness import gateway, make_config, mock_backend
from tests.security.wire import read_response

LIMIT = 4096


async def test_bodies_over_the_process_budget_get_503_and_the_budget_comes_back() -> None:
    """While one client holds 3 KiB of a body it has not finished, another 3 KiB body would pass
    the process budget: it is refused with 503 server_busy and Retry-After. Once the first is
    done, the budget is free again. A length only declared holds nothing."""
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
            declared_only = []
            for _ in range(5):  # 5 x 3 KiB declared, one byte sent: nothing held for them
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + b"{")
                declared_only.append(writer)
            slow.write(head + body[:-10])
            await slow.drain()
            await asyncio.sleep(0.2)  # the gateway now holds what arrived of the first body
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            refused = await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            assert refused.status == 503
            assert refused.error_code() == "server_busy"
            assert refused.headers[b"retry-after"] == b"1"
            slow.write(body[-10:])
            served = await asyncio.wait_for(read_response(slow_reader), 5)
            slow.close()
            assert served.status == 200
            assert gw.state.body_budget.held == 5  # the one byte each of the declared ones
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            again = await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            assert again.status == 200
            for writer in declared_only:
                writer.close()
            for _ in range(100):
                if gw.state.body_budget.held == 0:
                    break
                await asyncio.sleep(0.02)
            assert gw.state.body_budget.held == 0  # a client that left gives its bytes back


async def test_a_body_counts_until_its_request_ends() -> None:
    """A body stays in the budget while its request waits and streams, not only while it is
    read: requests queued behind a full backend cannot hold memory past the limit."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], server={"body_buffer_limit": LIMIT})
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            body = {"model": "mock-model", "prompt": "x" * 1000, "stream": True, "max_tokens": 10}
            async with session.post(
                gw.url + "/v1/completions", json=body, headers={"x-mock-itl": "0.05"}
            ) as streaming:
                first = await streaming.content.readline()
                assert first.startswith(b"data: ")
                assert gw.state.body_budget.held >= 1000
                await streaming.read()
            for _ in range(50):
                if gw.state.body_budget.held == 0:
                    break
                await asyncio.sleep(0.02)
            assert gw.state.body_budget.held == 0

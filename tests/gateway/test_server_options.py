"""The seed's server options: TLS, header and body limits, slow bodies."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import trustme

from tests.harness import gateway, make_config, mock_backend


async def test_tls_listener_serves_https(tmp_path: Path) -> None:
    """With server.tls the gateway speaks HTTPS with the given certificate."""
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            server={
                "tls": {"enabled": True, "cert_file": str(cert_file), "key_file": str(key_file)}
            },
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            url = gw.url.replace("http://", "https://")
            async with session.post(
                url + "/v1/chat/completions",
                json={"model": "mock-model", "messages": []},
                ssl=client_context,
            ) as response:
                assert response.status == 200
                assert (await response.json())["object"] == "chat.completion"


async def test_oversized_headers_are_431() -> None:
    """Request headers over server.max_header_size are refused with 431."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], server={"max_header_size": "2KiB"})
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/v1/models", headers={"x-big": "a" * 4096}) as r:
                assert r.status == 431
                assert (await r.json())["error"]["code"] == "headers_too_large"


async def test_slow_body_times_out_with_408() -> None:
    """A body that stops arriving is cut off after server.read_timeout with a 408."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], server={"read_timeout": "300ms"})
        async with gateway(config) as gw:
            host, port = gw.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"model"'
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b": ")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            writer.close()
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408")
    assert mock.stats.requests == 0

"""``python -m bench.otlp_sink [--port 14318]``: an OTLP/HTTP receiver that accepts and forgets.

What a benchmark of tracing exports to: it answers every ``POST /v1/traces`` 200 with an
empty ``ExportTraceServiceResponse`` (zero bytes) after reading the body, over keep-alive
connections, and counts bytes and exports (printed at exit). It never decodes, so its own
cost stays off the gateway's numbers; run it on the load's core::

    taskset -c 0 python -m bench.otlp_sink --port 14318 &
    python -m bench.ab off=. on=. --full --stream \\
        --set 'on:tracing={"enabled":true,"endpoint":"http://127.0.0.1:14318"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"


class _Totals:
    exports = 0
    received = 0


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            _Totals.exports += 1
            _Totals.received += length
            writer.write(_OK)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"otlp_sink: {_Totals.exports} exports, {_Totals.received} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=14318)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args().port))


if __name__ == "__main__":
    main()

"""``server.workers: N``: N gateway processes sharing one port through ``SO_REUSEPORT``.

One Python process uses one core; the kernel spreads new connections over the workers' sockets.
The supervisor only starts the workers, restarts one that dies unexpectedly, and passes SIGTERM /
SIGINT on; it handles no traffic itself. It creates the daemon's shared tables
(:mod:`llmproxy.daemon.tables`) before the first worker starts; a worker started in a dead one's
place gives back what that one held in them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from llmproxy.config.model import Config
from llmproxy.daemon.listen import parse_listen
from llmproxy.daemon.tables import TablePaths
from llmproxy.metrics import mark_dead, prepare_multiprocess

log = logging.getLogger("llmproxy.daemon")

_RESTART_PAUSE = 1.0


def reuse_port_socket(address: str) -> socket.socket:
    """A listening socket on ``address`` that other processes may bind too (``SO_REUSEPORT``)."""
    host, port = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker_main(
    config: Config,
    base_dir: Path,
    config_path: Path | None,
    listen: str | None,
    index: int,
    tables: TablePaths,
) -> None:
    from llmproxy.daemon import server

    logging.basicConfig(level=getattr(logging, config.logging.level.upper()))
    sock = reuse_port_socket(config.listen_address)
    # One admin socket per daemon: the first worker serves it. A reload it performs is passed to
    # the supervisor as SIGHUP, which hands it to every worker.
    server.run(
        server.serve(
            config,
            base_dir,
            sockets=[sock],
            config_path=config_path,
            admin=index == 0,
            reload_all=_signal_supervisor if index == 0 else None,
            listen=listen,
            worker=index,
            tables=tables,
        )
    )


def _signal_supervisor() -> None:
    os.kill(os.getppid(), signal.SIGHUP)


def supervise(
    config: Config, base_dir: Path, config_path: Path | None = None, listen: str | None = None
) -> int:
    """Run ``config.server.workers`` worker processes until told to stop; returns an exit code.

    SIGHUP is passed to every worker: each re-reads the config file itself.
    """
    context = multiprocessing.get_context("spawn")
    stopping = False
    # Every worker writes its metrics to files in one directory; any of them renders the sum.
    prepare_multiprocess(base_dir / "run" / "prometheus")
    # Limits, backend slots and key changes are the daemon's, not each worker's.
    tables = TablePaths.create(base_dir / "run", config.server.workers)

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_worker_main,
            args=(config, base_dir, config_path, listen, index, tables),
            daemon=False,
        )
        process.start()
        return process

    workers = [start(index) for index in range(config.server.workers)]
    log.info("started %d workers on %s", len(workers), config.listen_address)

    def forward(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn drains gracefully on SIGTERM; a second signal here is passed on the same way.
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive():
                process.terminate()

    def hang_up(_signum: int, _frame: FrameType | None) -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hang_up)
    while True:
        for index, process in enumerate(workers):
            process.join(timeout=0.2)
            if process.is_alive():
                continue
            if stopping:
                continue
            log.error("worker %d exited with %s; restarting it", process.pid, process.exitcode)
            if process.pid is not None:
                mark_dead(process.pid)
            time.sleep(_RESTART_PAUSE)
            workers[index] = start(index)
        if stopping and not any(process.is_alive() for process in workers):
            tables.remove()
            return 0

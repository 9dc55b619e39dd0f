"""Each worker's vital numbers where the admin socket's worker can read them all.

One worker serves the admin socket; ``llmproxy status`` must speak for the daemon. So every worker
writes a fixed cell of this table — pid, requests in flight, snapshots retired, config version,
reload counts and the time of its last reload, usage records queued — every
:data:`PUBLISH_EVERY` seconds and right after a reload, and the admin worker sums the cells.
A cell not written for :data:`STALE_AFTER` seconds belongs to a worker that is gone (dead, or
being restarted) and is reported as such, never summed.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from llmproxy.daemon.control import DaemonControl
from llmproxy.daemon.runtime import RuntimeState
from llmproxy.mapped import MappedFile, attach_mapped, check_worker, create_mapped

PUBLISH_EVERY: Final = 0.1
STALE_AFTER: Final = 2.0
_MAGIC: Final = b"llmpbrd1"
_HEADER: Final = struct.Struct("<8sI")
_HEADER_SIZE: Final = 64
_CELL: Final = struct.Struct("<qddqqqqqdqq")
_CELL_SIZE: Final = 128


@dataclass(frozen=True, slots=True)
class WorkerCell:
    """What one worker last published."""

    index: int
    pid: int
    published_at: float
    started_at: float
    in_flight: int
    retired_snapshots: int
    config_version: int
    reloads_ok: int
    reloads_failed: int
    last_reload_at: float
    last_reload_ok: bool
    usage_queued: int

    @property
    def alive(self) -> bool:
        return self.pid > 0 and time.time() - self.published_at < STALE_AFTER

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "alive": self.alive,
            "started_at": self.started_at,
            "in_flight": self.in_flight,
            "retired_snapshots": self.retired_snapshots,
            "config_version": self.config_version,
            "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed},
            "last_reload_at": self.last_reload_at or None,
            "usage_queued": self.usage_queued,
        }


class WorkerBoard:
    """One worker's handle on the board."""

    __slots__ = ("_file", "_map", "worker", "workers")

    def __init__(self, mapped: MappedFile, worker: int) -> None:
        magic, workers = _HEADER.unpack_from(mapped.map, 0)
        if magic != _MAGIC or mapped.size != _HEADER_SIZE + workers * _CELL_SIZE:
            raise ValueError(f"{mapped.path} is not a worker board of this llmproxy")
        check_worker(worker, workers)
        self._file = mapped
        self._map = mapped.map
        self.worker = worker
        self.workers: int = workers

    @staticmethod
    def create(path: Path, workers: int) -> None:
        create_mapped(path, _HEADER_SIZE + workers * _CELL_SIZE, _HEADER.pack(_MAGIC, workers))

    @classmethod
    def attach(cls, path: Path, worker: int) -> WorkerBoard:
        return attach_mapped(path, lambda mapped: cls(mapped, worker))

    def close(self) -> None:
        self._file.close()

    def publish(
        self,
        *,
        started_at: float,
        in_flight: int,
        retired: int,
        config_version: int,
        reloads_ok: int,
        reloads_failed: int,
        last_reload_at: float,
        last_reload_ok: bool,
        usage_queued: int,
    ) -> None:
        """Write this worker's cell (under the lock, so a reader never sees half of it)."""
        with self._file.locked() as table:
            _CELL.pack_into(
                table,
                _HEADER_SIZE + self.worker * _CELL_SIZE,
                os.getpid(),
                time.time(),
                started_at,
                in_flight,
                retired,
                config_version,
                reloads_ok,
                reloads_failed,
                last_reload_at,
                int(last_reload_ok),
                usage_queued,
            )

    def cells(self) -> list[WorkerCell]:
        """Every worker's last cell, in index order."""
        with self._file.locked() as table:
            raw = [
                _CELL.unpack_from(table, _HEADER_SIZE + index * _CELL_SIZE)
                for index in range(self.workers)
            ]
        return [
            WorkerCell(
                index=index,
                pid=pid,
                published_at=published,
                started_at=started,
                in_flight=in_flight,
                retired_snapshots=retired,
                config_version=version,
                reloads_ok=ok,
                reloads_failed=failed,
                last_reload_at=reload_at,
                last_reload_ok=bool(reload_ok),
                usage_queued=queued,
            )
            for index, (
                pid,
                published,
                started,
                in_flight,
                retired,
                version,
                ok,
                failed,
                reload_at,
                reload_ok,
                queued,
            ) in enumerate(raw)
        ]

    async def wait_for_reloads(self, since: float, within: float) -> list[WorkerCell]:
        """The other live workers' cells once each has finished a reload after ``since`` (or at
        ``within`` seconds: the ones still behind are then reported as they are)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            others = [c for c in self.cells() if c.index != self.worker and c.alive]
            if all(c.last_reload_at >= since for c in others) or loop.time() >= deadline:
                return others
            await asyncio.sleep(PUBLISH_EVERY / 2)


async def keep_publishing(board: WorkerBoard, state: RuntimeState, control: DaemonControl) -> None:
    """Write this worker's cell every :data:`PUBLISH_EVERY` seconds until cancelled."""
    while True:
        publish_worker(board, state, control)
        await asyncio.sleep(PUBLISH_EVERY)


def publish_worker(board: WorkerBoard, state: RuntimeState, control: DaemonControl) -> None:
    """This worker's numbers now, written to its cell."""
    counts = control.reload_counts()
    last = counts.last
    sink = state.usage
    board.publish(
        started_at=control.started_at,
        in_flight=state.in_flight(),
        retired=state.retired_count(),
        config_version=control.config_version(),
        reloads_ok=counts.ok,
        reloads_failed=counts.failed,
        last_reload_at=last.at if last is not None else 0.0,
        last_reload_ok=last.ok if last is not None else True,
        usage_queued=sink.queued if sink is not None else 0,
    )
    slots = state.fleet.shared
    if slots is not None:
        for backend in state.current.backends:
            if backend.slots is not None:
                slots.report(backend.slots.row, backend.in_flight)

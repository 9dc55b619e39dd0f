"""The daemon's shared tables: what the workers of ``server.workers: N`` hold in common.

The supervisor creates them before the first worker starts and removes them when the last one
has stopped; each worker attaches to all of them as its index (a worker started in a dead one's
place gives back what that one held). One table per job, each with its own lock:

- limits (:mod:`llmproxy.limits.shared`): request buckets, concurrency slots, tokens per
  minute and quota reservations per key;
- slots (:mod:`llmproxy.routing.shared_slots`): each capped backend's slots, and the order of
  the requests waiting for one;
- notices (:mod:`llmproxy.notices`): changes every worker acts on before its next request
  (key store writes);
- board (:mod:`llmproxy.daemon.board`): each worker's vital numbers, for ``llmproxy status``;
- homes (:mod:`llmproxy.routing.shared_homes`): `prefix_affinity`'s prefix homes and demand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from llmproxy.daemon.board import WorkerBoard
from llmproxy.limits.shared import SharedLimits
from llmproxy.notices import DaemonNotices
from llmproxy.routing.shared_homes import HomesFile, create_homes
from llmproxy.routing.shared_slots import DEFAULT_BACKENDS, SharedSlots


@dataclass(frozen=True, slots=True)
class TablePaths:
    """Where one daemon's tables are (picklable: handed to each spawned worker)."""

    limits: Path
    slots: Path
    notices: Path
    board: Path
    homes: Path

    @classmethod
    def create(cls, run_dir: Path, workers: int) -> TablePaths:
        """Create fresh tables in ``run_dir`` for ``workers`` workers (named by this process's
        pid, so two daemons sharing a directory do not share tables), after removing the
        tables of daemons that are gone (a supervisor killed -9 cannot remove its own)."""
        remove_stale(run_dir)
        pid = os.getpid()
        paths = cls(
            limits=run_dir / f"limits-{pid}.table",
            slots=run_dir / f"slots-{pid}.table",
            notices=run_dir / f"notices-{pid}.table",
            board=run_dir / f"board-{pid}.table",
            homes=run_dir / f"homes-{pid}.table",
        )
        SharedLimits.create(paths.limits, workers=workers)
        SharedSlots.create(paths.slots, workers=workers)
        DaemonNotices.create(paths.notices)
        WorkerBoard.create(paths.board, workers)
        create_homes(paths.homes, rows=DEFAULT_BACKENDS)
        return paths

    def remove(self) -> None:
        for path in (self.limits, self.slots, self.notices, self.board, self.homes):
            path.unlink(missing_ok=True)


_TABLE_NAME = re.compile(r"^(limits|slots|notices|board|homes)-(\d+)\.table$")


def remove_stale(run_dir: Path) -> list[Path]:
    """Remove the tables in ``run_dir`` whose supervisor no longer runs; returns them."""
    removed = []
    for path in run_dir.glob("*-*.table") if run_dir.is_dir() else ():
        match = _TABLE_NAME.match(path.name)
        if match is None or _alive(int(match.group(2))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


@dataclass(frozen=True, slots=True)
class WorkerTables:
    """One worker's handles on the daemon's tables."""

    limits: SharedLimits
    slots: SharedSlots
    notices: DaemonNotices
    board: WorkerBoard
    homes: HomesFile

    @classmethod
    def attach(cls, paths: TablePaths, worker: int) -> WorkerTables:
        opened: list[SharedLimits | SharedSlots | DaemonNotices | WorkerBoard | HomesFile] = []
        try:
            opened.append(SharedLimits.attach(paths.limits, worker))
            opened.append(SharedSlots.attach(paths.slots, worker))
            opened.append(DaemonNotices.attach(paths.notices))
            opened.append(WorkerBoard.attach(paths.board, worker))
            opened.append(HomesFile.attach(paths.homes))
        except BaseException:
            for handle in opened:
                handle.close()
            raise
        limits, slots, notices, board, homes = opened
        assert isinstance(limits, SharedLimits)
        assert isinstance(slots, SharedSlots)
        assert isinstance(notices, DaemonNotices)
        assert isinstance(board, WorkerBoard)
        assert isinstance(homes, HomesFile)
        return cls(limits, slots, notices, board, homes)

    def close(self) -> None:
        for handle in (self.limits, self.slots, self.notices, self.board, self.homes):
            handle.close()

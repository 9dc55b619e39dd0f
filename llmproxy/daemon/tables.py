"""The daemon's shared tables: what the workers of ``server.workers: N`` hold in common.

The supervisor creates them before the first worker starts and removes them when the last one
has stopped; each worker attaches to all of them as its index (a worker started in a dead one's
place gives back what that one held). One table per job, each with its own lock:

- limits (:mod:`llmproxy.limits.shared`): request buckets, concurrency slots, tokens per
  minute and quota reservations per key;
- slots (:mod:`llmproxy.routing.shared_slots`): each capped backend's slots, and the order of
  the requests waiting for one;
- notices (:mod:`llmproxy.notices`): changes every worker acts on before its next request
  (key store writes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmproxy.limits.shared import SharedLimits
from llmproxy.notices import DaemonNotices
from llmproxy.routing.shared_slots import SharedSlots


@dataclass(frozen=True, slots=True)
class TablePaths:
    """Where one daemon's tables are (picklable: handed to each spawned worker)."""

    limits: Path
    slots: Path
    notices: Path

    @classmethod
    def create(cls, run_dir: Path, workers: int) -> TablePaths:
        """Create fresh tables in ``run_dir`` for ``workers`` workers (named by this process's
        pid, so two daemons sharing a directory do not share tables)."""
        pid = os.getpid()
        paths = cls(
            limits=run_dir / f"limits-{pid}.table",
            slots=run_dir / f"slots-{pid}.table",
            notices=run_dir / f"notices-{pid}.table",
        )
        SharedLimits.create(paths.limits, workers=workers)
        SharedSlots.create(paths.slots, workers=workers)
        DaemonNotices.create(paths.notices)
        return paths

    def remove(self) -> None:
        for path in (self.limits, self.slots, self.notices):
            path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class WorkerTables:
    """One worker's handles on the daemon's tables."""

    limits: SharedLimits
    slots: SharedSlots
    notices: DaemonNotices

    @classmethod
    def attach(cls, paths: TablePaths, worker: int) -> WorkerTables:
        limits = SharedLimits.attach(paths.limits, worker)
        try:
            slots = SharedSlots.attach(paths.slots, worker)
            try:
                notices = DaemonNotices.attach(paths.notices)
            except BaseException:
                slots.close()
                raise
        except BaseException:
            limits.close()
            raise
        return cls(limits, slots, notices)

    def close(self) -> None:
        self.limits.close()
        self.slots.close()
        self.notices.close()

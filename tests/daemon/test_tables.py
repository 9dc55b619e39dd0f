"""The daemon's shared tables: created together, and those of a gone daemon removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmproxy.daemon.tables import TablePaths, WorkerTables, remove_stale


def test_tables_are_created_attached_and_removed(tmp_path: Path) -> None:
    paths = TablePaths.create(tmp_path / "run", workers=2)
    for path in (paths.limits, paths.slots, paths.notices, paths.board, paths.homes):
        assert path.name.endswith(f"-{os.getpid()}.table")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    tables = WorkerTables.attach(paths, 1)
    tables.close()
    paths.remove()
    assert not list((tmp_path / "run").iterdir())


def test_tables_of_a_daemon_that_is_gone_are_removed_at_the_next_start(tmp_path: Path) -> None:
    """A supervisor killed -9 leaves its tables; the next one removes them (not a live one's)."""
    run = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    run.mkdir()
    stale = run / f"limits-{dead_pid}.table"
    stale.write_bytes(b"x")
    live = run / f"slots-{os.getppid()}.table"
    live.write_bytes(b"x")
    other = run / "notes-1.table"
    other.write_bytes(b"x")
    assert remove_stale(run) == [stale]
    assert live.exists()
    assert other.exists()
    paths = TablePaths.create(run, workers=1)
    paths.remove()

"""The recording file: appended to, rotated by size (``path`` → ``path.1`` → ``path.2`` …).

Used only by the recorder's writer thread. Nothing recorded is ever truncated: a new recording
(``fresh``) first rotates a non-empty file away, so one file never mixes two recordings whose
offsets both start at 0; reopening within a recording appends (its size counts towards rotation).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from llmproxy.private_files import open_private_append


def rotated_name(path: Path, generation: int) -> Path:
    """``path`` with ``.N`` appended: the N-th most recent rotated file."""
    return path.with_name(f"{path.name}.{generation}")


def worker_path(path: Path, worker: int | None) -> Path:
    """The file worker ``worker`` of several writes: ``.w<N>`` before the extension.

    Several processes appending to and rotating one file would interleave partial lines and
    rename each other's files; each writes its own instead. None (one process) keeps ``path``.
    """
    if worker is None:
        return path
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


class RotatingFile:
    """An append-only file of whole lines that rotates before a line would exceed ``max_bytes``.

    A line longer than ``max_bytes`` is written alone into a fresh file rather than dropped.
    ``keep_files`` rotated files are kept (0: the full file is deleted).
    """

    def __init__(self, path: Path, *, max_bytes: int, keep_files: int, fresh: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._file: BinaryIO = open_private_append(path)
        self.size = self._file.tell()
        if fresh and self.size:
            self.rotate()

    def write(self, line: bytes) -> None:
        """Append ``line`` (buffered: :meth:`flush` makes it visible to readers)."""
        if self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        self._file.write(line)
        self.size += len(line)

    def flush(self) -> None:
        self._file.flush()

    def rotate(self) -> None:
        """Close the file, shift the rotated ones by one generation and start an empty file."""
        self._file.close()
        if self.keep_files:
            rotated_name(self.path, self.keep_files).unlink(missing_ok=True)
            for generation in range(self.keep_files - 1, 0, -1):
                older = rotated_name(self.path, generation)
                if older.exists():
                    older.replace(rotated_name(self.path, generation + 1))
            self.path.replace(rotated_name(self.path, 1))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open_private_append(self.path)
        self.size = 0

    def close(self) -> None:
        self._file.close()

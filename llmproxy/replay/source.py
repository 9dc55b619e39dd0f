"""Read a recording: numbered lines, malformed ones reported by number and skipped (or fatal),
the requests handed out in the order they *arrived*.

The recorder writes a line when its request ends, so a long stream's line comes after those of
shorter requests that arrived later; a replay must send them in arrival order. Rotated files of
one recording (``rec.jsonl.2 rec.jsonl.1 rec.jsonl``) share one offset clock; the files of
several workers (``rec.w0.jsonl``, ``rec.w1.jsonl``) each have their own, so several files are
merged by the Unix ``time`` of arrival (by offset when a line lacks it).

A recording is therefore read twice. :func:`scan` decodes every line once before anything is
sent — a broken file is reported (or, with ``strict``, refused) up front rather than halfway
through a run — and keeps a compact index: where each line is and when its request arrived
(about 30 bytes a line, whatever the size of the bodies). :func:`read` then seeks to the lines in
arrival order and decodes them again, lazily, while they are sent: a recording with bodies can be
far larger than memory.
"""

from __future__ import annotations

import contextlib
import itertools
from array import array
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from llmproxy.record.format import FormatError, RecordedRequest, decode_line
from llmproxy.replay.outgoing import unrebuildable

MAX_PROBLEMS_KEPT: Final = 20
"""Problems listed by line; beyond these a recording is only counted as broken, not quoted."""


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that cannot be replayed: its file, its number (1-based) and why."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}: line {self.line}: {self.message}"


@dataclass(slots=True)
class Scan:
    """What a first pass over a recording found, and where its requests are."""

    paths: tuple[Path, ...]
    problems: list[LineProblem] = field(default_factory=list)
    """The first :data:`MAX_PROBLEMS_KEPT` malformed lines."""
    malformed: int = 0
    """All malformed lines, including those not kept in ``problems``."""
    by_time: bool = False
    """Ordered by Unix arrival time (several files), else by offset."""
    reordered: int = 0
    """Lines written after a line that arrived later (the recorder writes at the end)."""
    _file: array[int] = field(default_factory=lambda: array("H"))
    _position: array[int] = field(default_factory=lambda: array("q"))
    _line: array[int] = field(default_factory=lambda: array("q"))
    _arrival: array[float] = field(default_factory=lambda: array("d"))
    _order: array[int] = field(default_factory=lambda: array("q"))

    @property
    def requests(self) -> int:
        """Replayable lines."""
        return len(self._position)

    @property
    def span(self) -> float:
        """Seconds between the first and the last request's arrival."""
        return max(self._arrival) - min(self._arrival) if self._arrival else 0.0


class SourceError(Exception):
    """The recording cannot be read (missing, unreadable, or malformed under ``strict``)."""


def decode(line: bytes) -> RecordedRequest:
    """One line as a recorded request we can send; raises :class:`FormatError` otherwise."""
    request = decode_line(line)
    reason = unrebuildable(request)
    if reason is not None:
        raise FormatError(reason)
    return request


def scan(paths: Sequence[Path], *, strict: bool = False) -> Scan:
    """Decode every line of ``paths`` once and index the good ones in arrival order.

    With ``strict`` the first malformed line raises :class:`SourceError` naming it.
    """
    result = Scan(tuple(paths))
    offsets, times = array("d"), array("d")
    for index, path in enumerate(paths):
        try:
            with path.open("rb") as stream:
                _scan_file(result, index, stream, strict, (offsets, times))
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror or exc}") from None
    result.by_time = len(paths) > 1 and all(t > 0 for t in times)
    arrival = result._arrival = times if result.by_time else offsets
    result._order = array("q", sorted(range(len(arrival)), key=arrival.__getitem__))
    result.reordered = sum(1 for a, b in itertools.pairwise(arrival) if b < a)
    return result


def _scan_file(
    result: Scan,
    index: int,
    stream: BinaryIO,
    strict: bool,
    clocks: tuple[array[float], array[float]],
) -> None:
    """Index the good lines of ``result.paths[index]``; note (or, strict, raise) the others."""
    path = result.paths[index]
    offsets, times = clocks
    number = 0
    while True:
        position = stream.tell()
        line = stream.readline()
        if not line:
            return
        number += 1
        if not line.strip():
            continue
        try:
            request = decode(line)
        except FormatError as exc:
            problem = LineProblem(path, number, str(exc))
            if strict:
                raise SourceError(str(problem)) from None
            result.malformed += 1
            if len(result.problems) < MAX_PROBLEMS_KEPT:
                result.problems.append(problem)
            continue
        result._file.append(index)
        result._position.append(position)
        result._line.append(number)
        offsets.append(request.offset)
        times.append(request.time)


@dataclass(frozen=True, slots=True)
class Entry:
    """One request of the recording, in arrival order."""

    path: Path
    line: int
    arrival: float
    """Seconds on the recording's clock: its offset, or its Unix time when merging files."""
    request: RecordedRequest


def read(found: Scan) -> Generator[Entry, None, None]:
    """The requests :func:`scan` indexed, in arrival order, decoded as they are taken.

    The files are opened when the first request is taken and closed when the iterator is
    exhausted or closed. A line that changed since the scan is skipped.
    """
    with contextlib.ExitStack() as stack:
        try:
            files = [stack.enter_context(path.open("rb")) for path in found.paths]
        except OSError as exc:
            raise SourceError(f"{exc.filename}: {exc.strerror or exc}") from None
        for index in found._order:
            stream = files[found._file[index]]
            stream.seek(found._position[index])
            try:
                request = decode(stream.readline())
            except FormatError:
                continue
            path = found.paths[found._file[index]]
            yield Entry(path, found._line[index], found._arrival[index], request)

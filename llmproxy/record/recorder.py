"""The recorder: sampled requests handed over by the request path, written by one thread.

::

    recorder = Recorder(metrics)                 # one per process, owned by RuntimeState
    recorder.configure(config.record, base_dir)  # at startup and on every reload
    recorder.start()
    ...
    arrival = recorder.sample()                  # request start: a float when sampled, else None
    recorder.submit(Captured(arrival, ...))      # request end: O(1), never blocks, never raises
    ...
    recorder.stop(timeout=5)                     # writes what is queued

The request path pays one random number per request while recording is on and, for a sampled
request, one small struct and a queue put; parsing, redaction, encoding and writing happen in the
writer thread. The queue is bounded by ``record.queue_size``: a line that finds it full is dropped
and counted (``llmproxy_record_lines_total{result="dropped"}``), a request never waits for the disk.

A reload reconfigures the same recorder: the sample rate applies to the next request; a new path,
rotation or body setting travels through the queue as a control message, so every line queued
before it is written under the old settings; turning recording off writes what is queued, then
closes the file. Lines of requests that were sampled but end after recording was turned off are
dropped (and counted).

Offsets are seconds since recording was turned on (monotonic clock), carried on through rotation
and path changes; a new recording (a start, or a reload turning recording on) first rotates a
non-empty file away rather than append offsets that start at 0 again. Lines are written as
requests end, so their offsets (arrival times) are not
sorted: a long stream's line follows the short requests that arrived after it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from llmproxy.config.model import RecordConfig
from llmproxy.record.capture import Captured, recorded_request
from llmproxy.record.files import RotatingFile, worker_path
from llmproxy.record.format import encode_line

log = logging.getLogger("llmproxy.record")

WARN_EVERY = 10.0
"""Seconds between two warnings about the same trouble (full queue, unwritable file)."""

RETRY_OPEN_EVERY = 10.0
"""Seconds between two attempts to open a recording file that could not be opened."""


class LineCounts(Protocol):
    """Where written and dropped lines are counted (:class:`llmproxy.metrics.GatewayMetrics`)."""

    def recorded(self, result: str, count: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class _Settings:
    """What the writer thread needs of ``record``: a change of these goes through the queue."""

    path: Path
    bodies: bool
    redact: bool
    max_bytes: int
    keep_files: int


@dataclass(frozen=True, slots=True)
class _Switch:
    """Control message: from here on write with ``settings`` (None: recording is off)."""

    settings: _Settings | None
    epoch: float
    """Monotonic time offsets count from."""
    wall_epoch: float
    """Unix time at ``epoch``."""


_STOP: Final = object()


class Recorder:
    """Sampled request lines, queued on the event loop and written by one thread."""

    def __init__(
        self,
        counts: LineCounts | None = None,
        *,
        worker: int | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``worker``: this process's index when several share the port (its own file);
        ``rng`` and ``clock`` are there for tests (a seeded generator, a fake clock).
        """
        self._counts = counts
        self._worker = worker
        self._random = rng
        self._clock = clock
        self.sample_rate = 0.0
        """Share of requests sampled (0 while recording is off)."""
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._queue_size = RecordConfig().queue_size
        self._settings: _Settings | None = None
        self._applied: _Settings | None = None
        """The settings the writer thread was last sent (None: off)."""
        self._epoch = (0.0, 0.0)
        self._started = False
        self._accepting = False
        self._thread: threading.Thread | None = None
        # Each counter has one writer (the loop or the thread), so no update is ever lost.
        self._submitted = 0
        self._taken = 0
        self._dropped_loop = 0
        self._dropped_thread = 0
        self.written = 0
        """Lines written to the recording file."""
        self._last_warning = -WARN_EVERY

    # -- configuration (event loop) ------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Recording is configured on (it writes once :meth:`start` was called)."""
        return self._settings is not None

    @property
    def path(self) -> Path | None:
        """The file being recorded to (None while recording is off)."""
        return self._settings.path if self._settings is not None else None

    def configure(self, config: RecordConfig, base_dir: Path) -> None:
        """Apply ``record`` from a (new) config; never blocks.

        Called for every snapshot adopted: unchanged settings are a no-op, a change of file or
        format is queued behind the lines already waiting, so none of them is lost or written to
        the wrong file.
        """
        self._queue_size = config.queue_size
        settings = (
            _Settings(
                path=worker_path(base_dir / config.path, self._worker),
                bodies=config.bodies,
                redact=config.redact,
                max_bytes=config.max_bytes,
                keep_files=config.keep_files,
            )
            if config.enabled
            else None
        )
        self.sample_rate = config.sample_rate if settings is not None else 0.0
        if settings == self._settings:
            return
        self._settings = settings
        if self._started:
            self._apply()

    def start(self) -> None:
        """Start writing (the writer thread starts once recording is on)."""
        if self._started:
            return
        self._started = True
        if self._settings is not None:
            self._apply()

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new lines, write the queued ones (within ``timeout``) and close the file."""
        self._started = False
        self._accepting = False
        self._applied = None
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.error(
                "recording: %d lines still queued after %.0f s; they are lost", self.queued, timeout
            )

    def _apply(self) -> None:
        settings = self._settings
        if self._applied is None and settings is not None:
            # A new recording: offsets count from now (a change of path or rate carries on).
            self._epoch = (self._clock(), time.time())
        self._applied = settings
        self._queue.put(_Switch(settings, *self._epoch))
        self._accepting = settings is not None
        if settings is not None and self._thread is None:
            self._thread = threading.Thread(
                target=self._write_loop, name="llmproxy-recorder", daemon=True
            )
            self._thread.start()
        if settings is not None:
            log.info("recording %.0f%% of requests to %s", self.sample_rate * 100, settings.path)
        else:
            log.info("recording stopped")

    # -- request path (event loop) ---------------------------------------------------------------

    def sample(self) -> float | None:
        """Whether to record the request arriving now: its arrival time, or None."""
        if self._random() < self.sample_rate:
            return self._clock()
        return None

    def submit(self, captured: Captured) -> bool:
        """Queue one sampled request's line; False when it was dropped (queue full, or recording
        was turned off since the request arrived). O(1), never blocks, never raises.
        """
        if not self._accepting or self._submitted - self._taken >= self._queue_size:
            self._drop()
            return False
        self._submitted += 1
        self._queue.put(captured)
        return True

    def _drop(self) -> None:
        self._dropped_loop += 1
        if self._counts is not None:
            self._counts.recorded("dropped")
        if not self._accepting:
            return
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning(
                "recording queue full (record.queue_size=%d): %d lines dropped so far; the disk "
                "is too slow or record.sample_rate too high",
                self._queue_size,
                self.dropped,
            )

    # -- counters ------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Lines not written: queue full, recording off, or the file could not be written."""
        return self._dropped_loop + self._dropped_thread

    @property
    def queued(self) -> int:
        """Lines in memory, not yet written."""
        return self._submitted - self._taken

    # -- writer thread -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        writer = _Writer(self._count_thread)
        try:
            while True:
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        return
                    if isinstance(item, _Switch):
                        writer.switch(item)
                    elif isinstance(item, Captured):
                        self._taken += 1
                        writer.write(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                writer.flush()
        finally:
            writer.close()

    def _count_thread(self, result: str, count: int) -> None:
        if result == "written":
            self.written += count
        else:
            self._dropped_thread += count
        if self._counts is not None:
            self._counts.recorded(result, count)


class _Writer:
    """The writer thread's side: the open file, the settings lines are written with, counts."""

    def __init__(self, count: Callable[[str, int], None]) -> None:
        self._count = count
        self._switch: _Switch = _Switch(None, 0.0, 0.0)
        self._file: RotatingFile | None = None
        self._used: set[Path] = set()
        """Files this recording has written to: reopened, they are appended to."""
        self._open_failed_at: float | None = None
        self._written = 0
        self._dropped = 0
        self._last_warning = -WARN_EVERY

    def switch(self, switch: _Switch) -> None:
        """Write the pending lines, then take the new settings (a new file when the path or the
        rotation changed)."""
        old, new = self._switch.settings, switch.settings
        self.flush()
        if switch.epoch != self._switch.epoch:
            self._used.clear()  # a new recording starts a fresh file
        self._switch = switch
        if old is None or new is None or _file_of(old) != _file_of(new):
            self._close_file()
        self._open_failed_at = None

    def write(self, captured: Captured) -> None:
        settings = self._switch.settings
        offset = captured.arrival - self._switch.epoch
        if settings is None or offset < 0:
            # Recording is off, or the request arrived before this recording began.
            self._dropped += 1
            return
        try:
            line = encode_line(
                recorded_request(
                    captured,
                    offset=offset,
                    time=self._switch.wall_epoch + offset,
                    bodies=settings.bodies,
                    redact=settings.redact,
                )
            )
        except Exception:  # a thread that dies would silently stop the recording
            log.exception("recording: a line could not be encoded")
            self._dropped += 1
            return
        file = self._file or self._open(settings)
        if file is None:
            self._dropped += 1
            return
        try:
            file.write(line)
        except (OSError, ValueError) as exc:
            self._failed(f"cannot write {settings.path}: {exc}")
            self._dropped += 1
            self._close_file()
            self._open_failed_at = time.monotonic()
            return
        self._written += 1

    def flush(self) -> None:
        """Make the written lines visible, and count them."""
        if self._file is not None:
            try:
                self._file.flush()
            except (OSError, ValueError) as exc:
                self._failed(f"cannot write {self._file.path}: {exc}")
                self._close_file()
                self._open_failed_at = time.monotonic()
        if self._written:
            self._count("written", self._written)
            self._written = 0
        if self._dropped:
            self._count("dropped", self._dropped)
            self._dropped = 0

    def close(self) -> None:
        self.flush()
        self._close_file()

    def _open(self, settings: _Settings) -> RotatingFile | None:
        now = time.monotonic()
        if self._open_failed_at is not None and now - self._open_failed_at < RETRY_OPEN_EVERY:
            return None
        try:
            self._file = RotatingFile(
                settings.path,
                max_bytes=settings.max_bytes,
                keep_files=settings.keep_files,
                fresh=settings.path not in self._used,
            )
        except OSError as exc:
            self._open_failed_at = now
            self._failed(f"cannot open {settings.path}: {exc}")
            return None
        self._used.add(settings.path)
        self._open_failed_at = None
        return self._file

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self._failed(f"cannot close {self._file.path}: {exc}")
        self._file = None

    def _failed(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.error("recording: %s; lines are dropped until it works", message)


def _file_of(settings: _Settings) -> tuple[Path, int, int]:
    return settings.path, settings.max_bytes, settings.keep_files

"""Give memory back to the system after a burst.

A burst of large request bodies (a hundred and fifty clients sending a megabyte each) takes a
gateway process from about 90 to 280 MiB, and with glibc's defaults it stays there: after the
first large block is freed, glibc raises its mmap threshold (up to 32 MiB), so later large
bodies come from the heap, and a heap freed in the middle is kept. Two settings, made once per
process, and a periodic trim fix that:

* a fixed ``M_MMAP_THRESHOLD`` of :data:`LARGE`: every block that large (request and response
  bodies) is its own mapping, returned to the system the moment it is freed;
* a fixed ``M_TRIM_THRESHOLD``: free memory at the top of the heap is returned sooner;
* ``malloc_trim(0)`` returns the free pages inside the heap as well. It walks the whole heap
  (10–30 ms on a fragmented one, measured), so it runs only when the resident size has grown by
  :data:`GROWTH` since the last trim (checked every :data:`TRIM_INTERVAL` seconds: one read of
  ``/proc/self/statm``), and in a thread, never on the event loop.

Only glibc has these; elsewhere (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os

LARGE = 128 * 1024
"""Blocks of this size or more are mapped on their own (glibc's default before it adapts)."""
TRIM_INTERVAL = 15.0
GROWTH = 32 * 1024 * 1024
"""Resident bytes gained since the last trim that make the next check trim."""
_PAGE = os.sysconf("SC_PAGE_SIZE")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc
    return libc


_LIBC = _libc()


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); False if not glibc."""
    if _LIBC is None:
        return False
    _LIBC.mallopt(_M_MMAP_THRESHOLD, LARGE)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, LARGE)
    return True


def trim() -> None:
    """Return the free pages of the heap to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


async def keep_trimming(interval: float = TRIM_INTERVAL, growth: int = GROWTH) -> None:
    """Every ``interval`` seconds, trim if the process grew by ``growth`` since the last trim."""
    if _LIBC is None:
        return
    floor = resident_bytes()
    while True:
        await asyncio.sleep(interval)
        if resident_bytes() - floor >= growth:
            await asyncio.to_thread(trim)  # ctypes lets go of the GIL for the call
            floor = resident_bytes()

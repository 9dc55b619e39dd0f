"""Journal owners: a process is told apart by host, pid and start time; one on another host is
judged by its heartbeat."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import cast

from llmproxy.usage.journal import (
    DURABLE_WAIT,
    OWNER_TIMEOUT,
    Journal,
    owner_alive,
    owner_gone,
    process_owner,
)
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.store import UsageStore


def _dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_owner(child.pid)
    child.wait()
    assert owner  # read while it ran (or as a zombie, before wait)
    return owner


def test_owners_are_told_apart_by_pid_and_start_time() -> None:
    """This process is alive; a finished child, or this pid with another start time, is not."""
    me = process_owner()
    assert me.startswith(socket.gethostname() + ":")
    assert owner_alive(me)
    assert not owner_alive(_dead_owner())
    host, namespace, pid, _ = me.rsplit(":", 3)
    assert not owner_alive(f"{host}:{namespace}:{pid}:1")  # another start time: a reused pid
    # Another PID namespace on a host of the same name (a container): its heartbeat tells.
    assert owner_alive(f"{host}:1:{pid}:1") is None
    # An earlier version's owner ("<pid>:<start>") is this host's.
    assert owner_alive(me.split(":", 2)[2])


def test_an_owner_on_another_host_is_judged_by_its_heartbeat() -> None:
    """Unknown here; gone once silent for OWNER_TIMEOUT, or when it never beat."""
    far = "elsewhere:4026531836:1:2"
    assert owner_alive(far) is None
    assert not owner_gone(far, OWNER_TIMEOUT - 1)
    assert owner_gone(far, OWNER_TIMEOUT + 1)
    assert owner_gone(far, None)
    assert owner_gone(_dead_owner(), 0.0)  # local and dead: at once


class _StalledStore:
    """A usage store whose journal writes never finish (a database that hangs)."""

    async def journal_open(self, rows: object) -> None:
        await asyncio.Event().wait()

    async def heartbeat(self, owner: str, at: float) -> None:
        pass

    async def forget_owner(self, owner: str) -> None:
        pass


async def test_a_response_never_waits_long_on_a_stalled_store() -> None:
    """The first byte waits at most DURABLE_WAIT for its journal row; after that, responses do
    not wait at all for DEGRADED_FOR (a crash meanwhile may go unbilled, a client never
    hangs)."""
    journal = Journal(cast(UsageStore, _StalledStore()), outbox=False)
    await journal.start()
    try:
        record = UsageRecord(
            request_id="r1", model="m", prompt_tokens=1, completion_tokens=0, total_tokens=1,
            usage_source="estimated", status="interrupted",
        )  # fmt: skip
        first = journal.open(record, lambda: (1, 0))
        started = time.monotonic()
        await first.durable()
        assert DURABLE_WAIT - 0.05 <= time.monotonic() - started < DURABLE_WAIT + 0.5
        second = journal.open(UsageRecord.from_json(record.to_json()), lambda: (1, 0))
        started = time.monotonic()
        await second.durable()
        assert time.monotonic() - started < 0.05
        assert journal.failures == 1
    finally:
        await journal.close()

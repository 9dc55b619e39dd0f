"""Journal owners: a process is told apart by host, pid and start time; one on another host is
judged by its heartbeat."""

from __future__ import annotations

import socket
import subprocess
import sys

from llmproxy.usage.journal import OWNER_TIMEOUT, owner_alive, owner_gone, process_owner


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
    host, pid, _ = me.rsplit(":", 2)
    assert not owner_alive(f"{host}:{pid}:1")  # this pid, another start time: a reused pid
    assert not owner_alive("")
    # An earlier version's owner ("<pid>:<start>") is this host's.
    assert owner_alive(me.split(":", 1)[1])


def test_an_owner_on_another_host_is_judged_by_its_heartbeat() -> None:
    """Unknown here; gone once silent for OWNER_TIMEOUT, or when it never beat."""
    far = "elsewhere:1:2"
    assert owner_alive(far) is None
    assert not owner_gone(far, 1000.0, 1000.0 + OWNER_TIMEOUT - 1)
    assert owner_gone(far, 1000.0, 1000.0 + OWNER_TIMEOUT + 1)
    assert owner_gone(far, None, 1000.0)
    assert owner_gone(_dead_owner(), 1000.0, 1000.0)  # local and dead: at once

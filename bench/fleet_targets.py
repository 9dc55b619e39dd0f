"""The processes of the fleet benchmark: mock replicas with a simulated GPU, and a gateway.

Each is a child process on 127.0.0.1 with a free port and its output in the run's temp dir, as in
:mod:`bench.targets`; a gateway that does not come up (say, it refuses a strategy it does not
know yet) raises :class:`bench.targets.StartError` with the end of its log, so the run can go
on without it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.targets import child, free_port


@dataclass(frozen=True, slots=True)
class Fleet:
    """The shape of every mock replica (the knobs of :class:`llmproxy.mock.MockSettings`)."""

    replicas: int = 4
    slots: int = 8
    tokens: int = 32
    itl: float = 0.01
    prefill_per_token: float = 0.0005
    prefix_cache_blocks: int = 0
    block_chars: int = 64

    def command(self, port: int, name: str) -> list[str]:
        """``python -m llmproxy.mock`` with these knobs."""
        return [
            sys.executable, "-m", "llmproxy.mock", "--port", str(port), "--name", name,
            "--slots", str(self.slots), "--tokens", str(self.tokens), "--itl", str(self.itl),
            "--prefill-per-token", str(self.prefill_per_token),
            "--prefix-cache-blocks", str(self.prefix_cache_blocks),
            "--block-chars", str(self.block_chars),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def render_gateway_config(
    listen_port: int,
    replicas: Sequence[Replica],
    strategy: str,
    *,
    signals_interval: float = 0.5,
    prefix_chars: int = 2048,
    epsilon: float = 0.25,
    max_in_flight: int = 0,
    plain: bool = False,
) -> str:
    """The gateway config (JSON is YAML): the replicas by name, each capped at ``max_in_flight``
    requests (the mock's slots: the excess waits in the gateway's admission queue, as in front
    of vLLM's ``max_num_seqs``; 0: no cap), ``strategy``, load signals scraped every
    ``signals_interval`` seconds, and nothing that is not routing (no usage records, admin API,
    config watching or health probes). ``plain`` leaves the fleet-aware routing keys and the cap
    out, for a gateway that predates them (only its older strategies then run)."""
    routing: dict[str, object] = {"load_balance_strategy": strategy}
    backends: list[dict[str, object]] = [
        {"url": replica.url, "name": replica.name} for replica in replicas
    ]
    if not plain:
        routing["load_signals"] = {"enabled": True, "interval": signals_interval}
        routing["prefix_affinity"] = {"prefix_chars": prefix_chars, "epsilon": epsilon}
        if max_in_flight:
            for backend in backends:
                backend["max_in_flight"] = max_in_flight
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{listen_port}",
        "server": {"workers": 1, "watch_config": False},
        "backends": backends,
        "routing": routing,
        "usage": {"enabled": False},
        "admin": {"enabled": False},
        "health_check": {"enabled": False},
        "logging": {"level": "warning"},
    }
    return json.dumps(config, indent=2) + "\n"


@contextlib.contextmanager
def start_replicas(workdir: Path, fleet: Fleet) -> Iterator[list[Replica]]:
    """Start ``fleet.replicas`` mock replicas named ``gpu-0``, ``gpu-1``, …; stop them after."""
    with contextlib.ExitStack() as stack:
        replicas = []
        for index in range(fleet.replicas):
            replica = Replica(f"gpu-{index}", free_port())
            command = fleet.command(replica.port, replica.name)
            stack.enter_context(child(command, replica.port, workdir / f"{replica.name}.log"))
            replicas.append(replica)
        yield replicas


@contextlib.contextmanager
def start_gateway(workdir: Path, render: Callable[[int], str], label: str) -> Iterator[str]:
    """Run ``python -m llmproxy serve`` on the config ``render(port)`` returns; yield its URL."""
    port = free_port()
    config = workdir / f"gateway-{label}.yaml"
    config.write_text(render(port))
    command = [sys.executable, "-m", "llmproxy", "serve", "--config", str(config)]
    with child(command, port, workdir / f"gateway-{label}.log"):
        yield f"http://127.0.0.1:{port}"

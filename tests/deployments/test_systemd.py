"""deployments/systemd: the unit passes ``systemd-analyze verify`` (a parse of its keys where the
tool is missing), has the required settings and hardening, and fits deployments/systemd/config.yaml
(every path the gateway writes is writable under ProtectSystem=strict; the stop timeout covers the
drain)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config
from llmproxy.config.units import parse_duration
from tests.deployments.common import (
    COMPOSE_CONFIG,
    REPO,
    SYSTEMD,
    required_env,
    under,
    written_dirs,
)

UNIT = SYSTEMD / "llmproxy.service"
CONFIG = SYSTEMD / "config.yaml"
ANALYZE = shutil.which("systemd-analyze")
SECTIONS = {"Unit", "Service", "Install"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat); fails on anything that is not unit syntax."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if header:
            assert header.group(1) in SECTIONS, f"line {number}: unknown section {stripped}"
            current = sections.setdefault(header.group(1), {})
            continue
        match = re.fullmatch(r"([A-Z][A-Za-z]+)=(.*)", stripped)
        assert match, f"line {number}: not Key=Value: {line!r}"
        assert current is not None, f"line {number}: a key before the first section"
        current.setdefault(match.group(1), []).append(match.group(2).strip())
    return sections


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def service(key: str) -> str:
    values = unit()["Service"][key]
    assert len(values) == 1, key
    return values[0]


def config() -> Config:
    env = dict.fromkeys(required_env(CONFIG.read_text()), "http://127.0.0.1:3000/usage")
    return parse_config(CONFIG.read_text(), str(CONFIG), env)


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this checkout's (verify checks it exists)."""
    text = UNIT.read_text()
    binary = Path(sys.executable).parent / "llmproxy"
    assert binary.exists()
    text = text.replace("/opt/llmproxy/bin/llmproxy", str(binary))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def _man_path(tmp_path: Path) -> Path:
    """A MANPATH holding the repository's generated man pages, which Documentation= names."""
    section = tmp_path / "man" / "man1"
    section.mkdir(parents=True)
    for page in (REPO / "man").glob("*.1"):
        (section / page.name).write_bytes(page.read_bytes())
    return section.parent


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if ANALYZE is None:
        # No systemd here: the strict parse stands in (sections, Key=Value lines, known keys).
        assert set(unit()) == SECTIONS
        return
    result = subprocess.run(
        [ANALYZE, "verify", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MANPATH": str(_man_path(tmp_path)), "PATH": "/usr/bin:/bin"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for complaint in ("Unknown key", "Unknown section", "Failed to parse", "ignoring"):
        assert complaint not in output, output


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_hardening_scores_ok(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_has_the_required_settings() -> None:
    assert set(unit()) == SECTIONS
    assert (
        service("ExecStart")
        == "/opt/llmproxy/bin/llmproxy serve --config /etc/llmproxy/config.yaml"
    )
    assert service("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert service("KillSignal") == "SIGTERM"
    assert service("KillMode") == "mixed"  # workers get SIGTERM once, from the supervisor
    assert service("Restart") == "on-failure"
    assert service("User") == service("Group") == "llmproxy"
    assert service("Environment") == "LLMPROXY_CONFIG=/etc/llmproxy/config.yaml"
    assert unit()["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit()["Unit"]["Wants"]


def test_unit_hardening_settings() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RuntimeDirectory": "llmproxy",
        "StateDirectory": "llmproxy",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert service(key) == value, key
    assert "MemoryDenyWriteExecute" not in unit()["Service"]  # LuaJIT and libffi need W+X


def test_stop_timeout_covers_every_shipped_drain() -> None:
    stop = parse_duration(service("TimeoutStopSec"))
    env = {"REDIS_PASSWORD": "", "POSTGRES_PASSWORD": "", "USAGE_HOOK_SECRET": ""}
    compose_config = parse_config(COMPOSE_CONFIG.read_text(), str(COMPOSE_CONFIG), env)
    for shutdown in (config().server.shutdown_timeout, compose_config.server.shutdown_timeout):
        assert stop > shutdown
    assert stop > Config.model_fields["server"].default.shutdown_timeout


def test_config_writes_only_where_the_unit_allows() -> None:
    runtime = Path("/run") / service("RuntimeDirectory")
    state = Path("/var/lib") / service("StateDirectory")
    writable = {runtime, state}
    writable |= {Path(path.lstrip("-")) for path in service("ReadWritePaths").split()}
    assert Path(service("WorkingDirectory")) == state
    loaded = config()
    dirs = written_dirs(loaded, Path("/etc/llmproxy"))
    assert dirs["admin.socket"] == runtime
    for what, directory in dirs.items():
        assert under(directory, writable), f"{what} writes to {directory}"
    # with more workers too: their metrics files go to <config dir>/run, in ReadWritePaths
    more = loaded.model_copy(update={"server": loaded.server.model_copy(update={"workers": 4})})
    for what, directory in written_dirs(more, Path("/etc/llmproxy")).items():
        assert under(directory, writable), f"{what} writes to {directory}"

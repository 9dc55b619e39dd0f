"""Bash completion of key refs and backend names asks the daemon, and offers no file names.

Driven as bash drives it: the generated ``completions/llmproxy.bash`` sourced, ``COMP_WORDS`` set
and ``_llmproxy_completion`` called, the installed ``llmproxy`` entry point answering.
``compopt`` is shadowed by a function that logs, since bash only lets the real one run inside a
completion readline started; the log shows the script turning the file fallback off.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmproxy.cli import docgen
from tests.cli.conftest import Invoke
from tests.cli.live_daemon import Daemon, daemon

__all__ = ["daemon"]  # the module's fixture

SCRIPT = Path(__file__).parents[2] / "completions" / docgen.COMPLETION_FILES["bash"]
ENTRY_POINT = Path(sys.executable).parent / docgen.PROG

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or not ENTRY_POINT.exists(),
    reason="needs bash and the installed entry point",
)


def complete(
    words: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[list[str], str]:
    """``(COMPREPLY, compopt calls)`` for ``words`` (the last one is being typed)."""
    quoted = " ".join(shlex.quote(w) for w in words)
    script = "\n".join(
        [
            'CALLS=""; compopt() { CALLS+="compopt $*;"; }',
            f"source {shlex.quote(str(SCRIPT))}",
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            f"_llmproxy_completion {docgen.PROG} {shlex.quote(words[-1])} {shlex.quote(words[-2])}",
            'printf "%s\\n" "${COMPREPLY[@]}"; echo "--calls--$CALLS"',
        ]
    )
    path = f"{ENTRY_POINT.parent}{os.pathsep}{os.environ['PATH']}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMPROXY_")}
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env={**clean, "PATH": path, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reply, _, calls = result.stdout.partition("--calls--")
    # The script sets IFS to a newline, so "$*" joins with newlines: compare words.
    return [line for line in reply.splitlines() if line], " ".join(calls.split())


def test_keys_and_backends_complete_from_the_daemon(cli: Invoke, daemon: Daemon) -> None:
    """Key ids and names, and backend names, come from the running daemon."""
    config = ["-c", str(daemon.config)]
    added = cli("keys", "add", "--name", "tab-complete-me", "--json", *config)
    assert added.exit_code == 0, added.output
    cwd = daemon.config.parent
    names, _ = complete([docgen.PROG, "keys", "revoke", "tab-"], cwd)
    assert names == ["tab-complete-me"]
    every, _ = complete([docgen.PROG, "keys", "show", ""], cwd)
    assert "tab-complete-me" in every
    assert any(word.startswith("key_") for word in every)
    backends, _ = complete([docgen.PROG, "backends", "drain", ""], cwd)
    assert sorted(backends) == ["mock", "spare"]
    updated, _ = complete(
        [docgen.PROG, "keys", "update", "-c", str(daemon.config), "tab"], Path("/")
    )
    assert updated == ["tab-complete-me"]


def test_no_daemon_offers_nothing_not_file_names(tmp_path: Path) -> None:
    """With no daemon answering, nothing is offered and the file fallback is switched off,
    within the completion's short timeout."""
    (tmp_path / "a-file.txt").write_text("")
    for words in (
        [docgen.PROG, "keys", "revoke", ""],
        [docgen.PROG, "backends", "undrain", "a"],
    ):
        started = time.monotonic()
        reply, calls = complete(words, tmp_path, {"LLMPROXY_CONFIG": ""})
        assert time.monotonic() - started < 10
        assert reply == []
        assert "compopt +o default" in calls
    # A path argument still falls back to file names.
    _, calls = complete([docgen.PROG, "config", "check", "a-"], tmp_path)
    assert "compopt" not in calls

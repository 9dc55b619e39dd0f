"""Shell completion that asks the running daemon: key ids and names, backend names.

``llmproxy keys revoke <TAB>`` completes what the daemon's admin API lists, asked with a short
timeout (:data:`ASK_TIMEOUT`) so a TAB never hangs. When no daemon answers, or nothing matches,
the shell must offer nothing — not the file names it falls back to by default, which would be
wrong for a key or a backend. A completion callback says so by returning :func:`nothing`,
and the shell classes here turn that into each shell's "no candidates, no files":

- bash: the line :data:`NO_FILES_LINE`, on which the generated script (:data:`BASH_SCRIPT`)
  switches its ``-o default`` file fallback off with ``compopt +o default``;
- zsh: ``:`` (typer's class answers ``_files`` for an empty list);
- fish: "this is an argument", so its ``--no-files`` holds.

The classes replace typer's once the command tree is built (:func:`install`); everything else
about typer's completion stays as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer._click.shell_completion import CompletionItem, add_completion_class
from typer._completion_classes import BashComplete, FishComplete, ZshComplete

ASK_TIMEOUT = 0.5
"""Seconds a completion waits for the daemon: a TAB must feel instant even with none running."""

NO_CANDIDATES = "\x1fllmproxy-no-candidates"
"""Ends the one value a completion callback returns for "offer nothing, and no file names"
(:func:`nothing`): typer keeps only values that start with the word being typed."""


def nothing(incomplete: str) -> list[str]:
    """A completion callback's answer for "no candidates, and no file names"."""
    return [incomplete + NO_CANDIDATES]


NO_FILES_LINE = "::llmproxy-no-files::"
"""What the bash class prints for :data:`NO_CANDIDATES`; the bash script reads it."""

BASH_SCRIPT = f"""\
_llmproxy_completion() {{
    local IFS=$'\\n'
    COMPREPLY=( $( env COMP_WORDS="${{COMP_WORDS[*]}}" \\
                   COMP_CWORD=$COMP_CWORD \\
                   _LLMPROXY_COMPLETE=complete_bash $1 ) )
    if [[ ${{COMPREPLY[0]}} == "{NO_FILES_LINE}" ]]; then
        # A key or backend name is wanted and the daemon offered none: no file names either.
        COMPREPLY=()
        compopt +o default 2>/dev/null
    fi
    return 0
}}

complete -o default -F _llmproxy_completion llmproxy
"""
"""typer's bash script plus the :data:`NO_FILES_LINE` check (``make docs`` writes it)."""


def _only_none(items: list[CompletionItem]) -> bool:
    return len(items) == 1 and items[0].value.endswith(NO_CANDIDATES)


def _without_none(items: list[CompletionItem]) -> list[CompletionItem]:
    return [item for item in items if not item.value.endswith(NO_CANDIDATES)]


class _Bash(BashComplete):
    def source(self) -> str:
        return BASH_SCRIPT

    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        items = self.get_completions(args, incomplete)
        if _only_none(items):
            return NO_FILES_LINE
        return "\n".join(self.format_completion(item) for item in _without_none(items))


class _Zsh(ZshComplete):
    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        if _only_none(self.get_completions(args, incomplete)):
            return ":"
        return super().complete()


class _Fish(FishComplete):
    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        if _only_none(self.get_completions(args, incomplete)):
            if os.getenv("_TYPER_COMPLETE_FISH_ACTION", "") == "is-args":
                sys.exit(0)  # an argument is wanted: fish's --no-files holds
            return ""
        return super().complete()


def install() -> None:
    """Put the classes above in place of typer's (call after ``typer.main.get_command``)."""
    add_completion_class(_Bash, "bash")
    add_completion_class(_Zsh, "zsh")
    add_completion_class(_Fish, "fish")


def ask_daemon(
    ctx: typer.Context, path: str, pick: Callable[[dict[str, Any]], list[str]], incomplete: str
) -> list[str]:
    """The values ``pick`` takes from the daemon's answer to ``GET path`` that start with
    ``incomplete``; :func:`nothing` when there are none or no daemon answers in time.

    The daemon is found as the command would find it: ``--config``/``--socket``/``--admin-url``
    typed before the TAB, else ``$LLMPROXY_CONFIG``, else ``./config.yaml``.
    """
    import httpx

    from llmproxy.cli.admin_client import AdminError, DaemonUnreachable
    from llmproxy.cli.connection import Target, TargetError, open_client

    params = ctx.params
    config = params.get("config") or os.environ.get("LLMPROXY_CONFIG") or None
    target = Target(
        config=Path(config) if config else None,
        socket=params.get("socket"),
        admin_url=params.get("admin_url"),
        token=params.get("token") or os.environ.get("LLMPROXY_ADMIN_TOKEN"),
    )
    try:
        with open_client(
            target, os.environ, Path.cwd(), timeout=httpx.Timeout(ASK_TIMEOUT)
        ) as client:
            answer = client.get(path)
    except (TargetError, AdminError, DaemonUnreachable, OSError, ValueError):
        return nothing(incomplete)
    values = [value for value in dict.fromkeys(pick(answer)) if value.startswith(incomplete)]
    return values or nothing(incomplete)


def key_refs(ctx: typer.Context, incomplete: str) -> list[str]:
    """Completion of a key REF: the ids and names of the live keys."""

    def pick(answer: dict[str, Any]) -> list[str]:
        keys = answer.get("keys") or []
        return [str(k[field]) for k in keys for field in ("id", "name") if k.get(field)]

    return ask_daemon(ctx, "/keys", pick, incomplete)


def backend_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Completion of a backend NAME: the names the daemon routes to."""

    def pick(answer: dict[str, Any]) -> list[str]:
        return [str(b["name"]) for b in answer.get("backends") or [] if b.get("name")]

    return ask_daemon(ctx, "/backends", pick, incomplete)

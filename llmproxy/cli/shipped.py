"""The files the package ships beside the code, and the commands that hand them out:
``llmproxy completions bash|zsh|fish [--install]`` and ``llmproxy config example``.

The committed ``completions/``, ``man/`` and ``config.yaml.example`` at the top of the checkout
are the source (``make docs`` regenerates the first two); ``llmproxy/_data/`` links to them, so
the wheel carries them as package data and an editable install reads the checkout's own. The man
pages are also installed as the wheel's data files, under ``<prefix>/share/man/man1``, where
``man`` finds them (see docs/deployment.md: man-db searches ``../share/man`` of every directory
on ``PATH``, so ``man llmproxy`` works once the venv's ``bin`` is on it; else set ``MANPATH``).

Usage::

    llmproxy completions bash > ~/.local/share/bash-completion/completions/llmproxy
    llmproxy completions zsh --install     # writes the file and says where
    llmproxy config example > config.yaml && llmproxy config check config.yaml
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated

import typer

from llmproxy.cli.output import ExitCode, err_console

PROG = "llmproxy"
"""The console script in pyproject.toml: the completion scripts call the program back by it."""

COMPLETION_FILES = {"bash": f"{PROG}.bash", "zsh": f"_{PROG}", "fish": f"{PROG}.fish"}
"""Completion file name per shell, as each shell's loader looks for it (zsh: ``_<command>`` in
``$fpath``; bash-completion and fish: ``<command>[.bash|.fish]``)."""

EXAMPLE_CONFIG = "config.yaml.example"


class Shell(StrEnum):
    """A shell ``llmproxy completions`` has a script for."""

    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def shipped(*parts: str) -> Traversable:
    """A file shipped with the package (``shipped("man", "llmproxy.1")``)."""
    found = files("llmproxy").joinpath("_data")
    for part in parts:
        found = found.joinpath(part)
    return found


def completion_script(shell: str) -> str:
    """The completion script for ``shell``, as committed in ``completions/``."""
    return shipped("completions", COMPLETION_FILES[shell]).read_text(encoding="utf-8")


def example_config() -> str:
    """``config.yaml.example``: every section, commented, valid as it is."""
    return shipped(EXAMPLE_CONFIG).read_text(encoding="utf-8")


def install_path(shell: str, environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    """Where each shell loads a user's completions from without any setup, except zsh, whose
    ``$fpath`` has no per-user directory: ``~/.zfunc`` is the customary one (the command says
    how to add it)."""
    home = Path(environ.get("HOME") or Path.home())
    data = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    if shell == "bash":
        return data / "bash-completion" / "completions" / PROG
    if shell == "zsh":
        return Path(environ.get("ZDOTDIR") or home) / ".zfunc" / COMPLETION_FILES["zsh"]
    return config / "fish" / "completions" / COMPLETION_FILES["fish"]


_AFTER_INSTALL = {
    "bash": "new bash sessions load it (bash-completion 2.x looks there)",
    "zsh": "add `fpath+=(~/.zfunc)` before `compinit` in ~/.zshrc, then start a new shell",
    "fish": "new fish sessions load it",
}


def completions(
    shell: Annotated[Shell, typer.Argument(help="The shell: bash, zsh or fish.")],
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="Write the script where the shell loads it from (and say where) "
            "instead of printing it.",
        ),
    ] = False,
) -> None:
    """Print the shell completion script (or install it for this user with --install)."""
    script = completion_script(shell.value)
    if not install:
        sys.stdout.write(script)
        return
    target = install_path(shell.value)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(script, encoding="utf-8")
    except OSError as exc:
        err_console.print(f"[red]error:[/] cannot write {target}: {exc.strerror or exc}")
        raise typer.Exit(ExitCode.USAGE) from None
    err_console.print(
        f"{shell.value} completion installed in {target}: {_AFTER_INSTALL[shell.value]}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def config_example() -> None:
    """Print the example config (every section, commented); it validates as it is."""
    sys.stdout.write(example_config())

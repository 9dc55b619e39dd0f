"""What the operator commands print, and the exit codes scripts can rely on.

Exit codes of every command that talks to the daemon (``status``, ``reload``, ``keys``,
``backends``, ``usage``):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success
1     the operation was refused: the daemon answered with an error (unknown key or backend,
      reload refused because the config is broken, no key store…), or a confirmation was declined
2     usage or config error: a bad option or value (also when the daemon rejects a field value,
      HTTP 400), or the config file cannot be read
3     no daemon answers: the admin socket is missing, refuses connections or times out
====  ==========================================================================================

With ``--json`` a command prints one JSON document on stdout: the API's answer on success, its
error body on a refusal. Human-readable messages always go to stderr, so stdout stays parseable.

The formatting helpers are pure (they take ``now`` instead of reading the clock) so the tables can
be tested without a daemon.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from enum import IntEnum
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from llmproxy.cli.admin_client import AdminError, DaemonUnreachable

err_console = Console(stderr=True)

PIPE_WIDTH = 1000
"""Line width when stdout is not a terminal: rows stay whole for grep instead of wrapping at 80."""


def stdout_console() -> Console:
    """A console on the current stdout, as wide as the terminal, or :data:`PIPE_WIDTH` in a pipe.

    Built per call, not at import, so it follows the stdout and ``COLUMNS`` of the moment.
    """
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=PIPE_WIDTH)
    return console


class ExitCode(IntEnum):
    """Exit codes of the operator commands (see the module docstring)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    UNREACHABLE = 3


EXIT_CODES_EPILOG = (
    "Exit codes: 0 success; 1 the daemon refused the operation (not found, reload refused…); "
    "2 usage or config error; 3 no daemon answers on the admin socket."
)
"""The exit-code table as one help paragraph, shown under every daemon command's --help."""


def exit_code_for(error: AdminError | DaemonUnreachable) -> ExitCode:
    """The exit code a failed daemon call ends the command with.

    A 400 means the value the operator typed was wrong (the daemon checks key fields such as
    ``--allowed-ips``), which is the same mistake as a bad option caught here: a usage error.
    """
    from llmproxy.cli.admin_client import DaemonUnreachable

    if isinstance(error, DaemonUnreachable):
        return ExitCode.UNREACHABLE
    if error.status == 400:
        return ExitCode.USAGE
    return ExitCode.REFUSED


def print_error(message: str) -> None:
    """``error: message`` on stderr, never wrapped or read as markup (paths, user values)."""
    text = Text("error: ", style="bold red")
    text.append(message)
    err_console.print(text, soft_wrap=True, highlight=False)


def print_note(message: str) -> None:
    """A plain line on stderr (hints, progress), so stdout keeps only the answer."""
    err_console.print(message, soft_wrap=True, highlight=False, markup=False)


def rounded(document: object, digits: int, *, ms: bool = False) -> object:
    """``document`` with every float under a ``*_ms`` key rounded to ``digits`` decimals.

    Durations are differences of clock readings, so ``102.0`` arrives as
    ``101.99999999997544``; a script comparing or a human reading it wants ``102.0``. Only
    milliseconds are rounded: a cost or a ratio keeps its digits. ``ms`` is true below such a
    key (``"latency_ms": {"p50": ...}``). The daemon rounds its own records the same way
    (:func:`llmproxy.finish.milliseconds`); this also tidies records stored before it did.
    """
    if isinstance(document, float):
        return round(document, digits) if ms else document
    if isinstance(document, Mapping):
        return {
            key: rounded(value, digits, ms=ms or (isinstance(key, str) and key.endswith("_ms")))
            for key, value in document.items()
        }
    if isinstance(document, list | tuple):
        return [rounded(value, digits, ms=ms) for value in document]
    return document


def _tidy(document: object) -> object:
    from llmproxy.finish import MS_DIGITS  # not at import: every command, completion too, loads us

    return rounded(document, MS_DIGITS)


def json_text(document: object) -> str:
    """``document`` as the indented JSON text every command prints or writes (figures rounded)."""
    return json.dumps(_tidy(document), indent=2, ensure_ascii=False) + "\n"


def print_json(document: object) -> None:
    """One JSON document on stdout, unstyled, for scripts."""
    sys.stdout.write(json_text(document))
    sys.stdout.flush()


def print_json_line(document: object) -> None:
    """One compact JSON document on its own line (NDJSON), flushed so pipes see it at once."""
    line = json.dumps(_tidy(document), ensure_ascii=False, separators=(",", ":"))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def labelled(rows: list[tuple[str, str, str]]) -> Text:
    """``label  value`` lines (value styled by the row's style), for ``status`` and ``keys show``.

    Plain text rather than a grid table: a grid pads every line to its longest, which leaves
    trailing blanks in a pipe.
    """
    width = max((len(label) for label, _value, _style in rows), default=0)
    text = Text()
    for index, (label, value, style) in enumerate(rows):
        if index:
            text.append("\n")
        text.append(label.ljust(width + 2), style="bold")
        text.append(value, style=style)
    return text


# Pure formatting -----------------------------------------------------------------------------

NONE = "-"
"""Shown for a value that is not set or not known."""


def format_duration(seconds: float) -> str:
    """A short duration in its two largest units: ``45s``, ``12m 3s``, ``3h 12m``, ``4d 3h``.

    >>> format_duration(3725)
    '1h 2m'
    """
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts: list[str] = []
    for suffix, size in units:
        amount, total = divmod(total, size)
        if amount or parts:
            parts.append(f"{amount}{suffix}")
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if not part.startswith("0")) or "0s"


def format_relative(timestamp: float, now: float) -> str:
    """``in 3d 4h`` for the future, ``5m ago`` for the past."""
    delta = timestamp - now
    if delta >= 0:
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


def format_time(timestamp: float | None, now: float, tz: tzinfo | None = None) -> str:
    """A wall-clock time in ``tz`` (default: local): ``14:03:12`` today, else with the date."""
    if timestamp is None:
        return NONE
    moment = datetime.fromtimestamp(timestamp, tz=tz or _local())
    today = datetime.fromtimestamp(now, tz=tz or _local()).date()
    if moment.date() == today:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def format_datetime(timestamp: float | None, tz: tzinfo | None = None) -> str:
    """A full wall-clock time in ``tz`` (default: local): ``2027-01-01 00:00``."""
    if timestamp is None:
        return NONE
    return datetime.fromtimestamp(timestamp, tz=tz or _local()).strftime("%Y-%m-%d %H:%M")


def _local() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


def format_count(value: int | float | None) -> str:
    """``12,345`` (thousands separated); ``-`` when unknown."""
    if value is None:
        return NONE
    return f"{round(value):,}"


def format_ms(value: float | None) -> str:
    """Milliseconds: whole above 10 ms, one decimal below; ``-`` when unknown."""
    if value is None:
        return NONE
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    """A 0..1 ratio as a percentage: ``2.5%``."""
    if value is None:
        return NONE
    return f"{value * 100:.1f}%"

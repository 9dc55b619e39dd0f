"""What the admin API asks of the daemon, as small types: reload outcomes and the controller.

The admin API (``admin_api``) and the signal/file-watch paths all reload through one
:class:`DaemonControl`, so a reload started from the CLI, SIGHUP or an edited file behaves the same
and is reported the same way by ``llmproxy status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The result of one reload attempt (or dry run).

    ``changes`` are human-readable lines ("backend added: gpu-3 (http://10.0.0.3:8000)"); an empty
    tuple with ``ok`` means the new config is the same as the running one. ``error`` carries the
    refusal (``file:line: key.path: message`` when the config was wrong).
    """

    ok: bool
    dry_run: bool
    changes: tuple[str, ...] = ()
    error: str | None = None
    config_version: int = 0
    at: float = 0.0
    trigger: str = "admin"

    def as_json(self) -> dict[str, object]:
        """The JSON shape the admin API returns and ``llmproxy reload --json`` prints."""
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "changes": list(self.changes),
            "error": self.error,
            "config_version": self.config_version,
            "at": self.at,
            "trigger": self.trigger,
        }


@dataclass(slots=True)
class ReloadCounts:
    """How many reloads succeeded and failed since the daemon started."""

    ok: int = 0
    failed: int = 0
    last: ReloadOutcome | None = field(default=None)


class DaemonControl(Protocol):
    """The daemon as the admin API sees it."""

    config_path: str | None
    """The config file the daemon serves (None for the embedded demo config)."""
    started_at: float
    """Wall-clock start time."""

    async def reload(self, *, dry_run: bool = False, trigger: str = "admin") -> ReloadOutcome:
        """Re-read the config file; build, validate and swap in a new runtime (unless dry run)."""
        ...

    def reload_counts(self) -> ReloadCounts:
        """Reload history for ``status``."""
        ...

    def config_version(self) -> int:
        """1 at start, +1 on every successful reload."""
        ...

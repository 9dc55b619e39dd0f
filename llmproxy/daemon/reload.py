"""Hot reload: re-read the config and its Lua files, build a new runtime, swap it in one step.

Every way of asking for a reload (``llmproxy reload``, SIGHUP, an edited file) goes through
:meth:`Reloader.reload`, one at a time. A reload is all or nothing: the file is parsed and
validated, keys that only a restart can change are refused, the new :class:`Runtime` is built and
opened (Lua compiled, providers and Redis connected) while the old one keeps serving, and only
then is one reference swapped. Requests already running finish on the snapshot they started
with; :class:`RuntimeState` closes the old one when its last request ends. A refused reload
leaves the daemon exactly as it was and says why (``file:line: key.path: message``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmproxy.auth.build import AuthSetupError
from llmproxy.auth.lua import LuaError
from llmproxy.config.diff import describe_changes, restart_needed
from llmproxy.config.errors import ConfigError
from llmproxy.config.loader import load_config
from llmproxy.config.model import Config
from llmproxy.daemon.control import ReloadCounts, ReloadOutcome
from llmproxy.daemon.runtime import Runtime, RuntimeState

log = logging.getLogger("llmproxy.daemon")

# How long the file watcher waits for an editor's burst of writes to settle before reloading.
WATCH_DEBOUNCE_MS = 200


def watched_files(config: Config, config_path: Path, base_dir: Path) -> frozenset[Path]:
    """The config file and every Lua and key file it references: what an edit of should
    reload."""
    files = {config_path.absolute()}
    for entry in config.auth.pipeline:
        if entry.lua_script_file:
            files.add((base_dir / entry.lua_script_file).absolute())
        if entry.type == "file" and entry.path:
            files.add((base_dir / entry.path).absolute())
    return frozenset(files)


def _fingerprints(paths: frozenset[Path]) -> dict[Path, str]:
    """Content hash of each file (a missing file hashes as empty: the build will say why)."""
    prints: dict[Path, str] = {}
    for path in paths:
        try:
            prints[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            prints[path] = ""
    return prints


class Reloader:
    """The daemon's one reload path (the admin API's :class:`DaemonControl`)."""

    def __init__(
        self,
        state: RuntimeState,
        config_path: Path | None,
        *,
        environ: Mapping[str, str] | None = None,
        after_reload: Callable[[], None] | None = None,
        adjust: Callable[[Config], Config] | None = None,
    ) -> None:
        """``config_path`` is None for a config that does not come from a file (the demo).

        ``after_reload`` runs after a successful reload that a signal did not start: with
        several workers it passes the reload on to the others (as SIGHUP, via the supervisor).
        ``adjust`` applies the command line's overrides (``serve --listen``) to every reload too.
        """
        self._after_reload = after_reload
        self._adjust = adjust
        self.state = state
        self.config_path = str(config_path) if config_path is not None else None
        self._path = config_path
        self._environ = environ if environ is not None else os.environ
        self.base_dir = state.current.base_dir
        self.started_at = time.time()
        self._version = 1
        self._counts = ReloadCounts()
        self._lock = asyncio.Lock()
        self._files = (
            watched_files(state.current.config, config_path, self.base_dir)
            if config_path is not None
            else frozenset()
        )
        self._prints = _fingerprints(self._files)
        self._watch_task: asyncio.Task[None] | None = None
        self._stop_watch = asyncio.Event()

    # DaemonControl ----------------------------------------------------------------------------

    def reload_counts(self) -> ReloadCounts:
        return self._counts

    def config_version(self) -> int:
        return self._version

    async def reload(self, *, dry_run: bool = False, trigger: str = "admin") -> ReloadOutcome:
        """Apply the config file as it is now; see the module docstring for the rules."""
        async with self._lock:
            outcome = await self._reload(dry_run, trigger)
        if not dry_run:
            self._record(outcome)
            if outcome.ok and outcome.changes and trigger != "SIGHUP" and self._after_reload:
                self._after_reload()
        return outcome

    # The work ----------------------------------------------------------------------------------

    async def _reload(self, dry_run: bool, trigger: str) -> ReloadOutcome:
        if self._path is None:
            return self._refused(
                "this daemon runs the embedded demo config: no file to reload", dry_run, trigger
            )
        try:
            # File reads and YAML parsing stay off the event loop: requests keep flowing.
            config = await asyncio.to_thread(load_config, self._path, self._environ)
        except ConfigError as exc:
            return self._refused(str(exc), dry_run, trigger)
        if self._adjust is not None:
            config = self._adjust(config)
        old = self.state.current
        restart = restart_needed(old.config, config)
        if restart:
            listed = "; ".join(restart)
            return self._refused(
                f"{self._path}: these changes need a restart of the daemon and were not applied "
                f"(revert them to reload the rest): {listed}",
                dry_run,
                trigger,
            )
        files = watched_files(config, self._path, self.base_dir)
        prints = await asyncio.to_thread(_fingerprints, files)
        changes = describe_changes(old.config, config) + tuple(
            f"file changed: {path}"
            for path in sorted(files)
            if path != self._path.absolute()
            and path in self._prints
            and self._prints[path] != prints[path]
        )
        if not changes:
            return self._outcome(True, dry_run, trigger, ())
        try:
            runtime = Runtime(
                config,
                base_dir=self.base_dir,
                fleet=self.state.fleet,
                daemon_limits=self.state.daemon_limits,
                notices=self.state.notices,
            )
        except (LuaError, AuthSetupError, ValueError) as exc:
            return self._refused(str(exc), dry_run, trigger, changes)
        if dry_run:
            runtime.lua.close()
            return self._outcome(True, dry_run, trigger, changes)
        if old.limits is not None and config.rate_limit == old.config.rate_limit:
            runtime.inherit_limits(old)
        try:
            await runtime.open()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await runtime.close()
            return self._refused(
                f"the new config could not start: {exc}", dry_run, trigger, changes
            )
        self.state.swap(runtime)
        self._version += 1
        self._files, self._prints = files, prints
        return self._outcome(True, dry_run, trigger, changes)

    def _outcome(
        self,
        ok: bool,
        dry_run: bool,
        trigger: str,
        changes: tuple[str, ...],
        error: str | None = None,
    ) -> ReloadOutcome:
        return ReloadOutcome(
            ok=ok,
            dry_run=dry_run,
            changes=changes,
            error=error,
            config_version=self._version,
            at=time.time(),
            trigger=trigger,
        )

    def _refused(
        self, error: str, dry_run: bool, trigger: str, changes: tuple[str, ...] = ()
    ) -> ReloadOutcome:
        return self._outcome(False, dry_run, trigger, changes, error)

    def _record(self, outcome: ReloadOutcome) -> None:
        metrics = self.state.metrics
        if outcome.ok:
            self._counts.ok += 1
            if outcome.changes:
                log.info(
                    "config reloaded (%s, version %d): %s",
                    outcome.trigger,
                    outcome.config_version,
                    "; ".join(outcome.changes),
                )
            else:
                log.info("config reload (%s): no changes", outcome.trigger)
            metrics.config_reload("success")
        else:
            self._counts.failed += 1
            log.error(
                "config reload (%s) refused, the old config keeps serving: %s",
                outcome.trigger,
                outcome.error,
            )
            metrics.config_reload("failure")
        self._counts.last = outcome

    # File watching -----------------------------------------------------------------------------

    def watch(self) -> None:
        """Reload whenever the config file or one of its Lua files changes (until :meth:`stop`)."""
        if self._path is None or self._watch_task is not None:
            return
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop(self) -> None:
        """Stop watching files."""
        self._stop_watch.set()
        if self._watch_task is not None:
            await self._watch_task
            self._watch_task = None

    async def _watch_loop(self) -> None:
        from watchfiles import awatch

        while not self._stop_watch.is_set():
            files = self._files
            # Watch the directories: editors replace a file by renaming a new one over it,
            # which a watch on the file itself would lose.
            folders = sorted({str(path.parent) for path in files if path.parent.is_dir()})
            try:
                async for _changes in awatch(
                    *folders,
                    watch_filter=_only(files),
                    debounce=WATCH_DEBOUNCE_MS,
                    stop_event=self._stop_watch,
                    recursive=False,
                ):
                    await self.reload(trigger="file change")
                    if self._files != files:
                        break  # the set of Lua files changed: watch the new set
            except Exception:
                log.exception("config file watcher failed; retrying in 5 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_watch.wait(), 5.0)


def _only(files: frozenset[Path]) -> Callable[[Any, str], bool]:
    """A watchfiles filter passing changes to ``files`` only (and to a Kubernetes ConfigMap's
    `..data` link, whose swap replaces every file of the mount at once)."""

    def keep(_change: Any, name: str) -> bool:
        path = Path(name)
        # `..data` and friends: Kubernetes swaps a ConfigMap's files by replacing a symlink.
        return path in files or path.name.startswith("..")

    return keep

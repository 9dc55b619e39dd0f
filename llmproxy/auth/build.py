"""Build the auth pipeline of one runtime snapshot from the config.

Everything that can fail on a bad config fails here, before the snapshot serves a request: unknown
provider settings, Lua syntax errors (with the script's file and line), unreadable script files.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from llmproxy.auth.lua import LuaSandbox, LuaScript
from llmproxy.auth.pipeline import AuthPipeline, Stage
from llmproxy.auth.providers.base import KeyProvider
from llmproxy.auth.providers.builtin import BuiltinProvider
from llmproxy.auth.providers.database import DatabaseProvider
from llmproxy.auth.providers.redis import RedisProvider
from llmproxy.auth.providers.static import StaticProvider
from llmproxy.auth.providers.webhook import WebhookProvider
from llmproxy.config.model import Config, ProviderConfig, StaticKey
from llmproxy.connections import ConnectionPools

_IN_MEMORY = frozenset({"file", "static", "builtin"})


class AuthSetupError(Exception):
    """The auth section cannot be turned into a working pipeline; the message says why."""


def key_file(path: Path, provider: str) -> tuple[StaticKey, ...]:
    """The keys of a ``file`` provider's own file: YAML (or JSON), either a list of keys or a
    mapping with an ``api_keys`` list, each entry shaped like the top-level ``api_keys``.

    The file is re-read on every reload, and watched with the config, so keys can be kept
    apart from the config (a Kubernetes Secret, a file another tool writes).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthSetupError(
            f"auth provider {provider}: cannot read key file {path}: {exc.strerror or exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise AuthSetupError(f"auth provider {provider}: key file {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("api_keys")
    if data is None:
        return ()
    if not isinstance(data, list):
        raise AuthSetupError(
            f"auth provider {provider}: key file {path}: expected a list of keys "
            "(or a mapping with an `api_keys` list)"
        )
    keys = []
    for index, item in enumerate(data):
        try:
            keys.append(StaticKey.model_validate(item))
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'key'}: {error['msg']}"
                for error in exc.errors()
            )
            raise AuthSetupError(
                f"auth provider {provider}: key file {path}: entry {index + 1}: {problem}"
            ) from None
    return tuple(keys)


def effective_pipeline(config: Config) -> tuple[ProviderConfig, ...]:
    """The providers to run: ``auth.pipeline``, or the seed's ``auth.storage`` shortcut.

    Without a pipeline, ``storage: file`` means the top-level ``api_keys``, ``storage: builtin``
    the builtin store; with neither, ``api_keys`` when there are any, else the builtin store.
    """
    auth = config.auth
    if auth.pipeline:
        return tuple(entry for entry in auth.pipeline if entry.enabled)
    storage = auth.storage or ("file" if config.api_keys else "builtin")
    return (ProviderConfig(name=storage, type=storage),)


def _provider(
    entry: ProviderConfig, config: Config, pools: ConnectionPools, base_dir: Path
) -> KeyProvider:
    if entry.type == "file":
        keys = key_file(base_dir / entry.path, entry.name) if entry.path else config.api_keys
        return StaticProvider(entry.name, keys)
    if entry.type == "static":
        return StaticProvider(entry.name, entry.keys)
    if entry.type == "builtin":
        return BuiltinProvider(
            entry.name,
            config.auth.builtin_db,
            base_dir=base_dir,
            refresh_interval=config.auth.builtin_refresh_interval,
            resync_interval=config.auth.builtin_resync_interval,
        )
    if entry.type == "redis":
        assert entry.redis is not None  # the model requires it
        return RedisProvider(entry.name, entry.redis, pools)
    if entry.type == "database":
        assert entry.database is not None
        return DatabaseProvider(entry.name, entry.database, pools)
    assert entry.webhook is not None
    return WebhookProvider(entry.name, entry.webhook, pools)


def _script(entry: ProviderConfig, sandbox: LuaSandbox, base_dir: Path) -> LuaScript | None:
    if entry.lua_script_file:
        path = base_dir / entry.lua_script_file
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthSetupError(
                f"auth provider {entry.name}: cannot read lua_script_file {path}: {exc.strerror}"
            ) from None
        return sandbox.compile(source, str(path))
    if entry.lua_script:
        return sandbox.compile(entry.lua_script, f"provider {entry.name}")
    return None


def build_pipeline(
    config: Config, pools: ConnectionPools, sandbox: LuaSandbox, base_dir: Path
) -> AuthPipeline:
    """The pipeline for ``config.auth`` (not yet opened). Raises on a broken script or setting."""
    try:
        stages = _stages(config, pools, sandbox, base_dir)
    except ValueError as exc:  # a provider refusing its settings names itself in the message
        raise AuthSetupError(str(exc)) from None
    if not stages:
        raise AuthSetupError("auth is enabled but no provider in auth.pipeline is enabled")
    return AuthPipeline(config.auth, stages)


def _stages(
    config: Config, pools: ConnectionPools, sandbox: LuaSandbox, base_dir: Path
) -> list[Stage]:
    return [
        Stage.create(
            _provider(entry, config, pools, base_dir),
            _script(entry, sandbox, base_dir),
            skip_on_error=entry.on_error == "skip",
            # Keys already held in memory: a cache would only delay a reload or a revoke.
            cache=None if entry.type in _IN_MEMORY else config.auth.cache,
        )
        for entry in effective_pipeline(config)
    ]

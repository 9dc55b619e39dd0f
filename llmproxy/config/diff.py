"""What a reload would change: a readable diff between two configs, and what needs a restart.

Pure functions over two :class:`Config` values, so ``llmproxy reload --dry-run`` and the reload
log say the same thing and can be tested without a daemon. Values of secret-looking keys
(tokens, passwords, DSNs, secrets) are never shown, only that they changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from llmproxy.config.model import Config, restart_only


def _restart_only_paths(
    model: type[BaseModel], prefix: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    """Every key marked :data:`~llmproxy.config.model.RESTART_ONLY`, as a path of config keys."""
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        if restart_only(field):
            yield path
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _restart_only_paths(field.annotation, path)


# Keys that live as long as the process (listener, worker processes, usage sink, metrics
# registry, admin socket): a change to them is refused by a reload and needs a restart. The
# listen addresses are compared as the effective address, :attr:`Config.listen_address`.
RESTART_ONLY: tuple[tuple[str, ...], ...] = tuple(
    path
    for path in _restart_only_paths(Config, ())
    if path not in {("listen",), ("server", "listen")}
)

_SECRET_WORDS = ("token", "secret", "password", "dsn", "api_key", "hmac", "headers")
_SECRET_KEYS = frozenset({"key"})
_NAMED_LISTS = {("backends",): "backend", ("auth", "pipeline"): "provider"}


def restart_needed(old: Config, new: Config) -> tuple[str, ...]:
    """Keys whose change a running daemon cannot apply: one line each, naming old and new."""
    lines: list[str] = []
    if old.listen_address != new.listen_address:
        lines.append(f"listen address: {old.listen_address} → {new.listen_address}")
    old_data, new_data = _data(old), _data(new)
    for path in RESTART_ONLY:
        before, after = _at(old_data, path), _at(new_data, path)
        if before != after:
            lines.extend(_changes(path, before, after))
    return tuple(lines)


def describe_changes(old: Config, new: Config) -> tuple[str, ...]:
    """Every difference between ``old`` and ``new`` as ``key.path: before → after`` lines.

    Backends and auth providers are matched by name, so reordering shows as such and an edited
    backend shows its changed fields instead of a removal plus an addition.
    """
    return tuple(_changes((), _data(old), _data(new)))


def _data(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    data.pop("listen", None)  # the effective address is compared on its own
    server = data.get("server")
    if isinstance(server, dict):
        server.pop("listen", None)
    data["listen"] = config.listen_address
    data["backends"] = [
        {"name": backend.display_name, **item}
        for backend, item in zip(config.backends, data["backends"], strict=True)
    ]
    return data


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _changes(path: tuple[str, ...], before: Any, after: Any) -> Iterator[str]:
    if before == after:
        return
    kind = _NAMED_LISTS.get(path)
    if kind is not None and isinstance(before, list) and isinstance(after, list):
        yield from _named_list_changes(path, kind, before, after)
    elif isinstance(before, Mapping | None) and isinstance(after, Mapping | None):
        # A section appearing or going away is shown key by key, so secrets inside stay hidden.
        before, after = before or {}, after or {}
        for key in sorted(before.keys() | after.keys()):
            yield from _changes((*path, key), before.get(key), after.get(key))
    else:
        yield f"{_dotted(path)}: {_show(path, before)} → {_show(path, after)}"


def _named_list_changes(
    path: tuple[str, ...], kind: str, before: list[Any], after: list[Any]
) -> Iterator[str]:
    old = {item["name"]: item for item in before}
    new = {item["name"]: item for item in after}
    for name in old.keys() - new.keys():
        yield f"{kind} removed: {_label(old[name])}"
    for name in new.keys() - old.keys():
        yield f"{kind} added: {_label(new[name])}"
    for name in sorted(old.keys() & new.keys()):
        for key in sorted(old[name].keys() | new[name].keys()):
            yield from _changes((*path, f"[{name}]", key), old[name].get(key), new[name].get(key))
    common_old = [item["name"] for item in before if item["name"] in new]
    common_new = [item["name"] for item in after if item["name"] in old]
    if common_old != common_new:
        yield f"{_dotted(path)}: order {', '.join(common_old)} → {', '.join(common_new)}"


def _label(item: Mapping[str, Any]) -> str:
    where = item.get("url") or item.get("type")
    return f"{item['name']} ({where})" if where and where != item["name"] else str(item["name"])


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[", "[")


def _show(path: tuple[str, ...], value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        # Static key lists and the like: their entries may hold secrets; count them only.
        return f"[{len(value)} {'entry' if len(value) == 1 else 'entries'}]"
    if path and (
        path[-1].lower() in _SECRET_KEYS or any(word in path[-1].lower() for word in _SECRET_WORDS)
    ):
        return "(hidden)"
    if isinstance(value, str):
        return repr(_without_password(value))
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _without_password(text: str) -> str:
    """``scheme://user:pass@host`` with the password hidden."""
    return _URL_PASSWORD.sub(r"\1***@", text)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")

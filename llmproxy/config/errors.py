"""Config errors that name the file, the line, the key path and the fix.

Everything that can be wrong with a config file ends up as a :class:`ConfigIssue` inside one
:class:`ConfigError`, so the CLI prints every problem at once, one line each::

    config.yaml:42: backends[1].url: scheme must be http or https, got 'ftp://x'
    config.yaml:7: backends[0]: unknown key 'wieght' (did you mean 'weight'?)

:func:`issues_from_validation` turns pydantic's ``ValidationError`` into such issues: the ``loc``
tuple becomes a key path in the names the operator wrote (aliases such as ``rate_limit.global``),
the line comes from the loader's map of key paths to lines, and the message is rewritten in plain
words. Pure functions only; the loader supplies the lines.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

KeyPath = tuple[str | int, ...]
"""Where a value sits in the file: mapping keys and sequence indexes, e.g. ``("backends", 1)``."""

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file; ``str()`` gives ``file:line: path: message``."""

    source: str
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used, with every issue found in it (at least one)."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        if not issues:
            raise ValueError("a ConfigError needs at least one issue")
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class PathValueError(ValueError):
    """A validator's complaint about one key *below* the model being validated.

    A ``model_validator`` on ``Config`` that finds ``routing.fallback[0].fallback[1]`` wrong would
    otherwise be reported at the top of the file; raising this with the relative path lets the
    error point at the offending line::

        raise PathValueError("names 'x', which is not a backend", ("routing", "fallback", 0))
    """

    def __init__(self, message: str, path: KeyPath) -> None:
        super().__init__(message)
        self.path = path


def format_path(path: Iterable[str | int]) -> str:
    """Render a key path the way an operator reads it: ``backends[1].headers.X-Tenant``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor written in the file."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def describe_value(value: object) -> str:
    """Show a YAML value in a message: strings quoted, scalars as YAML writes them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


@dataclass(frozen=True)
class _Located:
    """One pydantic error resolved against the model."""

    raw: KeyPath  # keys as written in the file, for the line lookup
    shown: KeyPath  # keys as the operator writes them (aliases), for the message
    owner: type[BaseModel] | None  # the model holding the last key, for suggestions
    annotation: Any  # the type expected at the end of the path, when known
    union_arm: bool  # the error is one arm of a ``str | int`` style union


def issues_from_validation(
    error: ValidationError,
    model: type[BaseModel],
    source: str,
    lines: Mapping[KeyPath, int],
) -> list[ConfigIssue]:
    """Translate ``error`` (from ``model.model_validate``) into issues sorted by line.

    ``lines`` maps key paths, as written in the file, to 1-based lines; a path missing from it (a
    required key that was not written) takes the line of its nearest written ancestor.
    """
    details = error.errors()
    located = [_locate(model, _full_loc(detail)) for detail in details]
    union_arms: dict[KeyPath, list[ErrorDetails]] = {}
    for detail, where in zip(details, located, strict=True):
        if where.union_arm:
            union_arms.setdefault(where.raw, []).append(detail)
    issues: list[tuple[int, ConfigIssue]] = []
    for index, (detail, where) in enumerate(zip(details, located, strict=True)):
        if _is_consequence(detail, where, located):
            continue
        issue = _issue(detail, where, source, lines)
        if where.union_arm:
            arms = union_arms.pop(where.raw, None)
            if arms is None:
                continue  # this union was reported with its first arm
            issue = _union_issue(arms, issue)
        issues.append((index, issue))
    issues.sort(key=lambda item: (item[1].line is None, item[1].line or 0, item[0]))
    return [issue for _, issue in issues]


def _full_loc(detail: ErrorDetails) -> tuple[str | int, ...]:
    cause = (detail.get("ctx") or {}).get("error")
    if isinstance(cause, PathValueError):
        return (*detail["loc"], *cause.path)
    return tuple(detail["loc"])


def _is_consequence(detail: ErrorDetails, where: _Located, located: list[_Located]) -> bool:
    """pydantic also reports a list as too short when its only items failed: say that once."""
    if detail["type"] not in ("too_short", "too_long"):
        return False
    depth = len(where.raw)
    return any(len(o.raw) > depth and o.raw[:depth] == where.raw for o in located)


def _issue(
    detail: ErrorDetails, where: _Located, source: str, lines: Mapping[KeyPath, int]
) -> ConfigIssue:
    shown = where.shown
    if detail["type"] in ("missing", "extra_forbidden") and shown:
        shown = shown[:-1]
    line = line_of(lines, where.raw)
    return ConfigIssue(source, line, format_path(shown), _message(detail, where))


def _union_issue(arms: list[ErrorDetails], first: ConfigIssue) -> ConfigIssue:
    expected = [_EXPECTED.get(arm["type"]) for arm in arms]
    if None in expected:
        return first
    words = " or ".join(dict.fromkeys(word for word in expected if word))
    message = f"expected {words}, got {describe_value(arms[0]['input'])}"
    return ConfigIssue(first.source, first.line, first.path, message)


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` is validated as a nullable ``X``: pydantic adds no ``loc`` step for it."""
    if get_origin(annotation) in (Union, types.UnionType):
        arms = [arm for arm in get_args(annotation) if arm is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return annotation


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> _Located:
    """Walk ``loc`` through the model's fields, dropping pydantic's union tags and ``[key]``."""
    raw: list[str | int] = []
    shown: list[str | int] = []
    current: Any = model
    owner: type[BaseModel] | None = None
    union_arm = False
    for step in loc:
        current = _unwrap_optional(current)
        origin = get_origin(current)
        if origin in (Union, types.UnionType):
            # The step names the arm pydantic tried (``int``, ``constrained-str``), not a key.
            union_arm = True
            arms = {getattr(arm, "__name__", None): arm for arm in get_args(current)}
            current = arms.get(str(step))
            continue
        if step == "[key]":
            continue
        raw.append(step)
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            name, field = _field_by_key(current, str(step))
            shown.append(step if field is None else field.alias or name)
            current = None if field is None else field.annotation
            continue
        owner = None
        shown.append(step)
        args = get_args(current)
        if origin is tuple and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            current = None
    return _Located(tuple(raw), tuple(shown), owner, _unwrap_optional(current), union_arm)


def _field_by_key(model: type[BaseModel], key: str) -> tuple[str, FieldInfo | None]:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return name, field
    return key, None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _choice_values(annotation: Any) -> tuple[Any, ...] | None:
    """The values an enum or ``Literal`` annotation admits; None for any other type."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return tuple(member.value for member in annotation)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None


def _choices(annotation: Any) -> str | None:
    values = _choice_values(annotation)
    if values is None:
        return None
    return ", ".join(
        value if isinstance(value, str) and _SIMPLE_KEY.fullmatch(value) else repr(value)
        for value in values
    )


def _did_you_mean(value: object, annotation: Any) -> str:
    """`` (did you mean 'least_connections'?)`` for a misspelt enum value, else ``""``.

    Only text is matched, and only against text choices: a close number is not a typo.
    """
    values = _choice_values(annotation)
    if not isinstance(value, str) or values is None:
        return ""
    texts = [choice for choice in values if isinstance(choice, str)]
    close = difflib.get_close_matches(value, texts, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "greater than"),
    "less_than": ("lt", "less than"),
}
_PREFIXES = ("Value error, ", "Assertion failed, ")
# Values of these keys are credentials: messages end up in terminals and logs, so never echo them.
_SECRET_KEYS = frozenset({"api_key", "password", "secret", "key", "dsn"})


def _message(detail: ErrorDetails, where: _Located) -> str:
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail["input"]
    got = describe_value(value)
    if where.raw and str(where.raw[-1]) in _SECRET_KEYS and isinstance(value, str | int | float):
        got = ("a string" if isinstance(value, str) else "a number") + " (hidden: a secret)"
    if kind == "missing":
        return f"missing required key {str(where.raw[-1])!r}"
    if kind == "extra_forbidden":
        key = str(where.raw[-1])
        close = difflib.get_close_matches(key, _keys_of(where.owner), n=1) if where.owner else []
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind in ("literal_error", "enum"):
        choices = _choices(where.annotation) or str(ctx.get("expected", "")).replace("'", "")
        return f"expected one of {choices}, got {got}" + _did_you_mean(value, where.annotation)
    if kind in _EXPECTED:
        hint = ""
        if kind == "string_type" and isinstance(value, int | float):
            hint = "; put it in quotes to keep it as text"
        elif value is None and _EXPECTED[kind] in ("a mapping", "a list"):
            hint = "; the key has no value: give it one or remove the key"
        return f"expected {_EXPECTED[kind]}, got {got}{hint}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(name)}, got {got}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        words = "at least" if kind == "too_short" else "at most"
        entries = "entry" if bound == 1 else "entries"
        return f"needs {words} {bound} {entries}, got {ctx.get('actual_length')}"
    cause = ctx.get("error")
    if isinstance(cause, Exception):
        return str(cause)
    message = detail["msg"]
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]

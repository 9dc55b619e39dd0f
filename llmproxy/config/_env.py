"""``${VAR}`` expansion inside config strings, so secrets and ports can come from the environment.

Supported forms, anywhere in a string and several per string::

    ${NAME}            the variable's value; an error when NAME is unset
    ${NAME:-default}   the default when NAME is unset or empty (as in the shell)
    $${NAME}           a literal ``${NAME}``, for a value that must keep the dollar sign

Expanded text is not scanned again, so a variable whose value contains ``${`` is taken literally.
A lone ``$`` (``pa$word``) is left alone. Pure string logic; the loader passes ``os.environ``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_REFERENCE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


@dataclass(frozen=True)
class EnvProblem:
    """A reference that cannot be expanded, at character ``offset`` of the original string."""

    offset: int
    message: str


def expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[EnvProblem]]:
    """Return ``text`` with references replaced, and every reference that could not be.

    >>> expand_env("http://${HOST:-localhost}:${PORT}", {"PORT": "9001"})
    ('http://localhost:9001', [])
    """
    if "$" not in text:
        return text, []
    problems: list[EnvProblem] = []
    parts: list[str] = []
    end = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[end : match.start()])
        end = match.end()
        token = match.group(0)
        if token == "$${":
            parts.append("${")
            continue
        inner = match.group(1)
        if inner is None:
            problems.append(EnvProblem(match.start(), "'${' is not closed by '}'"))
            continue
        reference = _REFERENCE.fullmatch(inner)
        if reference is None or "${" in inner:
            problems.append(
                EnvProblem(
                    match.start(),
                    f"cannot read {token!r}: write ${{NAME}} or ${{NAME:-default}}, "
                    "or $${...} for a literal '${'",
                )
            )
            continue
        name, default = reference.group(1), reference.group(2)
        value = environ.get(name)
        if default is not None and not value:
            value = default
        if value is None:
            problems.append(
                EnvProblem(
                    match.start(),
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-default}})",
                )
            )
            continue
        parts.append(value)
    parts.append(text[end:])
    return "".join(parts), problems

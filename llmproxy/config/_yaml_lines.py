"""YAML text to plain Python values, remembering the line of every key and list item.

``yaml.safe_load`` forgets where values came from, and pydantic only knows key paths, so the loader
composes the node graph itself (nodes keep their marks) and builds the values from it, recording
``{("backends", 1, "url"): 42, ...}`` on the way. The same walk expands ``${VAR}`` references in
string scalars and rejects duplicate keys, which PyYAML would silently let the last one win.

Choices that differ from ``yaml.safe_load``, and why:

- Mapping keys are kept as the text written (``404:`` is the key ``"404"``, ``on:`` is ``"on"``):
  every config mapping is keyed by names, and YAML 1.1 would turn ``on``/``no`` into booleans.
- Dates and times stay text (``expires_at: 2025-12-31``): the model takes them as strings.
- An unquoted scalar that contained a reference is typed again after expansion, so
  ``port: ${PORT:-8000}`` is the integer 8000; a quoted one stays a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from llmproxy.config._env import expand_env
from llmproxy.config.errors import ConfigError, ConfigIssue, KeyPath, format_path

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


def read_yaml(
    text: str, source: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse ``text`` into a mapping and a map of key paths to 1-based lines.

    Raises :class:`ConfigError` for a syntax error, an empty file, a top level that is not a
    mapping, duplicate keys, unexpandable ``${...}`` references and unknown ``!tags`` — every one
    of the last three found in the file, not only the first.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        raise ConfigError([_syntax_issue(source, error)]) from None
    except yaml.YAMLError as error:
        raise ConfigError(
            [ConfigIssue(source, None, "", f"cannot read the YAML: {error}")]
        ) from None
    if root is None:
        raise ConfigError(
            [
                ConfigIssue(
                    source, None, "", "the file is empty; it needs at least a 'backends' list"
                )
            ]
        )
    if not isinstance(root, MappingNode):
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    _line(root),
                    "",
                    f"the top level must be a mapping of keys (listen:, backends:, ...), "
                    f"got {_kind(root)}",
                )
            ]
        )
    builder = _Builder(source, environ)
    data = builder.mapping(root, ())
    if builder.issues:
        builder.issues.sort(key=lambda issue: issue.line or 0)
        raise ConfigError(builder.issues)
    return data, builder.lines


def _syntax_issue(source: str, error: yaml.MarkedYAMLError) -> ConfigIssue:
    mark = error.problem_mark or error.context_mark
    message = error.problem or error.context or "invalid YAML"
    if error.context and error.problem and error.context_mark is not None:
        message += f" ({error.context} at line {error.context_mark.line + 1})"
    if mark is None:
        return ConfigIssue(source, None, "", f"invalid YAML: {message}")
    return ConfigIssue(source, mark.line + 1, "", f"invalid YAML: {message}", mark.column + 1)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode):
        return f"the value {node.value!r}"
    return "a mapping"


class _Builder:
    """One walk over the node graph, collecting values, lines and issues."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.lines: dict[KeyPath, int] = {}
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()
        self._resolver = Resolver()  # the one SafeLoader uses, to type expanded plain scalars
        self._merged: set[int] = set()  # mappings whose ``<<`` keys are already resolved
        self._open: set[int] = set()  # collections being built: an alias back to one is a loop

    def _problem(self, node: Node, path: KeyPath, message: str, line: int | None = None) -> None:
        self.issues.append(
            ConfigIssue(self.source, line or _line(node), format_path(path), message)
        )

    def value(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self._open:
            self._problem(node, path, "an alias refers back to its own anchor (a loop)")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return self.sequence(node, path)
            self._problem(node, path, f"unsupported YAML node {type(node).__name__}")
            return None
        finally:
            self._open.discard(id(node))

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != _MAP:
            self._problem(node, path, f"unsupported tag {node.tag!r} on a mapping")
        if id(node) not in self._merged:
            self._merged.add(id(node))
            self._check_duplicates(node, path)
            try:
                # Resolves ``<<: *defaults``: merged pairs first, so the mapping's own keys win.
                self._constructor.flatten_mapping(node)
            except ConstructorError as error:
                self._problem(node, path, str(error.problem))
                return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node, path, "a key must be a plain word, not a list or mapping")
                continue
            key = str(key_node.value)
            self.lines[(*path, key)] = _line(key_node)
            result[key] = self.value(value_node, (*path, key))
        return result

    def _check_duplicates(self, node: MappingNode, path: KeyPath) -> None:
        first_lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
                continue
            key = str(key_node.value)
            if key in first_lines:
                self._problem(
                    key_node,
                    path,
                    f"duplicate key {key!r} (first at line {first_lines[key]})",
                )
            else:
                first_lines[key] = _line(key_node)

    def sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        if node.tag != _SEQ:
            self._problem(node, path, f"unsupported tag {node.tag!r} on a list")
        items: list[Any] = []
        for index, item in enumerate(node.value):
            self.lines[(*path, index)] = _line(item)
            items.append(self.value(item, (*path, index)))
        return items

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR and "$" in node.value:
            node = self._expanded(node, path)
        if node.tag == _TIMESTAMP:
            return node.value
        try:
            return self._constructor.construct_object(node)
        except ConstructorError as error:
            self._problem(node, path, str(error.problem))
            return None

    def _expanded(self, node: ScalarNode, path: KeyPath) -> ScalarNode:
        text, problems = expand_env(node.value, self.environ)
        for problem in problems:
            line = _line(node)
            if node.style == "|":
                # A literal block starts on the line after its ``|``, one source line per line.
                line += 1 + node.value.count("\n", 0, problem.offset)
            self._problem(node, path, problem.message, line)
        tag = node.tag
        if node.style is None:
            # types-PyYAML leaves ``resolve`` unannotated; it returns the tag string.
            tag = str(self._resolver.resolve(ScalarNode, text, (True, False)))  # type: ignore[no-untyped-call]
        return ScalarNode(tag, text, node.start_mark, node.end_mark, style=node.style)

"""Load a config file into the typed :class:`~llmproxy.config.model.Config`, or explain why not.

The steps, each of which reports every problem it finds as ``file:line: key.path: message``:

1. read the file (a missing or unreadable file names the path and the OS reason);
2. parse the YAML keeping the line of every key, reject duplicate keys, and expand ``${VAR}`` /
   ``${VAR:-default}`` references in string values (:mod:`llmproxy.config._yaml_lines`);
3. validate against the model; pydantic's errors are translated into the operator's key names,
   lines and plain words (:mod:`llmproxy.config.errors`).

Usage::

    try:
        config = load_config("config.yaml")
    except ConfigError as error:
        print(error)  # one line per issue
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import ValidationError

from llmproxy.config._yaml_lines import read_yaml
from llmproxy.config.errors import ConfigError, ConfigIssue, issues_from_validation
from llmproxy.config.model import Config

__all__ = ["ConfigError", "load_config", "parse_config"]


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``.

    ``environ`` supplies ``${VAR}`` values; it defaults to ``os.environ``. Raises
    :class:`ConfigError` with every issue found.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            [ConfigIssue(source, None, "", f"cannot read the file: {reason}")]
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            [ConfigIssue(source, None, "", f"the file is not UTF-8 text: {error.reason}")]
        ) from None
    return parse_config(text, source, environ)


def parse_config(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config ``text``; ``source`` names it in error messages (usually the file path)."""
    data, lines = read_yaml(text, source, os.environ if environ is None else environ)
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(issues_from_validation(error, Config, source, lines)) from None

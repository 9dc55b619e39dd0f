"""``${VAR}`` expansion: values, defaults, escapes, typing after expansion, and errors."""

from __future__ import annotations

import textwrap

import pytest

from llmproxy.config._env import expand_env
from llmproxy.config.errors import ConfigError
from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config


def load(text: str, environ: dict[str, str]) -> Config:
    return parse_config(textwrap.dedent(text), "config.yaml", environ)


def problems(text: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, environ)
    return str(caught.value).splitlines()


def test_set_variable_is_substituted() -> None:
    """``${VAR}`` takes the variable's value."""
    assert expand_env("http://${HOST}:9001", {"HOST": "vllm-1"}) == ("http://vllm-1:9001", [])


def test_several_references_in_one_string() -> None:
    """Several references in one string are all expanded, defaults included."""
    text, found = expand_env("${A}-${B:-two}-${C}", {"A": "one", "C": "three"})
    assert (text, found) == ("one-two-three", [])


def test_default_used_when_unset_or_empty() -> None:
    """``${VAR:-default}`` falls back when VAR is unset or empty, as in the shell."""
    assert expand_env("${X:-d}", {})[0] == "d"
    assert expand_env("${X:-d}", {"X": ""})[0] == "d"
    assert expand_env("${X:-d}", {"X": "v"})[0] == "v"
    assert expand_env("${X:-}", {})[0] == ""


def test_dollar_dollar_escapes_a_reference() -> None:
    """``$${VAR}`` is a literal ``${VAR}``; a lone ``$`` is left alone."""
    assert expand_env("$${HOME} and pa$$word $5", {"HOME": "/root"}) == (
        "${HOME} and pa$$word $5",
        [],
    )


def test_expanded_text_is_not_expanded_again() -> None:
    """A value that itself contains ``${`` is taken literally."""
    assert expand_env("${A}", {"A": "${B}", "B": "no"}) == ("${B}", [])


def test_missing_variable_is_an_error_with_line_and_name() -> None:
    """An unset variable without a default names file:line, the key and the variable."""
    text = """\
    backends:
      - url: http://a
        api_key: ${VLLM_KEY}
    """
    assert problems(text, {}) == [
        "config.yaml:3: backends[0].api_key: environment variable VLLM_KEY is not set "
        "(set it, or give a default: ${VLLM_KEY:-default})"
    ]


def test_every_missing_variable_is_reported() -> None:
    """All unset variables are reported at once, each on its own line."""
    text = """\
    listen: ${LISTEN}
    backends:
      - url: ${URL_A}
    """
    found = problems(text, {})
    assert [line.split(": ")[0] for line in found] == ["config.yaml:1", "config.yaml:3"]
    assert "LISTEN" in found[0]
    assert "URL_A" in found[1]


def test_missing_variable_inside_block_scalar_points_at_its_line() -> None:
    """In a ``|`` block, the error names the line of the reference, not of the block start."""
    text = """\
    backends: [{url: http://a}]
    auth:
      pipeline:
        - name: s
          type: static
          lua_script: |
            local a = 1
            local b = "${MISSING}"
    """
    [message] = problems(text, {})
    assert message.startswith("config.yaml:8: auth.pipeline[0].lua_script: ")


def test_malformed_reference_is_an_error() -> None:
    """``${1X}`` or an unclosed ``${`` is reported rather than passed through."""
    assert expand_env("${1X}", {})[1][0].message.startswith("cannot read '${1X}'")
    assert expand_env("abc ${X", {})[1][0].message == "'${' is not closed by '}'"


def test_unquoted_expansion_is_typed_again() -> None:
    """``workers: ${N:-3}`` is the integer 3 and a duration default still parses."""
    config = load(
        """\
        server:
          workers: ${WORKERS:-3}
          read_timeout: ${READ_TIMEOUT:-10s}
          tls:
            enabled: ${TLS:-false}
        backends:
          - url: http://${HOST:-127.0.0.1}:${PORT}
            weight: ${WEIGHT}
        """,
        {"PORT": "9001", "WEIGHT": "7"},
    )
    assert config.server.workers == 3
    assert config.server.read_timeout == 10.0
    assert config.server.tls.enabled is False
    assert config.backends[0].url == "http://127.0.0.1:9001"
    assert config.backends[0].weight == 7


def test_quoted_expansion_stays_a_string() -> None:
    """A quoted ``"${N}"`` stays text, so a numeric secret is not turned into a number."""
    config = load(
        """\
        backends:
          - url: http://a
            api_key: "${KEY}"
            name: '${NAME:-007}'
        """,
        {"KEY": "12345"},
    )
    assert config.backends[0].api_key == "12345"
    assert config.backends[0].name == "007"


def test_unquoted_number_for_a_string_key_says_to_quote_it() -> None:
    """An unquoted numeric value becomes a number; the error says to quote it."""
    text = """\
    backends:
      - url: http://a
        name: ${NAME}
    """
    assert problems(text, {"NAME": "12345"}) == [
        "config.yaml:3: backends[0].name: expected a string, got 12345; "
        "put it in quotes to keep it as text"
    ]


def test_expanded_integer_still_type_checks() -> None:
    """A variable with a bad value is a normal type error on the key's line."""
    text = """\
    backends:
      - url: http://a
        weight: ${WEIGHT:-abc}
    """
    assert problems(text, {}) == [
        "config.yaml:3: backends[0].weight: expected an integer, got 'abc'"
    ]


def test_keys_are_not_expanded() -> None:
    """Only values are expanded: a ``${...}`` key stays as written (and is then unknown)."""
    [message] = problems("backends: [{url: http://a}]\n${SECTION}: {}\n", {"SECTION": "metrics"})
    assert message == "config.yaml:2: unknown key '${SECTION}'"

"""Validation errors read as ``file:line: key.path: message`` in the operator's words."""

from __future__ import annotations

import textwrap

import pytest

from llmproxy.config.errors import ConfigError, ConfigIssue, format_path
from llmproxy.config.loader import parse_config


def problems(text: str) -> list[str]:
    """The error lines ``parse_config`` reports for ``text`` (which must be invalid)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "config.yaml", {})
    return str(caught.value).splitlines()


def test_issue_format() -> None:
    """An issue prints as file:line: path: message, leaving out what it does not know."""
    assert (
        str(ConfigIssue("c.yaml", 42, "backends[1].url", "bad"))
        == "c.yaml:42: backends[1].url: bad"
    )
    assert str(ConfigIssue("c.yaml", None, "", "bad")) == "c.yaml: bad"
    assert str(ConfigIssue("c.yaml", 3, "", "bad", column=7)) == "c.yaml:3:7: bad"


def test_config_error_keeps_every_issue() -> None:
    """ConfigError carries the issues and prints one line per issue."""
    issues = [ConfigIssue("c", 1, "a", "x"), ConfigIssue("c", 2, "b", "y")]
    error = ConfigError(issues)
    assert error.issues == issues
    assert str(error) == "c:1: a: x\nc:2: b: y"


def test_format_path() -> None:
    """Key paths use dots and [index]; odd keys are quoted."""
    assert format_path(("backends", 1, "url")) == "backends[1].url"
    assert format_path(("backends", 0, "headers", "X-Tenant")) == "backends[0].headers.X-Tenant"
    assert format_path(("metadata", "a b")) == "metadata['a b']"


def test_unknown_key_suggests_the_closest_field_on_its_line() -> None:
    """A misspelt key is named with its line and the closest real key of that section."""
    text = """\
    listen: ":8000"
    backends:
      - url: http://a
        wieght: 10
    """
    assert problems(text) == [
        "config.yaml:4: backends[0]: unknown key 'wieght' (did you mean 'weight'?)"
    ]


def test_unknown_key_without_a_close_match() -> None:
    """A key that resembles nothing gets no suggestion."""
    assert problems("backends: [{url: http://a}]\nzzz: 1\n") == ["config.yaml:2: unknown key 'zzz'"]


def test_unknown_key_suggestion_uses_aliases() -> None:
    """Suggestions offer the key operators write (``global``), never the Python name."""
    text = """\
    backends: [{url: http://a}]
    rate_limit:
      globl:
        enabled: true
    """
    assert problems(text) == [
        "config.yaml:3: rate_limit: unknown key 'globl' (did you mean 'global'?)"
    ]


def test_rate_limit_global_path_uses_the_yaml_name() -> None:
    """Errors below ``rate_limit.global`` name it ``global``, not ``global_``."""
    text = """\
    backends: [{url: http://a}]
    rate_limit:
      global:
        burst_size: 0
        requests_per_second: lots
    """
    assert problems(text) == [
        "config.yaml:4: rate_limit.global.burst_size: must be at least 1, got 0",
        "config.yaml:5: rate_limit.global.requests_per_second: expected a number, got 'lots'",
    ]


def test_wrong_type() -> None:
    """A value of the wrong type says what was expected and what was found."""
    text = """\
    backends:
      - url: http://a
        weight: abc
        models: qwen
    health_check:
      enabled: maybe
    """
    assert problems(text) == [
        "config.yaml:3: backends[0].weight: expected an integer, got 'abc'",
        "config.yaml:4: backends[0].models: expected a list, got 'qwen'",
        "config.yaml:6: health_check.enabled: expected true or false, got 'maybe'",
    ]


def test_bad_enum_value_lists_the_choices() -> None:
    """A value outside a fixed set lists the allowed words and suggests the closest."""
    text = """\
    backends: [{url: http://a}]
    routing:
      load_balance_strategy: round_robbin
    """
    assert problems(text) == [
        "config.yaml:3: routing.load_balance_strategy: expected one of round_robin, "
        "least_connections, latency_based, load_aware, prefix_affinity, got 'round_robbin' "
        "(did you mean 'round_robin'?)"
    ]


def test_bad_url_scheme() -> None:
    """A backend url that is not http(s) is refused with the model's own message."""
    text = """\
    backends:
      - url: http://a
      - url: ftp://x
    """
    assert problems(text) == [
        "config.yaml:3: backends[1].url: scheme must be http or https, got 'ftp://x'"
    ]


def test_bad_url_port() -> None:
    """A url with an impossible port is refused at load time, not at the first request."""
    assert problems("backends: [{url: 'http://a:99999'}]\n") == [
        "config.yaml:1: backends[0].url: url has an invalid port: 'http://a:99999'"
    ]


def test_missing_backends() -> None:
    """A file without backends says the key is required."""
    assert problems("listen: ':8000'\n") == ["config.yaml: missing required key 'backends'"]


def test_empty_backends_list() -> None:
    """An empty backends list needs at least one entry."""
    assert problems("listen: ':8000'\nbackends: []\n") == [
        "config.yaml:2: backends: needs at least 1 entry, got 0"
    ]


def test_missing_required_key_points_at_its_parent() -> None:
    """A missing key is reported on the line of the entry that lacks it."""
    text = """\
    backends:
      - url: http://a
      - name: b
        weight: 2
    """
    assert problems(text) == ["config.yaml:3: backends[1]: missing required key 'url'"]


def test_no_length_noise_when_items_fail() -> None:
    """Only the item's error is shown, not pydantic's 'too short' for the emptied list."""
    assert problems("backends:\n  - url: ftp://x\n") == [
        "config.yaml:2: backends[0].url: scheme must be http or https, got 'ftp://x'"
    ]


def test_several_errors_are_reported_at_once_in_file_order() -> None:
    """Every problem is reported in one go, sorted by line."""
    text = """\
    server:
      workers: 0
      read_timeout: 10x
    backends:
      - url: ftp://x
        wieght: 3
    logging:
      level: verbose
    """
    assert problems(text) == [
        "config.yaml:2: server.workers: must be at least 1, got 0",
        "config.yaml:3: server.read_timeout: expected a duration like 10s, 500ms, 1m or 1h30m, "
        "got '10x'",
        "config.yaml:5: backends[0].url: scheme must be http or https, got 'ftp://x'",
        "config.yaml:6: backends[0]: unknown key 'wieght' (did you mean 'weight'?)",
        "config.yaml:8: logging.level: expected one of debug, info, warning, error, got 'verbose'",
    ]


def test_union_arms_become_one_message() -> None:
    """A ``str | int`` key given a list reports one error, not one per type tried."""
    text = """\
    backends: [{url: http://a}]
    api_keys:
      - key: k
        status: [1]
    """
    assert problems(text) == [
        "config.yaml:4: api_keys[0].status: expected a string or an integer, got a list"
    ]


def test_empty_section_says_it_has_no_value() -> None:
    """``tls:`` left empty (children commented out) is explained rather than called null."""
    text = """\
    backends: [{url: http://a}]
    server:
      tls:
    """
    assert problems(text) == [
        "config.yaml:3: server.tls: expected a mapping, got null; "
        "the key has no value: give it one or remove the key"
    ]


def test_section_validator_message_without_prefix() -> None:
    """A section's own rule is reported without pydantic's 'Value error, ' prefix."""
    text = """\
    backends: [{url: http://a}]
    auth:
      pipeline:
        - name: r
          type: redis
    """
    assert problems(text) == [
        "config.yaml:4: auth.pipeline[0]: provider type 'redis' needs a 'redis' section"
    ]


def test_fallback_naming_an_unknown_backend() -> None:
    """A fallback chain naming no configured backend points at that exact entry."""
    text = """\
    backends:
      - url: http://a
        name: a
      - url: http://b
    routing:
      fallback:
        - primary: a
          fallback: [http://b/, c]
    """
    assert problems(text) == [
        "config.yaml:8: routing.fallback[0].fallback[1]: 'c' is not the name or url of a backend"
    ]


def test_fallback_unknown_primary() -> None:
    """An unknown primary is reported on its own line."""
    text = """\
    backends: [{url: http://a}]
    routing:
      fallback:
        - primary: nope
          fallback: [http://a]
    """
    assert problems(text) == [
        "config.yaml:4: routing.fallback[0].primary: 'nope' is not the name or url of a backend"
    ]


def test_duplicate_backend_names() -> None:
    """Two backends with one name are reported on the second one's name."""
    text = """\
    backends:
      - {url: http://a, name: gpu}
      - url: http://b
        name: gpu
    """
    assert problems(text) == ["config.yaml:4: backends[1].name: two backends are named 'gpu'"]


def test_secret_values_are_not_echoed() -> None:
    """A wrongly typed password or key is reported without printing the secret itself."""
    text = """\
    backends:
      - url: http://a
        api_key: 987654321
    """
    assert problems(text) == [
        "config.yaml:3: backends[0].api_key: expected a string, got a number (hidden: a secret); "
        "put it in quotes to keep it as text"
    ]

"""Loading whole files: the seed example, YAML problems, and the file itself."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmproxy.config.errors import ConfigError
from llmproxy.config.loader import load_config, parse_config

FIXTURES = Path(__file__).parent / "fixtures"


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    """The error lines ``parse_config`` reports for ``text`` (which must be invalid)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "config.yaml", environ or {})
    return str(caught.value).splitlines()


def test_seed_example_loads_as_a_whole() -> None:
    """The seed guide's full config example, Chinese comments and all, loads unchanged."""
    config = load_config(FIXTURES / "seed.yaml", environ={})
    assert config.listen_address == ":8000"
    assert [b.url for b in config.backends] == ["http://vllm-1:8000", "http://vllm-2:8000"]
    assert config.backends[0].models == ("qwen-72b",)
    assert config.routing.retry.initial_wait == 1.0
    assert config.routing.retry.max_wait == 10.0
    assert config.routing.fallback[0].fallback == ("http://vllm-2:8000",)
    provider = config.auth.pipeline[0]
    assert provider.redis is not None
    assert provider.redis.key_pattern == "llmproxy:key:{api_key}"
    assert "余额不足" in provider.lua_script
    assert config.rate_limit.global_.burst_size == 200
    assert config.rate_limit.per_key.max_concurrent == 5
    assert config.usage_hook.timeout == 3.0
    assert config.api_keys[0].name == "生产 Key"
    assert config.api_keys[0].total_quota == 1_000_000


def test_minimal_file_gets_defaults() -> None:
    """A file with one backend is enough; everything else takes the model's defaults."""
    config = parse_config("backends:\n  - url: http://127.0.0.1:9001/\n")
    assert config.backends[0].url == "http://127.0.0.1:9001"
    assert config.listen_address == ":8000"
    assert config.routing.load_balance_strategy == "round_robin"


def test_config_is_frozen() -> None:
    """Assigning to a loaded config raises: reload builds a new one instead."""
    config = parse_config("backends:\n  - url: http://a\n")
    with pytest.raises(ValidationError):
        config.listen = ":9000"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.backends[0].weight = 5  # type: ignore[misc]


def test_file_not_found_names_path_and_reason(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path and the OS reason, not a traceback."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: cannot read the file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """Pointing at a directory reports the OS reason too."""
    with pytest.raises(ConfigError, match="cannot read the file: Is a directory"):
        load_config(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A file in another encoding is reported as such."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("listen: ':8000'  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_load_config_uses_path_as_source(tmp_path: Path) -> None:
    """Errors from load_config start with the file path as given."""
    path = tmp_path / "config.yaml"
    path.write_text("backends:\n  - url: ftp://x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:2: backends[0].url: scheme must be http or https, got 'ftp://x'"
    )


def test_yaml_syntax_error_has_line_and_column() -> None:
    """A YAML syntax error is reported with file:line:column and the parser's complaint."""
    [message] = problems(
        """\
        backends:
          - url: http://a
            weight: [1, 2
        listen: ":8000"
        """
    )
    assert message.startswith("config.yaml:4:")
    assert "invalid YAML" in message
    assert "flow sequence" in message


def test_tab_indentation_is_a_syntax_error() -> None:
    """Tabs, a classic YAML mistake, point at the offending line."""
    [message] = problems("backends:\n\t- url: http://a\n")
    assert message.startswith("config.yaml:2:1: invalid YAML:")


def test_empty_file() -> None:
    """An empty (or comment-only) file says what is missing."""
    assert problems("# nothing yet\n") == [
        "config.yaml: the file is empty; it needs at least a 'backends' list"
    ]


def test_top_level_must_be_a_mapping() -> None:
    """A list at the top level is refused with its line."""
    assert problems("\n- url: http://a\n") == [
        "config.yaml:2: the top level must be a mapping of keys (listen:, backends:, ...), "
        "got a list"
    ]


def test_duplicate_key_reports_both_lines() -> None:
    """A key written twice in one mapping is an error naming both lines (YAML would keep one)."""
    text = """\
    backends:
      - url: http://a
        weight: 1
        name: a
        weight: 2
    """
    assert problems(text) == [
        "config.yaml:5: backends[0]: duplicate key 'weight' (first at line 3)"
    ]


def test_duplicate_top_level_section() -> None:
    """Two ``backends:`` sections are reported, not silently merged or overwritten."""
    text = "backends:\n  - url: http://a\nlisten: ':1'\nbackends: []\n"
    assert problems(text) == ["config.yaml:4: duplicate key 'backends' (first at line 1)"]


def test_merge_keys_and_anchors_work() -> None:
    """``<<: *first`` copies a backend's keys; its own keys win and are not called duplicates."""
    config = parse_config(
        textwrap.dedent(
            """\
            backends:
              - &first {url: http://a, weight: 3, connect_timeout: 2s}
              - <<: *first
                url: http://b
                weight: 7
            """
        )
    )
    assert [(b.url, b.weight, b.connect_timeout) for b in config.backends] == [
        ("http://a", 3, 2.0),
        ("http://b", 7, 2.0),
    ]


def test_dates_stay_text() -> None:
    """``expires_at: 2025-12-31`` is kept as written rather than becoming a date object."""
    config = parse_config(
        "backends: [{url: http://a}]\napi_keys:\n  - {key: k, expires_at: 2025-12-31}\n"
    )
    assert config.api_keys[0].expires_at == "2025-12-31"


def test_yaml_11_words_as_keys_stay_keys() -> None:
    """Keys are the text written: a header named ``on`` is not turned into ``True``."""
    config = parse_config("backends:\n  - url: http://a\n    headers: {on: 'x', 404: 'y'}\n")
    assert config.backends[0].headers == {"on": "x", "404": "y"}


def test_unknown_tag_is_reported() -> None:
    """A custom ``!tag`` is an error with its line, not a crash."""
    assert problems("backends:\n  - url: !secret http://a\n") == [
        "config.yaml:2: backends[0].url: could not determine a constructor for the tag '!secret'"
    ]


def test_alias_loop_is_reported() -> None:
    """An alias that refers back into its own anchor is an error, not a recursion crash."""
    [message] = problems("backends: &loop\n  - *loop\n")
    assert message == "config.yaml:1: backends[0]: an alias refers back to its own anchor (a loop)"


def test_workers_auto_is_one_per_usable_cpu() -> None:
    """``server.workers: auto`` counts the CPUs this process may run on (a container's cpuset,
    not the host's cores); a word that is not auto is refused with file:line."""
    config = parse_config('backends: [{url: "http://127.0.0.1:1"}]\nserver: {workers: auto}\n')
    assert config.server.workers == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="workers"):
        parse_config('backends: [{url: "http://127.0.0.1:1"}]\nserver: {workers: many}\n')

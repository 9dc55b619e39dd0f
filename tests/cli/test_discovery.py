"""Finding the daemon: the CLI computes the socket the daemon binds, from the same config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy.cli.connection import (
    Target,
    TargetError,
    check_admin_url,
    discover_socket,
    open_client,
)
from llmproxy.config.model import AdminConfig
from llmproxy.daemon.admin_socket import admin_socket_path

BACKENDS = "backends: [{url: 'http://127.0.0.1:9001'}]\n"


def test_no_config_uses_the_default_for_a_daemon_started_here(tmp_path: Path) -> None:
    assert discover_socket(None, {}, tmp_path) == tmp_path / "run" / "admin.sock"
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert discover_socket(None, env, tmp_path) == Path("/run/user/1000/llmproxy/admin.sock")


def test_no_config_matches_the_daemons_own_default(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    assert discover_socket(None, env, tmp_path) == admin_socket_path(AdminConfig(), tmp_path, env)


def test_config_yaml_in_cwd_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(BACKENDS + "admin: {socket: sockets/a.sock}\n")
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert discover_socket(None, env, tmp_path) == tmp_path / "sockets" / "a.sock"


def test_socket_is_relative_to_the_config_files_directory(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "llmproxy.yaml"
    config.parent.mkdir()
    config.write_text(BACKENDS + "admin: {socket: run/x.sock}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = tmp_path / "etc" / "run" / "x.sock"
    assert discover_socket(config, {}, elsewhere) == expected
    # A relative --config is relative to the working directory, like every other path argument.
    assert discover_socket(Path("../etc/llmproxy.yaml"), {}, elsewhere).resolve() == expected


def test_config_without_admin_section_uses_xdg_then_its_directory(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(BACKENDS)
    assert discover_socket(config, {}, Path("/")) == tmp_path / "run" / "admin.sock"
    xdg = {"XDG_RUNTIME_DIR": "/run/user/7"}
    assert discover_socket(config, xdg, Path("/")) == Path("/run/user/7/llmproxy/admin.sock")


def test_explicit_config_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"nope\.yaml.*cannot read the file"):
        discover_socket(tmp_path / "nope.yaml", {}, tmp_path)


def test_broken_config_still_finds_the_socket(tmp_path: Path) -> None:
    """The file being edited may be wrong: reload must still reach the daemon to say so."""
    config = tmp_path / "c.yaml"
    config.write_text(
        BACKENDS + "routing: {load_balance_strategy: bogus}\nadmin: {socket: /tmp/x.sock}\n"
    )
    assert discover_socket(config, {}, tmp_path) == Path("/tmp/x.sock")


def test_secrets_missing_from_the_operators_shell_do_not_hide_the_socket(
    tmp_path: Path,
) -> None:
    """The daemon's environment holds ${REDIS_PASSWORD}; the operator's shell does not."""
    config = tmp_path / "c.yaml"
    config.write_text(
        BACKENDS
        + "usage_hook: {enabled: true, url: 'http://x', secret: '${HOOK_SECRET}'}\n"
        + "admin: {socket: /tmp/y.sock}\n"
    )
    assert discover_socket(config, {}, tmp_path) == Path("/tmp/y.sock")


@pytest.mark.parametrize(
    "text",
    [
        "backends: [\n",  # not YAML
        BACKENDS + "admin: {sockett: x}\n",  # a typo in the admin section itself
        BACKENDS + "admin: {socket: '${NOT_SET_ANYWHERE}'}\n",  # an unset variable
    ],
)
def test_config_whose_admin_section_cannot_be_read_is_an_error(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(TargetError, match=r"c\.yaml: the config is invalid\n.*c\.yaml"):
        discover_socket(config, {}, tmp_path)


def test_admin_disabled_is_an_error_not_a_wait(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(BACKENDS + "admin: {enabled: false}\n")
    with pytest.raises(TargetError, match=r"admin\.enabled is false"):
        discover_socket(config, {}, tmp_path)


def test_socket_option_skips_the_config(tmp_path: Path) -> None:
    target = Target(config=tmp_path / "missing.yaml", socket=tmp_path / "s.sock")
    with open_client(target, {}, tmp_path) as client:
        assert client.where == str(tmp_path / "s.sock")
        assert client.over_socket


def test_admin_url_skips_the_config(tmp_path: Path) -> None:
    target = Target(config=tmp_path / "missing.yaml", admin_url="http://10.0.0.5:9090")
    with open_client(target, {}, tmp_path) as client:
        assert client.where == "http://10.0.0.5:9090"
        assert not client.over_socket


def test_socket_and_admin_url_together_are_refused(tmp_path: Path) -> None:
    target = Target(socket=tmp_path / "s.sock", admin_url="http://x:1")
    with pytest.raises(TargetError, match="not both"):
        open_client(target, {}, tmp_path)


@pytest.mark.parametrize("url", ["10.0.0.5:9090", "ftp://x", "http://", "unix:///x.sock"])
def test_admin_url_must_be_http(url: str) -> None:
    with pytest.raises(TargetError, match="--admin-url"):
        check_admin_url(url)
    assert check_admin_url("https://admin.example:9090") == "https://admin.example:9090"

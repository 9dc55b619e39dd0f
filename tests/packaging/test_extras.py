"""Drivers as extras: pyproject.toml and llmproxy/extras.py agree, the package imports without
them, and a config that needs a missing one is refused naming the extra to install."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import llmproxy
from llmproxy.config.loader import parse_config
from llmproxy.extras import EXTRAS, MissingExtra, extras_needed, installed, require, require_for
from tests.packaging.without_drivers import HIDDEN, hide_drivers

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Modules that exist only to talk to PostgreSQL: imported once a postgresql:// URL is chosen.
POSTGRES_ONLY = {"llmproxy.pg_schema", "llmproxy.keystore.postgres", "llmproxy.usage.postgres"}

EVERY_DRIVER = """
backends: [{url: "http://127.0.0.1:9"}]
usage: {database: "postgresql://app:hunter2@127.0.0.1/usage"}
rate_limit: {enabled: true, storage: redis, redis: {addr: "127.0.0.1:6379"}}
auth:
  enabled: true
  builtin_db: "postgresql://app:hunter2@127.0.0.1/keys"
  pipeline:
    - {name: cache, type: redis, redis: {addr: "127.0.0.1:6379"}}
    - {name: legacy, type: database, database: {driver: mariadb, dsn: "mysql://a:b@h/db"}}
    - {name: billing, type: database, database: {driver: postgres, dsn: "postgres://h/db"}}
    - {name: local, type: database, database: {driver: sqlite, dsn: "keys.db"}}
    - {name: spare, type: redis, enabled: false, redis: {addr: "127.0.0.1:6379"}}
"""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower()


def test_pyproject_extras_install_what_extras_py_names() -> None:
    """Each driver extra in pyproject.toml installs exactly the modules EXTRAS lists, `all` is
    every one of them, and the base install has none."""
    optional = PROJECT["optional-dependencies"]
    for name, extra in EXTRAS.items():
        assert {_requirement_name(r) for r in optional[name]} == set(extra.modules), name
    assert optional["all"] == [f"llmproxy[{','.join(EXTRAS)}]"]
    base = {_requirement_name(r) for r in PROJECT["dependencies"]}
    assert not base & HIDDEN
    assert any("llmproxy[all" in r for r in optional["dev"]), "make test installs every driver"


def test_a_config_names_the_extras_it_needs() -> None:
    """Every place a config names a server is mapped to its extra; disabled providers and
    SQLite need none."""
    config = parse_config(EVERY_DRIVER)
    assert extras_needed(config) == [
        ("postgres", "auth.builtin_db"),
        ("redis", "auth.pipeline[0] (redis provider 'cache')"),
        ("mysql", "auth.pipeline[1] (database provider 'legacy')"),
        ("postgres", "auth.pipeline[2] (database provider 'billing')"),
        ("redis", "rate_limit.storage"),
        ("postgres", "usage.database"),
    ]
    assert extras_needed(parse_config('backends: [{url: "http://127.0.0.1:9"}]\n')) == []


def test_installed_drivers_pass_and_missing_ones_name_the_pip_command() -> None:
    """With the dev install every extra is present; with the drivers hidden the error names
    the key, the server and `pip install 'llmproxy[...]'`."""
    config = parse_config(EVERY_DRIVER)
    assert all(installed(name) for name in EXTRAS)
    require_for(config)  # nothing missing here
    saved = {n: m for n, m in sys.modules.items() if n.partition(".")[0] in HIDDEN}
    finders = list(sys.meta_path)
    try:
        hide_drivers()
        with pytest.raises(MissingExtra) as caught:
            require("postgres", "usage.database")
        assert str(caught.value) == (
            "usage.database needs the PostgreSQL driver, which is not installed: "
            "pip install 'llmproxy[postgres]'"
        )
        with pytest.raises(MissingExtra) as caught:
            require_for(config)
        assert "pip install 'llmproxy[mysql]'" in str(caught.value)
        assert "hunter2" not in str(caught.value)
    finally:
        sys.meta_path[:] = finders
        sys.modules.update(saved)


def _without_drivers(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.packaging.without_drivers", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200"},
    )


def test_every_module_but_the_postgres_ones_imports_without_drivers() -> None:
    """A base install imports the whole package (gateway, daemon, CLI, limits, providers);
    only the PostgreSQL stores need asyncpg, and they are imported when chosen."""
    code = (
        "import importlib, pkgutil, llmproxy\n"
        "from tests.packaging.without_drivers import hide_drivers\n"
        "hide_drivers()\n"
        "for m in pkgutil.walk_packages(llmproxy.__path__, 'llmproxy.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        try: importlib.import_module(m.name)\n"
        "        except ModuleNotFoundError as e: print(m.name, e.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    failed = dict(line.split() for line in result.stdout.splitlines())
    assert failed == dict.fromkeys(POSTGRES_ONLY, "asyncpg")
    # and the test itself sees every module (no vacuous pass)
    assert len(list(pkgutil.walk_packages(llmproxy.__path__, "llmproxy."))) > 100
    assert importlib.import_module("llmproxy.extras")


@pytest.mark.parametrize("command", [["config", "check"], ["serve", "--config"]])
def test_a_config_needing_a_missing_driver_is_refused_naming_the_extra(
    tmp_path: Path, command: list[str]
) -> None:
    """`config check` and `serve` refuse it with the pip command for each missing driver: no
    traceback, no password, exit 2 for serve (a config error)."""
    config = tmp_path / "gw.yaml"
    config.write_text(EVERY_DRIVER)
    result = _without_drivers(*command, str(config), cwd=tmp_path)
    assert result.returncode == 2 if command[0] == "serve" else result.returncode != 0
    for extra in ("postgres", "mysql", "redis"):
        assert f"pip install 'llmproxy[{extra}]'" in result.stderr
    assert "usage.database needs the PostgreSQL driver" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "hunter2" not in result.stderr + result.stdout


def test_a_base_install_checks_a_sqlite_and_memory_config(tmp_path: Path) -> None:
    """The default config (SQLite stores, memory limits) needs no driver."""
    config = tmp_path / "gw.yaml"
    config.write_text('backends: [{url: "http://127.0.0.1:9"}]\n')
    result = _without_drivers("config", "check", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK")

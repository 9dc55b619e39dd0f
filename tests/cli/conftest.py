"""Fixtures of the CLI tests: a fake admin API on a socket, and a runner with a clean env."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from llmproxy.cli.main import app
from tests.cli.fake_admin import FakeAdmin, fake_admin, short_socket_dir

Invoke = Callable[..., Result]

CLEAN_ENV = {"LLMPROXY_CONFIG": None, "LLMPROXY_ADMIN_TOKEN": None, "COLUMNS": None}
"""The operator's own settings must not leak into a test (None removes a variable)."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory whose socket paths fit the 107-byte limit (tmp_path's may not)."""
    directory = short_socket_dir()
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def admin() -> Iterator[FakeAdmin]:
    with fake_admin() as fake:
        yield fake


@pytest.fixture
def cli() -> Invoke:
    """``cli(*args, input=None)``: run ``llmproxy ARGS`` in-process; stdout and stderr apart."""

    def invoke(*args: str, input: str | None = None) -> Result:
        result = CliRunner().invoke(app, list(args), input=input, env=CLEAN_ENV)
        # A crash also exits 1, the code of a refusal: never let one pass for the other.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke

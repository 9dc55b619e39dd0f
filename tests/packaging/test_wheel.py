"""The package as users install it: the wheel, built from the checkout and installed into a
fresh virtualenv outside it with its base dependencies only (from the package index; pip's cache
makes a rerun quick), serves the demo, hands out its completions and example config, has man
pages where ``man`` looks, and names the extra a PostgreSQL config needs."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import httpx
import openai
import pytest

from llmproxy.cli.shipped import COMPLETION_FILES
from tests.deployments.test_image_native import (
    build_context,
    build_wheel,
    clean_env,
    fresh_venv,
    site_packages,
)
from tests.e2e.daemon import free_port, stop, wait_until_up

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    **{f"completions/{name}": REPO / "completions" / name for name in COMPLETION_FILES.values()},
    **{f"man/{page.name}": page for page in sorted((REPO / "man").glob("*.1"))},
    "config.yaml.example": REPO / "config.yaml.example",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(wheel, venv)``: the wheel of the checkout, installed with its base dependencies into
    a virtualenv in a temporary directory."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(build_context(root), root / "dist", deps=False)
    venv = fresh_venv(root / "venv", with_pip=True)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return wheel, venv


def _env(venv: Path, **extra: str) -> dict[str, str]:
    """A shell's environment with the venv's bin first on PATH, as after `activate`."""
    env = clean_env(**extra)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(
    venv: Path, *args: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "llmproxy"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=_env(venv),
    )


@pytest.mark.timeout(900)
def test_the_wheel_carries_the_committed_completions_man_pages_and_example_slow(
    installed: tuple[Path, Path],
) -> None:
    """The wheel's package data and its share/ data files are the committed files, byte for
    byte, and no driver is a base requirement."""
    wheel, venv = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for relative, source in SHIPPED.items():
            assert archive.read(f"llmproxy/_data/{relative}") == source.read_bytes(), relative
        data = next(n for n in names if n.endswith(".data/data/share/man/man1/llmproxy.1"))
        prefix = data.removesuffix("share/man/man1/llmproxy.1")
        for page in (REPO / "man").glob("*.1"):
            assert archive.read(f"{prefix}share/man/man1/{page.name}") == page.read_bytes()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for driver in ("asyncpg", "aiomysql", "redis"):
        assert all("extra ==" in line for line in requires if f" {driver}" in line), driver
    assert "Provides-Extra: all" in metadata
    for driver in ("asyncpg", "aiomysql", "pymysql", "redis", "hiredis"):
        assert not list(site_packages(venv).glob(f"{driver}*")), f"{driver} in a base install"


@pytest.mark.timeout(900)
def test_the_installed_cli_hands_out_what_it_ships_slow(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`completions bash` prints the committed script, `completions fish --install` writes it
    where fish looks, `config example | config check -` passes, and `man -w` finds the page
    through PATH alone (man-db's ../share/man rule) and through MANPATH."""
    _, venv = installed
    bash = _run(venv, "completions", "bash", cwd=tmp_path)
    assert bash.returncode == 0, bash.stderr
    assert bash.stdout == (REPO / "completions" / "llmproxy.bash").read_text()

    home = tmp_path / "home"
    fish = subprocess.run(
        [str(venv / "bin" / "llmproxy"), "completions", "fish", "--install"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**_env(venv), "HOME": str(home)},
    )
    assert fish.returncode == 0, fish.stderr
    target = home / ".config" / "fish" / "completions" / "llmproxy.fish"
    assert target.read_text() == (REPO / "completions" / "llmproxy.fish").read_text()
    assert str(target) in fish.stderr

    example = _run(venv, "config", "example", cwd=tmp_path)
    assert example.stdout == (REPO / "config.yaml.example").read_text()
    checked = _run(venv, "config", "check", "-", cwd=tmp_path, stdin=example.stdout)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("<stdin>: OK")

    page = venv / "share" / "man" / "man1" / "llmproxy.1"
    assert page.read_bytes() == (REPO / "man" / "llmproxy.1").read_bytes()
    for extra in ({}, {"MANPATH": str(venv / "share" / "man")}):
        found = subprocess.run(
            ["man", "-w", "llmproxy-config-check"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=_env(venv, **extra),
        )
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip() == str(venv / "share/man/man1/llmproxy-config-check.1")


@pytest.mark.timeout(900)
def test_the_installed_demo_answers_a_chat_request_slow(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`llmproxy serve --demo` from the base install answers the openai SDK."""
    _, venv = installed
    port, mock_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            *(str(venv / "bin" / "llmproxy"), "serve", "--demo"),
            *("--listen", f"127.0.0.1:{port}", "--mock-port", str(mock_port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=_env(venv, PYTHONUNBUFFERED="1"),
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, within=60)
        assert process.stdout is not None
        key = ""
        for _ in range(50):
            line = process.stdout.readline().decode()
            if "LLMPROXY_KEY=" in line:
                key = line.split("LLMPROXY_KEY=", 1)[1].strip()
                break
        assert key, "the demo printed no key"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        reply = client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        stop(process)
        if process.stdout:
            process.stdout.close()


@pytest.mark.timeout(900)
def test_a_postgres_config_on_the_base_install_names_the_extra_slow(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`config check` and `serve` refuse a postgresql:// usage store with the pip command,
    not an ImportError traceback."""
    _, venv = installed
    config = tmp_path / "gw.yaml"
    config.write_text(
        'backends: [{url: "http://127.0.0.1:9"}]\n'
        'usage: {database: "postgresql://app:hunter2@127.0.0.1/usage"}\n'
    )
    for command in (["config", "check"], ["serve", "--config"]):
        result = _run(venv, *command, str(config), cwd=tmp_path)
        assert result.returncode != 0
        assert (
            "usage.database needs the PostgreSQL driver, which is not installed: "
            "pip install 'llmproxy[postgres]'"
        ) in result.stderr
        assert "Traceback" not in result.stderr
        assert "hunter2" not in result.stderr + result.stdout

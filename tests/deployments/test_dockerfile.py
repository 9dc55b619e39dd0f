"""deployments/Dockerfile and .dockerignore, read: stages, user, paths, ports, COPY sources."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from llmproxy.config.loader import parse_config
from llmproxy.daemon.listen import parse_listen
from tests.deployments.common import (
    COMPOSE_CONFIG,
    KUBERNETES,
    REPO,
    dockerfile,
    healthcheck_command,
    image_command,
    llmproxy_owned_dirs,
)

CONFIG_PATH = "/etc/llmproxy/config.yaml"


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """``(exclude, pattern)`` lines of .dockerignore, in order."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((not negated, line.lstrip("!").strip("/")))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    # Docker matches a pattern against the path and each of its parent directories.
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
    regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
    return any(re.fullmatch(regex, candidate) for candidate in candidates)


def in_context(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative to the repository) into the build context."""
    included = True
    for exclude, pattern in dockerignore_patterns():
        if _matches(pattern, path):
            included = not exclude
    return included


def copy_sources() -> list[str]:
    """The sources of every ``COPY`` from the build context (not ``--from``)."""
    sources = []
    for stage in dockerfile().stages:
        for instruction in stage.all("COPY"):
            words = instruction.args.split()
            assert not any(w.startswith("--from") for w in words), "COPY --from: use RUN --mount"
            sources += words[:-1]
    return sources


def test_two_stages_on_the_slim_python_the_project_requires() -> None:
    parsed = dockerfile()
    assert len(parsed.stages) == 2
    assert parsed.stages[0].name == "build"
    version = parsed.args["PYTHON_VERSION"]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={version}"
    for stage in parsed.stages:
        assert stage.base == "python:${PYTHON_VERSION}-slim"


def test_wheel_built_in_the_first_stage_and_installed_offline_in_the_second() -> None:
    parsed = dockerfile()
    build_runs = " ".join(i.args for i in parsed.stage("build").all("RUN"))
    assert 'pip wheel --wheel-dir /wheels ".[all]"' in build_runs  # every driver extra
    (install,) = [i.args for i in parsed.final.all("RUN") if "pip install" in i.args]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install
    assert 'pip install --no-index --find-links /wheels "llmproxy[all]"' in install
    assert install.rstrip().endswith("llmproxy version")  # the build fails if it cannot start


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    sources = copy_sources()
    # The package, and what its wheel ships (llmproxy/_data links to them).
    assert set(sources) == {
        "pyproject.toml",
        "README.md",
        "llmproxy",
        "completions",
        "man",
        "config.yaml.example",
    }
    for source in sources:
        assert (REPO / source).exists(), source
        assert in_context(source), f"{source} is excluded by .dockerignore"
    # pyproject.toml's readme must be in the context, or the wheel does not build
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["readme"] in sources
    assert in_context("llmproxy/gateway/app.py")
    assert in_context("llmproxy/py.typed")
    for link in (REPO / "llmproxy" / "_data").iterdir():
        assert in_context(str(link.resolve().relative_to(REPO))), f"{link} points out of context"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "run/admin.sock",
        "llmproxy-usage.db",
        "llmproxy/__pycache__/app.cpython-311.pyc",
        "llmproxy.egg-info/PKG-INFO",
        "tests/harness.py",
        "bench/results/x.json",
        "config.yaml",
    ):
        assert not in_context(path), path


def test_runs_as_a_numeric_non_root_user_matching_kubernetes() -> None:
    final = dockerfile().final
    user = final.one("USER").args
    assert user == "${UID}:${UID}"
    uid = next(i.args for i in final.all("ARG") if i.args.startswith("UID=")).split("=")[1]
    assert int(uid) >= 1000
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsUser"] == pod["runAsGroup"] == int(uid)
    assert pod["runAsNonRoot"] is True


def test_serves_the_documented_config_path_on_the_exposed_port() -> None:
    final = dockerfile().final
    assert image_command() == ["llmproxy", "serve", "--config", CONFIG_PATH]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "llmproxy" in scripts
    env = final.env()
    assert env["LLMPROXY_CONFIG"] == CONFIG_PATH  # the CLI in `docker exec` finds the daemon
    assert env["PATH"].startswith("/opt/llmproxy/bin:")
    assert final.one("EXPOSE").args == "8000"
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    config = parse_config(
        COMPOSE_CONFIG.read_text(),
        str(COMPOSE_CONFIG),
        {"REDIS_PASSWORD": "", "POSTGRES_PASSWORD": "", "USAGE_HOOK_SECRET": ""},
    )
    assert parse_listen(config.listen_address)[1] == 8000
    assert final.one("WORKDIR").args == "/var/lib/llmproxy"


def test_healthcheck_asks_health_on_the_exposed_port_without_curl() -> None:
    final = dockerfile().final
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<HEALTHCHECK>", "exec")  # valid Python
    assert "urllib.request" in command[2]
    assert "LLMPROXY_HEALTH_URL" in command[2]
    assert final.env()["LLMPROXY_HEALTH_URL"] == "http://127.0.0.1:8000/health"
    options = final.one("HEALTHCHECK").args
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options


def test_state_directories_belong_to_the_user() -> None:
    assert llmproxy_owned_dirs() == {
        Path("/var/lib/llmproxy"),
        Path("/run/llmproxy"),
        Path("/etc/llmproxy/run"),
    }
    assert dockerfile().final.one("VOLUME").exec_form == ["/var/lib/llmproxy"]

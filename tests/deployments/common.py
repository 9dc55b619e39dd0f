"""Readers for the files in ``deployments/``: the Dockerfile, compose interpolation, ``${ENV}``
references, and the places a config makes the gateway write to."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmproxy.config._env import expand_env
from llmproxy.config.model import Config
from llmproxy.daemon.admin_socket import admin_socket_path
from llmproxy.dsn import is_postgres_url

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = REPO / "deployments"
DOCKERFILE = DEPLOYMENTS / "Dockerfile"
COMPOSE_FILE = DEPLOYMENTS / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOYMENTS / "compose" / "config.yaml"
KUBERNETES = DEPLOYMENTS / "kubernetes"
SYSTEMD = DEPLOYMENTS / "systemd"

_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


_COMMENT = re.compile(r"(^|\s)#.*$", re.MULTILINE)


def env_references(text: str) -> dict[str, bool]:
    """Every ``${NAME}`` in ``text`` outside comments, mapped to whether it has a ``:-default``."""
    found: dict[str, bool] = {}
    for match in _REFERENCE.finditer(_COMMENT.sub("", text)):
        found[match.group(1)] = found.get(match.group(1), False) or match.group(2) is not None
    return found


def required_env(text: str) -> set[str]:
    """The ``${NAME}`` references without a default: unset, they make the config invalid."""
    return {name for name, has_default in env_references(text).items() if not has_default}


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's ``${NAME:-default}`` interpolation (the subset the files use)."""
    expanded, problems = expand_env(value, environ)
    assert not problems, f"{value!r}: {problems}"
    return expanded


# -- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    @property
    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (``CMD ["a", "b"]``)."""
        value = json.loads(self.args)
        assert isinstance(value, list)
        assert all(isinstance(item, str) for item in value)
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name or self.base}"
        return found[0]

    def env(self) -> dict[str, str]:
        """The stage's ``ENV`` values (``KEY=value`` pairs), in order."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {instruction.args!r}: write KEY=value"
                values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1].strip() + " "
            continue
        current += stripped
        if current:
            lines.append(current)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> Dockerfile:
    """The Dockerfile's global ``ARG`` defaults and its stages with their instructions."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(args, stages)


def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def image_command() -> list[str]:
    """What the image runs by default: ENTRYPOINT + CMD."""
    final = dockerfile().final
    return final.one("ENTRYPOINT").exec_form + final.one("CMD").exec_form


def healthcheck_command() -> list[str]:
    """The exec form after ``CMD`` in the final stage's ``HEALTHCHECK``."""
    args = dockerfile().final.one("HEALTHCHECK").args
    _options, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK must run a command"
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(item) for item in value]


def llmproxy_owned_dirs() -> set[Path]:
    """Directories the image creates for its user (``install -d -o llmproxy ...``)."""
    owned: set[Path] = set()
    for run in dockerfile().final.all("RUN"):
        for command in run.args.split("&&"):
            words = shlex.split(command)
            owner = words[words.index("-o") + 1] if "-o" in words else None
            if words[:2] == ["install", "-d"] and owner == "llmproxy":
                owned |= {Path(w) for w in words if w.startswith("/")}
    return owned


# -- compose ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_environment(service: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment`` (mapping form) after interpolation from ``environ``."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "write environment as a mapping"
    return {str(key): interpolate(str(value), environ) for key, value in env.items()}


# -- what a config writes ----------------------------------------------------------------------


def written_dirs(config: Config, base_dir: Path) -> dict[str, Path]:
    """The directories the gateway creates files in with ``config`` (config file in ``base_dir``).

    The admin socket is placed as in a service without ``XDG_RUNTIME_DIR`` (containers, systemd
    system services).
    """
    dirs: dict[str, Path] = {}
    if config.usage.enabled and not is_postgres_url(config.usage.database):
        dirs["usage.database"] = (base_dir / config.usage.database).parent
    types = {entry.type for entry in config.auth.pipeline if entry.enabled}
    builtin = config.auth.enabled and ("builtin" in types or config.auth.storage == "builtin")
    if builtin and not is_postgres_url(config.auth.builtin_db):
        dirs["auth.builtin_db"] = (base_dir / config.auth.builtin_db).parent
    if config.admin.enabled:
        dirs["admin.socket"] = admin_socket_path(config.admin, base_dir, {}).parent
    if config.server.workers > 1:
        dirs["server.workers (metrics files)"] = base_dir / "run" / "prometheus"
    return dirs


def under(path: Path, roots: set[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)

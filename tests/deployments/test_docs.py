"""The operator docs say only what is true of the code: every ``llmproxy`` command and option they
show exists, every dotted config key resolves in the config model, every metric is exported, every
relative link resolves, every YAML block loads (configs with the config loader, their Lua compiled
in the sandbox) and the auth recipes decide as the text says when run on sample data."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
import typer.main
import yaml
from pydantic import BaseModel
from typer._click import Command
from typer.core import TyperGroup as Group

from llmproxy.auth.keydata import KeyLimits
from llmproxy.auth.lua import LuaSandbox
from llmproxy.cli.main import app
from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config
from llmproxy.daemon.runtime import runtime_problem
from llmproxy.gateway import limits_step
from llmproxy.keystore import KeyStore
from tests.deployments.common import REPO, env_references
from tests.metrics.test_deployments import exported_samples

OPERATOR_DOCS = (
    REPO / "README.md",
    REPO / "docs" / "auth-pipeline.md",
    REPO / "docs" / "operations.md",
    REPO / "deployments" / "README.md",
    REPO / "deployments" / "kubernetes" / "README.md",
)
LINKED_DOCS = (*OPERATOR_DOCS, REPO / "docs" / "architecture.md")
AUTH_DOC = REPO / "docs" / "auth-pipeline.md"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
PLACEHOLDER_BACKEND = {"url": "http://127.0.0.1:9001"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SHELL = {"sh", "bash", "shell", "console", ""}
FILE_SUFFIXES = (".db", ".yaml", ".yml", ".md", ".py", ".lua", ".json", ".jsonl", ".sock", ".1")


def blocks(path: Path, *languages: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang in languages]


def inline_code(path: Path) -> list[str]:
    return INLINE.findall(FENCE.sub("", path.read_text()))


def replay_is_registered() -> bool:
    return ("replay",) in commands()


# -- the command tree ---------------------------------------------------------------------------


def commands() -> dict[tuple[str, ...], Command]:
    tree: dict[tuple[str, ...], Command] = {}

    def walk(command: Command, path: tuple[str, ...]) -> None:
        tree[path] = command
        if isinstance(command, Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return tree


def options_of(command: Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def shell_segments(text: str) -> list[list[str]]:
    """Simple commands of a shell snippet, as word lists (continuations joined, comments cut)."""
    text = text.replace("\\\n", " ")
    segments = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"&&|\|\||[|;]|\$\(|\)", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            if words:
                segments.append(words)
    return segments


def llmproxy_invocations(words: list[str]) -> list[list[str]]:
    """The argument lists after each ``llmproxy`` run as a program in ``words``."""
    found = []
    for index, word in enumerate(words):
        if word != "llmproxy" and not word.endswith("/llmproxy"):
            continue
        previous = words[index - 1] if index else ""
        if previous.startswith("-") and previous not in {"--", "-m"}:
            continue  # the value of an option: `sudo -u llmproxy`, `kubectl -n llmproxy`
        rest = words[index + 1 :]
        if not rest or not re.fullmatch(r"[a-z][a-z-]*", rest[0]) or rest[0] == "llmproxy":
            continue  # a service, unit or path name, or `docker compose exec llmproxy llmproxy`
        found.append(rest)
    return found


def check_invocation(args: list[str], tree: dict[tuple[str, ...], Command]) -> list[str]:
    path: tuple[str, ...] = ()
    rest = list(args)
    while rest and isinstance(tree.get(path), Group) and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
        candidate = (*path, rest[0])
        if candidate not in tree:
            if candidate == ("replay",) and not replay_is_registered():
                return []  # issue 7 lands `llmproxy replay`; its options are checked once it does
            return [f"`llmproxy {' '.join(candidate)}` is not a command"]
        path = candidate
        rest.pop(0)
    command = tree[path]
    known = options_of(command)
    return [
        f"`llmproxy {' '.join(path)}` has no option {word.split('=')[0]}"
        for word in rest
        if word.startswith("-") and word != "-" and word.split("=")[0] not in known
    ]


def test_every_llmproxy_command_and_option_in_the_docs_exists() -> None:
    tree = commands()
    problems = []
    seen = 0
    for doc in OPERATOR_DOCS:
        snippets = [*blocks(doc, *SHELL), *inline_code(doc)]
        for snippet in snippets:
            for words in shell_segments(snippet):
                for args in llmproxy_invocations(words):
                    seen += 1
                    problems += [f"{doc.name}: {p}" for p in check_invocation(args, tree)]
    assert not problems, "\n".join(problems)
    assert seen > 40


def test_the_invocation_scanner_reads_commands_the_way_the_docs_write_them() -> None:
    tree = commands()
    scan = [
        args
        for words in shell_segments(
            "docker compose exec llmproxy llmproxy keys add --name demo\n"
            "sudo -u llmproxy /opt/llmproxy/bin/llmproxy status --socket /run/llmproxy/a.sock\n"
            "kubectl -n llmproxy get pods && kubectl exec deploy/llmproxy -- llmproxy reload\n"
            "systemctl reload llmproxy  # llmproxy nothing here\n"
        )
        for args in llmproxy_invocations(words)
    ]
    assert scan == [
        ["keys", "add", "--name", "demo"],
        ["status", "--socket", "/run/llmproxy/a.sock"],
        ["reload"],
    ]
    assert check_invocation(["keys", "ad"], tree) == ["`llmproxy keys ad` is not a command"]
    assert check_invocation(["keys", "add", "--nmae", "x"], tree) == [
        "`llmproxy keys add` has no option --nmae"
    ]


# -- config keys --------------------------------------------------------------------------------


def _model_of(annotation: Any) -> Any:
    """The section model inside ``X``, ``X | None``, ``tuple[X, ...]``; else the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model_of(inner[0]) if len(inner) == 1 else annotation
    if origin in (tuple, list):
        return _model_of(typing.get_args(annotation)[0])
    if origin is typing.Annotated:
        return _model_of(typing.get_args(annotation)[0])
    return annotation


def resolve_key(dotted: str, value: str | None) -> str | None:
    """Why ``dotted`` (``rate_limit.per_key.burst_size``) is not a config key, or None."""
    model: Any = Config
    segments = dotted.split(".")
    for position, raw in enumerate(segments):
        name = raw.removesuffix("[]")
        fields = {info.alias or field: info for field, info in model.model_fields.items()}
        fields |= model.model_fields
        if name not in fields:
            return (
                f"`{dotted}`: no key {name!r} in {'.'.join(segments[:position]) or 'the top level'}"
            )
        annotation = _model_of(fields[name].annotation)
        last = position == len(segments) - 1
        if typing.get_origin(annotation) is dict:
            return None  # free-form keys below
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if not last:
            return f"`{dotted}`: {name} has no keys below it"
        if value is not None and typing.get_origin(annotation) is Literal:
            allowed = {str(v) for v in typing.get_args(annotation)}
            if value.strip("\"'") not in allowed:
                return f"`{dotted}: {value}`: not one of {sorted(allowed)}"
    return None


KEY = re.compile(r"([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)+)(?::\s*(\S+))?")


def test_every_config_key_in_the_docs_exists() -> None:
    top = set(Config.model_fields)
    problems, seen = [], 0
    for doc in OPERATOR_DOCS:
        for code in inline_code(doc):
            match = KEY.fullmatch(code.strip())
            if not match or match.group(1).split(".")[0].removesuffix("[]") not in top:
                continue
            if code.strip().endswith(FILE_SUFFIXES):
                continue
            seen += 1
            problem = resolve_key(match.group(1), match.group(2))
            if problem:
                problems.append(f"{doc.name}: {problem}")
    assert not problems, "\n".join(problems)
    assert seen > 40
    assert resolve_key("rate_limit.global.burst_size", None) is None
    assert resolve_key("rate_limit.storage", "disk") is not None
    assert resolve_key("server.shutdown_timout", None) is not None


def test_every_metric_in_the_docs_is_exported() -> None:
    samples = exported_samples()
    known = set(samples) | set(samples.values())
    for doc in OPERATOR_DOCS:
        names = set(re.findall(r"\bllmproxy_[a-z0-9_]*[a-z0-9]\b", doc.read_text()))
        assert names <= known, f"{doc.name}: {sorted(names - known)}"


# -- links --------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_relative_links_resolve() -> None:
    problems = []
    for doc in LINKED_DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                pending = path == REPO / "docs" / "replay.md" and not replay_is_registered()
                if not pending:
                    problems.append(f"{doc.name}: {target} does not exist")
                continue
            if anchor and path.suffix == ".md":
                headings = {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
                if anchor not in headings:
                    problems.append(f"{doc.name}: no heading #{anchor} in {path.name}")
    assert not problems, "\n".join(problems)


def test_readme_has_the_commands_tour_docs_deployments_and_figures() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = FENCE.search(readme)
    assert first_block is not None
    assert [line.split()[:2] for line in first_block.group(2).splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]
    linked = {(REPO / target).resolve() for target in LINK.findall(readme) if "://" not in target}
    for doc in (REPO / "docs").glob("*.md"):
        assert doc in linked, f"README does not link {doc.name}"
    assert (REPO / "docs" / "replay.md") in linked
    assert (REPO / "deployments" / "README.md") in linked
    for needle in (
        "curl -N localhost:8000/v1/chat/completions",
        "from openai import OpenAI",
        "llmproxy keys add",
        "llmproxy backends status",
        "llmproxy usage tail",
        "llmproxy replay --synthetic --rate 20 --duration 30 --target http://localhost:8000",
        "llmproxy replay recording.jsonl --speed 2 --target",
        "docker compose up",
        "kubectl apply -k deployments/kubernetes",
        "deployments/systemd/llmproxy.service",
        "python -m bench",
        "2-core machine",  # absolute figures only with the machine they came from
        "medians of 3",
        "nginx, same run",  # the yardstick, measured beside the gateway
        "CPU per relayed chunk",
        "1,000 streams",
        "server.workers: auto",
        "gateway_overloaded",
    ):
        assert needle in readme, needle
    benchmark = readme[readme.index("## Benchmark") : readme.index("## Documentation")]
    assert re.search(r"\d\.\d+× nginx", benchmark), "the benchmark gives ratios to nginx"
    architecture = (REPO / "docs" / "architecture.md").read_text()
    assert re.search(r"^deployments/ ", architecture, re.M)


# -- YAML blocks and the auth recipes -----------------------------------------------------------


def doc_configs(doc: Path) -> list[dict[str, Any]]:
    """The YAML blocks of ``doc`` that are gateway configs (top-level keys of the config)."""
    found = []
    for body in blocks(doc, "yaml"):
        data = yaml.safe_load(body)
        if set(data) <= set(Config.model_fields):
            found.append(data)
        else:
            assert set(data) == {"groups"}, f"{doc.name}: a YAML block that is no config: {body}"
    return found


def load_doc_config(data: dict[str, Any], tmp_path: Path) -> Config:
    text = yaml.safe_dump({"backends": [PLACEHOLDER_BACKEND], **data})
    env = dict.fromkeys(env_references(text), "placeholder-value")
    config = parse_config(text, "doc", env)
    problem = runtime_problem(config, tmp_path)  # builds providers, compiles every Lua script
    assert problem is None, problem
    return config


def test_yaml_blocks_in_the_docs_are_valid(tmp_path: Path) -> None:
    for doc in OPERATOR_DOCS:
        for data in doc_configs(doc):
            load_doc_config(data, tmp_path)
    rules = [yaml.safe_load(b) for b in blocks(OPERATIONS_DOC, "yaml") if "groups:" in b]
    assert len(rules) == 1
    samples = exported_samples()
    for rule in rules[0]["groups"][0]["rules"]:
        for name in re.findall(r"\bllmproxy_[a-z0-9_]+", rule["expr"]):
            assert name in samples, f"{rule['alert']}: {name}"


def recipe_scripts(tmp_path: Path) -> tuple[dict[str, str], dict[str, Config]]:
    scripts, configs = {}, {}
    for data in doc_configs(AUTH_DOC):
        config = load_doc_config(data, tmp_path)
        for entry in config.auth.pipeline:
            assert entry.name not in scripts, f"two recipes name a provider {entry.name}"
            scripts[entry.name] = entry.lua_script
            configs[entry.name] = config
    return scripts, configs


def request(model: str = "qwen-7b", ip: str = "10.20.1.2") -> dict[str, object]:
    return {"method": "POST", "path": "/v1/chat/completions", "ip": ip, "model": model}


@pytest.fixture
def sandbox() -> typing.Iterator[LuaSandbox]:
    lua = LuaSandbox()
    yield lua
    lua.close()


def test_auth_recipes_decide_as_documented(tmp_path: Path, sandbox: LuaSandbox) -> None:
    sources, configs = recipe_scripts(tmp_path)
    assert set(sources) == {"redis_auth", "balance", "tiers", "models", "office", "billing"}
    script = {name: sandbox.compile(source, f"provider {name}") for name, source in sources.items()}

    def decide(name: str, data: Mapping[str, object], **req: str) -> Any:
        full = {"stream": False, "headers": {}, **request(**req)}
        return script[name].decide(api_key="sk-test…", data=data, request=full, metadata={}, now=0)

    seed = decide("redis_auth", {"balance": "0"})  # the seed's script: its message, 403
    assert (seed.allow, seed.message, seed.status) == (False, "insufficient balance", None)
    assert decide("redis_auth", {"balance": "12.50"}).allow
    spent = decide("balance", {"balance": "0"})
    assert (spent.allow, spent.status) == (False, 429)
    assert decide("balance", {"balance": "0.5"}).metadata == {"low_balance": "yes"}
    assert decide("balance", {"balance": "12.50"}).metadata == {"low_balance": "no"}

    pro = decide("tiers", {"tier": "pro"})
    assert pro.allow
    assert pro.metadata == {"tier": "pro", "rpm": 600, "tpm": 400000, "max_concurrent": 16}
    assert decide("tiers", {}).metadata["rpm"] == 20
    assert not decide("tiers", {"tier": "gold"}).allow
    # the metadata names are the ones the per-key limits take as overrides
    per_key = configs["tiers"].rate_limit.per_key
    policy = limits_step.key_policy(per_key, KeyLimits(rpm=5), pro.metadata)
    assert policy.requests is not None
    assert policy.requests.per_second == pytest.approx(600 / 60)
    assert policy.tokens_per_minute == 400000
    assert policy.max_concurrent == 16

    denied = decide("models", {"tier": "free"}, model="qwen-72b")
    assert (denied.allow, denied.status) == (False, 403)
    assert decide("models", {"tier": "free"}, model="qwen-7b").allow
    assert decide("models", {"tier": "pro"}, model="qwen-72b").allow

    internal = {"metadata": {"internal": True}}
    assert decide("office", internal, ip="10.20.3.4").allow
    for outside in ("10.21.0.1", "203.0.113.5", "::1", ""):
        assert not decide("office", internal, ip=outside).allow, outside
    assert decide("office", {"metadata": {"internal": False}}, ip="203.0.113.5").allow
    assert decide("office", {}, ip="203.0.113.5").allow

    ok = decide("billing", {"active": True, "credits": 1250, "customer_id": "c-81", "plan": "pro"})
    assert ok.allow
    assert ok.metadata == {"customer_id": "c-81", "user_id": "c-81", "plan": "pro"}
    suspended = decide("billing", {"active": False, "credits": 5})
    assert (suspended.allow, suspended.status) == (False, 403)
    broke = decide("billing", {"active": True, "credits": 0})
    assert (broke.allow, broke.status) == (False, 429)
    assert configs["billing"].auth.forward_metadata == {"customer_id": "X-Customer-Id"}


def test_lua_blocks_compile_and_return_a_decision(sandbox: LuaSandbox) -> None:
    lua_blocks = blocks(AUTH_DOC, "lua")
    assert lua_blocks
    for number, source in enumerate(lua_blocks):
        script = sandbox.compile(source, f"auth-pipeline.md lua block {number}")
        decision = script.decide(api_key="sk-test…", data={}, request=request(), metadata={}, now=0)
        assert decision.allow is False
        assert decision.status == 429


# -- the backup recipe ----------------------------------------------------------------------------


def test_backup_one_liner_copies_a_live_key_store(tmp_path: Path) -> None:
    (snippet,) = [b for b in blocks(OPERATIONS_DOC, "sh") if ".backup(sqlite3.connect(" in b]
    words = shlex.split(snippet.replace("\\\n", " "))
    assert words[:2] == ["python", "-c"]
    source, target = Path(words[3]), Path(words[4])
    assert source.name == "keys.db"
    store, writer = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    store.open()
    writer.open()  # a second open connection, as the daemon and the CLI have
    try:
        _secret, record = store.add(name="backup-test")
        writer.add(name="second")
        copy = tmp_path / target.name
        subprocess.run(
            [sys.executable, "-c", words[2], str(tmp_path / "keys.db"), str(copy)],
            check=True,
            timeout=30,
        )
    finally:
        store.close()
        writer.close()
    restored_store = KeyStore(copy)
    restored_store.open()
    try:
        restored = {r.id for r in restored_store.all_records()}
    finally:
        restored_store.close()
    assert record.id in restored
    assert len(restored) == 2

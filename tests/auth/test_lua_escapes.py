"""The escape corpus: every attempt to get out of the sandbox or past its budget fails safely.

Each ``lua_escapes/*.lua`` file tries one thing and would allow the request (or create
``/tmp/llmproxy-lua-escape-<name>``) if it worked. Add a file for every new idea; the corpus is
replayed on both runtimes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import lupa.lua54
import pytest

from llmproxy.auth.lua import LuaError, LuaRuntimeError, LuaSandbox

CORPUS = sorted((Path(__file__).parent / "lua_escapes").glob("*.lua"))

INTEGRITY = """
local problems = {}
local function expect(ok, what) if not ok then problems[#problems + 1] = what end end
expect(pwned == nil and allow_everyone == nil, "a global leaked from an earlier call")
expect(string.upper("a") == "A" and ("a"):upper() == "A", "string was changed")
expect(math.floor(1.5) == 1 and table.concat({1, 2}) == "12", "math or table was changed")
expect(string.dump == nil and ("").dump == nil, "string.dump is reachable")
expect(os == nil and io == nil and load == nil and debug == nil and require == nil
  and python == nil and coroutine == nil and setmetatable == nil, "a forbidden global is visible")
local t = {}
for i = 1, 10000 do t[i] = i end
if #problems > 0 then return {allow = false, message = table.concat(problems, "; ")} end
return true
"""


class Lua54Sandbox(LuaSandbox):
    _lua = lupa.lua54


@pytest.fixture(scope="module", params=[LuaSandbox, Lua54Sandbox], ids=["luajit", "lua54"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[LuaSandbox]:
    """One sandbox per runtime for the whole corpus: every attempt runs after all earlier ones."""
    box: LuaSandbox = request.param()
    yield box
    box.close()


def run(sandbox: LuaSandbox, source: str, name: str) -> bool:
    script = sandbox.compile(source, name)
    decision = script.decide(
        api_key="sk-llmp-AbCdEf",
        data={"status": "active", "models": ["llama"], "balance": "10"},
        request={
            "method": "POST",
            "path": "/v1/chat/completions",
            "ip": "10.0.0.1",
            "headers": {"user-agent": "test"},
            "model": "llama",
            "stream": False,
        },
        metadata={"team": "ml"},
        now=time.time(),
    )
    return decision.allow


def test_corpus_is_large_enough() -> None:
    """The corpus keeps at least 25 distinct attempts."""
    assert len(CORPUS) >= 25


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_escape_attempt_fails_safely(sandbox: LuaSandbox, path: Path) -> None:
    """The attempt raises a LuaError or denies, within the budget, leaves no file behind, and
    the sandbox is intact and still enforcing its budget afterwards."""
    marker = Path(f"/tmp/llmproxy-lua-escape-{path.stem}")
    marker.unlink(missing_ok=True)
    source = path.read_bytes().decode("utf-8", "surrogateescape")
    started = time.perf_counter()
    try:
        allowed = run(sandbox, source, str(path))
    except LuaError:
        allowed = False
    elapsed = time.perf_counter() - started
    assert not allowed, f"{path.name} was allowed"
    assert elapsed < 0.25, f"{path.name} ran for {elapsed * 1000:.0f} ms"
    assert not marker.exists(), f"{path.name} created {marker}"

    assert run(sandbox, INTEGRITY, "integrity")
    started = time.perf_counter()
    with pytest.raises(LuaRuntimeError, match="stopped"):
        run(sandbox, "while true do end", "runaway")
    assert time.perf_counter() - started < 0.25

"""The budget of a decision script: instructions, wall-clock time, memory and costly C calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import lupa.lua54
import pytest

from llmproxy.auth.lua import LuaDecision, LuaError, LuaRuntimeError, LuaSandbox


class Lua54Sandbox(LuaSandbox):
    _lua = lupa.lua54


RUNTIMES = [pytest.param(LuaSandbox, id="luajit"), pytest.param(Lua54Sandbox, id="lua54")]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> type[LuaSandbox]:
    cls: type[LuaSandbox] = request.param
    return cls


@pytest.fixture
def sandbox(runtime: type[LuaSandbox]) -> Iterator[LuaSandbox]:
    box = runtime()
    yield box
    box.close()


def decide(sandbox: LuaSandbox, source: str, name: str = "s") -> LuaDecision:
    return sandbox.compile(source, name).decide(
        api_key="k", data={}, request={"headers": {}}, metadata={}, now=time.time()
    )


def timed_failure(sandbox: LuaSandbox, source: str) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(LuaRuntimeError) as caught:
        decide(sandbox, source)
    return str(caught.value), time.perf_counter() - started


@pytest.mark.timeout(10)
def test_instruction_budget_stops_a_loop(runtime: type[LuaSandbox]) -> None:
    """A loop is stopped once it has run `instruction_limit` instructions, naming the line."""
    sandbox = runtime(instruction_limit=10_000, timeout=10.0)
    message, elapsed = timed_failure(sandbox, "local n = 0\nwhile true do n = n + 1 end")
    assert message == "s:2: stopped: used more than its budget of 10000 instructions"
    assert elapsed < 0.1


@pytest.mark.timeout(10)
def test_time_budget_stops_a_loop(runtime: type[LuaSandbox]) -> None:
    """With instructions to spare, the wall-clock deadline stops a loop soon after it passes."""
    sandbox = runtime(instruction_limit=10**12, timeout=0.02)
    message, elapsed = timed_failure(sandbox, "while true do end")
    assert message == "s:1: stopped: ran longer than its time budget of 0.02 s"
    assert 0.02 <= elapsed < 0.2


@pytest.mark.timeout(10)
def test_time_budget_covers_c_heavy_loops(sandbox: LuaSandbox) -> None:
    """A loop whose time goes into C work (copying a 4 MB string) still stops near the deadline."""
    message, elapsed = timed_failure(
        sandbox, 'local s = ("x"):rep(4000000)\nwhile true do local t = s .. "y" end'
    )
    assert "stopped" in message
    assert elapsed < 0.25


def test_budget_is_per_call(sandbox: LuaSandbox) -> None:
    """Each call gets the whole budget again: three 300-400k instruction runs all pass."""
    script = sandbox.compile("local x = 0\nfor i = 1, 100000 do x = x + i end\nreturn true", "s")
    for _ in range(3):
        assert script.decide(api_key="k", data={}, request={}, metadata={}, now=0.0).allow


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "source",
    [
        "pcall(function() while true do end end)\nreturn true",
        "xpcall(function() while true do end end, function() return true end)\nreturn true",
        "pcall(function() local s = 'x' while true do s = s .. s end end)\nreturn true",
        "local function f() f() end\npcall(f)\nreturn true",
    ],
    ids=["budget", "budget-xpcall", "memory", "stack"],
)
def test_resource_errors_cannot_be_caught(sandbox: LuaSandbox, source: str) -> None:
    """Running out of budget, memory or stack fails the call even inside pcall/xpcall."""
    with pytest.raises(LuaRuntimeError):
        decide(sandbox, source)


@pytest.mark.timeout(20)
def test_memory_exhaustion_fails_and_the_sandbox_recovers(runtime: type[LuaSandbox]) -> None:
    """Hitting the memory cap is a LuaRuntimeError, and the memory is there again next call.

    The time budget is generous: filling 16 MB takes longer than the default 50 ms on a loaded
    machine, and this test is about the memory cap, not the clock.
    """
    sandbox = runtime(timeout=5.0)
    try:
        for _ in range(5):
            with pytest.raises(LuaRuntimeError, match="not enough memory"):
                decide(
                    sandbox,
                    "local t, s = {}, ('x'):rep(1000)\nfor i = 1, 1e9 do t[#t + 1] = s .. #t end",
                    "s",
                )
            assert decide(sandbox, "local s = ('y'):rep(6000000)\nreturn #s == 6000000").allow
    finally:
        sandbox.close()


def test_memory_limit_is_the_runtime_cap(runtime: type[LuaSandbox]) -> None:
    """`memory_limit` caps the runtime: 4 MB fits in 8 MB, 9 MB does not."""
    sandbox = runtime(memory_limit=8 * 1024 * 1024)
    assert decide(sandbox, "return #('x'):rep(4000000) > 0").allow
    with pytest.raises(LuaRuntimeError, match="not enough memory"):
        decide(sandbox, "return #('x'):rep(9000000) > 0")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("source", "call"),
    [
        ("return ('a'):rep(5000):find('.-.-.-b') ~= nil", "string.find on a 5000-byte string"),
        ("return ('a'):rep(3000):match('(.-)(.-)b') ~= nil", "string.match on a 3000-byte string"),
        ("return ('a'):rep(3000):gsub('a-a-b', '') ~= nil", "string.gsub on a 3000-byte string"),
        ("return #string.rep('x', 2^40) > 0", "string.rep of 1099511627776 bytes"),
    ],
)
def test_costly_c_calls_are_refused_before_they_run(
    sandbox: LuaSandbox, source: str, call: str
) -> None:
    """A C call whose worst case exceeds the budget left is refused at once, saying why."""
    message, elapsed = timed_failure(sandbox, source)
    assert message.startswith(f"s:1: {call}")
    assert "more than the" in message
    assert elapsed < 0.05


def test_everyday_patterns_fit_the_budget(sandbox: LuaSandbox) -> None:
    """Patterns on realistic inputs (1 KB tokens, long paths, IPs) run under the default budget."""
    source = """
local token = "Bearer " .. ("a"):rep(1000)
local path = "/v1/" .. ("segment/"):rep(100) .. "chat/completions"
local parts = 0
for part in path:gmatch("[^/]+") do parts = parts + 1 end
return token:match("^Bearer%s+(.+)$") ~= nil and parts == 103
  and ("10.0.0.12"):match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") == "10"
  and path:find("/chat/completions", 1, true) ~= nil
  and select(2, path:gsub("segment", "s")) == 100
  and (("x"):rep(2000)):find("y") == nil
"""
    assert decide(sandbox, source).allow


def test_large_library_calls_are_charged(sandbox: LuaSandbox) -> None:
    """One big string.rep fits the budget; a thousand of them do not."""
    assert decide(sandbox, "return #string.rep('x', 1000000) == 1000000").allow
    with pytest.raises(LuaRuntimeError, match=r"more than the|stopped"):
        decide(sandbox, "for i = 1, 1000 do local s = string.rep('x', 1000000) end\nreturn true")


def test_callbacks_nest_only_so_deep(sandbox: LuaSandbox) -> None:
    """gsub/sort callbacks nest 32 deep at most (LuaJIT would run out of C stack and crash)."""
    source = "local function f() ('x'):gsub('.', f) end\nf()"
    with pytest.raises(LuaRuntimeError, match="callbacks nested more than 32 deep"):
        decide(sandbox, source)
    nested = "local d = 0\nlocal function f() d = d + 1 if d < 20 then ('x'):gsub('.', f) end end"
    assert decide(sandbox, nested + "\nf()\nreturn d == 20").allow


def test_decide_stays_cheap(sandbox: LuaSandbox) -> None:
    """A realistic decision costs well under 100 µs (about 13-19 µs on the dev machine)."""
    data = {
        "key_id": "k_01H8",
        "name": "prod",
        "user_id": "user_001",
        "status": "active",
        "balance": "1234.50",
        "total_quota": 1000000,
        "used_quota": 5321,
        "expired_at": 1893456000.0,
        "models": ["llama-3-70b", "qwen2-72b"],
        "note": None,
    }
    request = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "ip": "10.1.2.3",
        "model": "llama-3-70b",
        "stream": True,
        "headers": {f"x-header-{i}": f"value-{i}" for i in range(8)},
    }
    script = sandbox.compile(
        'if tonumber(data.balance) <= 0 then return {allow = false, message = "余额不足"} end\n'
        "return {allow = true, metadata = {user_id = data.user_id}}",
        "bench",
    )
    now = time.time()
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        for _ in range(100):
            script.decide(api_key="sk-llmp-Ab", data=data, request=request, metadata={}, now=now)
        samples.append((time.perf_counter() - started) / 100)
    assert statistics.median(samples) < 100e-6


def test_too_small_memory_limit_is_a_lua_error(runtime: type[LuaSandbox]) -> None:
    """A memory limit the runtime cannot even start in is reported as such, not as a crash."""
    with pytest.raises(LuaError, match=r"^Lua sandbox: cannot start with memory_limit 50000 "):
        runtime(memory_limit=50_000)

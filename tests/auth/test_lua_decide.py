"""Decision scripts: what they see, what they return, and how their failures are named."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Mapping
from decimal import Decimal

import lupa.lua54
import pytest

from llmproxy.apikey import PresentedKey
from llmproxy.auth.lua import (
    LuaCompileError,
    LuaDecision,
    LuaError,
    LuaRuntimeError,
    LuaSandbox,
)

NOW = 1_750_000_000.5


class Lua54Sandbox(LuaSandbox):
    _lua = lupa.lua54


@pytest.fixture(params=[LuaSandbox, Lua54Sandbox], ids=["luajit", "lua54"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[LuaSandbox]:
    box: LuaSandbox = request.param()
    yield box
    box.close()


DATA: dict[str, object] = {
    "key_id": "k1",
    "user_id": "user_001",
    "status": "active",
    "balance": "12.5",
    "total_quota": 1000,
    "expired_at": NOW + 3600,
    "allowed_ips": ["10.0.0.1", "10.0.0.2"],
    "models": ["llama", "qwen"],
}
REQUEST: dict[str, object] = {
    "method": "POST",
    "path": "/v1/chat/completions",
    "ip": "10.0.0.2",
    "model": "llama",
    "stream": True,
    "headers": {"content-type": "application/json", "user-agent": "OpenAI/Python"},
}


def decide(
    sandbox: LuaSandbox,
    source: str,
    *,
    data: Mapping[str, object] = DATA,
    request: Mapping[str, object] = REQUEST,
    metadata: Mapping[str, object] | None = None,
    api_key: str = "sk-llmp-AbCdEf",
    name: str = "provider test",
) -> LuaDecision:
    script = sandbox.compile(source, name)
    return script.decide(
        api_key=api_key, data=data, request=request, metadata=metadata or {}, now=NOW
    )


def test_allow_table_round_trip(sandbox: LuaSandbox) -> None:
    """An allowing table comes back with its message and flat metadata, types kept."""
    decision = decide(
        sandbox,
        'return {allow = true, message = "welcome", '
        "metadata = {user_id = data.user_id, tier = 2, ratio = 0.5, vip = true}}",
    )
    assert decision == LuaDecision(
        allow=True,
        message="welcome",
        status=None,
        metadata={"user_id": "user_001", "tier": 2, "ratio": 0.5, "vip": True},
    )


def test_deny_with_message_and_status(sandbox: LuaSandbox) -> None:
    """A denial carries its message and the HTTP status the script asked for."""
    decision = decide(sandbox, 'return {allow = false, message = "slow down", status = 429}')
    assert decision == LuaDecision(allow=False, message="slow down", status=429, metadata={})


def test_status_is_ignored_when_allowing(sandbox: LuaSandbox) -> None:
    """A status next to allow = true is dropped: statuses only shape refusals."""
    assert decide(sandbox, "return {allow = true, status = 200}").status is None


@pytest.mark.parametrize(("source", "allow"), [("return true", True), ("return false", False)])
def test_boolean_return(sandbox: LuaSandbox, source: str, allow: bool) -> None:
    """`return true` / `return false` are decisions without message, status or metadata."""
    assert decide(sandbox, source) == LuaDecision(
        allow=allow, message=None, status=None, metadata={}
    )


SEED_BALANCE = """
if tonumber(data.balance) <= 0 then
  return {allow = false, message = "余额不足"}
end
return {allow = true}
"""


@pytest.mark.parametrize(("balance", "allow"), [("12.5", True), ("0", False), ("-3", False)])
def test_seed_balance_example(sandbox: LuaSandbox, balance: str, allow: bool) -> None:
    """The seed's balance script denies an empty balance with its Chinese message."""
    decision = decide(sandbox, SEED_BALANCE, data={**DATA, "balance": balance})
    assert decision.allow is allow
    assert decision.message == (None if allow else "余额不足")


@pytest.mark.parametrize(("status", "allow"), [("active", True), ("disabled", False)])
def test_seed_status_example(sandbox: LuaSandbox, status: str, allow: bool) -> None:
    """`data.status ~= "active"` refuses any other status."""
    source = """
if data.status ~= "active" then return {allow = false, message = "key " .. data.status} end
return true
"""
    assert decide(sandbox, source, data={**DATA, "status": status}).allow is allow


@pytest.mark.parametrize(("ip", "allow"), [("10.0.0.2", True), ("192.0.2.7", False)])
def test_seed_ip_allowlist_example(sandbox: LuaSandbox, ip: str, allow: bool) -> None:
    """An allowlist loop over `data.allowed_ips` lets in only `request.ip` values on it."""
    source = """
for _, allowed in ipairs(data.allowed_ips) do
  if request.ip == allowed then return true end
end
return {allow = false, message = "ip " .. request.ip .. " not allowed", status = 403}
"""
    decision = decide(sandbox, source, request={**REQUEST, "ip": ip})
    assert decision.allow is allow
    if not allow:
        assert decision == LuaDecision(False, f"ip {ip} not allowed", 403, {})


@pytest.mark.parametrize(("expired_at", "allow"), [(NOW + 1, True), (NOW - 1, False)])
def test_seed_expiry_example(sandbox: LuaSandbox, expired_at: float, allow: bool) -> None:
    """`data.expired_at < now()` compares against the `now` the caller passed."""
    source = 'if data.expired_at < now() then return {allow = false, message = "expired"} end\n'
    source += "return true"
    assert decide(sandbox, source, data={**DATA, "expired_at": expired_at}).allow is allow


def test_now_ms_is_whole_milliseconds(sandbox: LuaSandbox) -> None:
    """`now_ms()` is `now` in whole milliseconds, and `now()` keeps the fraction."""
    source = "return {allow = true, metadata = {ms = now_ms(), s = now()}}"
    assert decide(sandbox, source).metadata == {"ms": 1_750_000_000_500, "s": NOW}


def test_key_is_an_alias_of_data(sandbox: LuaSandbox) -> None:
    """`key` is the same table as `data` (the seed's scripts use both names)."""
    assert decide(sandbox, "return key == data and key.user_id == 'user_001'").allow


def test_request_fields_are_visible(sandbox: LuaSandbox) -> None:
    """method, path, ip, model, stream and lowercased headers reach the script."""
    source = """
local h = request.headers
return request.method == "POST" and request.path == "/v1/chat/completions"
  and request.ip == "10.0.0.2" and request.model == "llama" and request.stream == true
  and h["content-type"] == "application/json" and h["user-agent"] == "OpenAI/Python"
"""
    assert decide(sandbox, source).allow


def test_metadata_from_earlier_providers_is_visible(sandbox: LuaSandbox) -> None:
    """`metadata` holds what earlier providers decided."""
    source = "return metadata.team == 'ml' and metadata.rank == 3"
    assert decide(sandbox, source, metadata={"team": "ml", "rank": 3}).allow


def test_api_key_is_the_prefix_given(sandbox: LuaSandbox) -> None:
    """`api_key` is whatever the caller passes, which is the display prefix."""
    assert decide(sandbox, "return api_key == 'sk-llmp-AbCdEf'", api_key="sk-llmp-AbCdEf").allow


def test_nested_lists_and_none_values(sandbox: LuaSandbox) -> None:
    """Lists become sequences, nested tables keep their shape and None becomes nil."""
    data = {"models": ["a", "b", "c"], "limits": {"rpm": 60, "tags": ["x"]}, "note": None}
    source = """
return #data.models == 3 and data.models[3] == "c" and data.limits.rpm == 60
  and data.limits.tags[1] == "x" and data.note == nil
"""
    assert decide(sandbox, source, data=data).allow


def test_unusual_values_arrive_as_text_or_numbers(sandbox: LuaSandbox) -> None:
    """Decimals and datetimes arrive as their text, huge ints as floats: never as objects."""
    data = {
        "balance": Decimal("12.50"),
        "since": datetime.date(2024, 1, 2),
        "big": 2**70,
        "raw": b"bytes",
    }
    source = """
return type(data.balance) == "string" and tonumber(data.balance) == 12.5
  and data.since == "2024-01-02" and type(data.big) == "number" and data.big > 1e21
  and data.raw == "bytes"
"""
    assert decide(sandbox, source, data=data).allow


def test_lone_surrogates_do_not_fail_the_call(sandbox: LuaSandbox) -> None:
    """Text that cannot be strict UTF-8 (a lone surrogate) still reaches the script."""
    request = {**REQUEST, "model": "bad\udcff"}
    assert decide(sandbox, "return #request.model == 6", request=request).allow


def test_no_python_object_reaches_the_script(sandbox: LuaSandbox) -> None:
    """Every value a script can reach is a Lua value, never a Python object (userdata)."""
    source = """
local seen = {}
local function check(v)
  local t = type(v)
  if t == "userdata" or t == "thread" then return false end
  if t == "table" and not seen[v] then
    seen[v] = true
    for k, item in pairs(v) do
      if not check(k) or not check(item) then return false end
    end
  end
  return true
end
return check(_G) and check(data) and check(request) and check(metadata)
"""
    data = {**DATA, "odd": object(), "when": datetime.datetime(2024, 1, 2, 3, 4)}
    assert decide(sandbox, source, data=data).allow


def test_large_arguments_are_passed_whole(sandbox: LuaSandbox) -> None:
    """A data table too large for one Lua call's arguments still arrives complete."""
    data = {"models": [f"m{i}" for i in range(20_000)]}
    assert decide(
        sandbox, "return #data.models == 20000 and data.models[20000] == 'm19999'", data=data
    ).allow


def test_too_deeply_nested_arguments_are_refused(sandbox: LuaSandbox) -> None:
    """Arguments nested deeper than the limit raise a named error instead of recursing on."""
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(20):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    with pytest.raises(LuaRuntimeError, match=r"^provider test: .*nested deeper"):
        decide(sandbox, "return true", data=deep)


def test_globals_do_not_leak_between_calls(sandbox: LuaSandbox) -> None:
    """A global set in one call is gone in the next: every call gets a fresh environment."""
    script = sandbox.compile("local seen = marker\nmarker = true\nreturn seen == nil", "leak")
    for _ in range(3):
        assert script.decide(api_key="k", data={}, request={}, metadata={}, now=NOW).allow


def test_libraries_cannot_be_changed_for_the_next_call(sandbox: LuaSandbox) -> None:
    """string, math and table are read-only, and failed writes leave them intact."""
    for source in (
        "string.upper = nil",
        "math.floor = nil",
        "table.concat = nil",
        "string.new = 1",
    ):
        with pytest.raises(LuaRuntimeError, match="is read-only"):
            decide(sandbox, source)
    source = 'return string.upper("a") == "A" and ("b"):upper() == "B" and math.floor(1.5) == 1'
    assert decide(sandbox, source).allow


def test_allowlisted_functions_work(sandbox: LuaSandbox) -> None:
    """The allowlisted library behaves like Lua's own."""
    source = """
local t = {3, 1, 2}
table.sort(t)
table.insert(t, 4)
local ok, err = pcall(error, "x", 0)
local okx, errx = xpcall(function() error("y", 0) end, function(e) return "handled " .. e end)
local parts = {}
for word in ("a,b,c"):gmatch("[^,]+") do parts[#parts + 1] = word end
return table.concat(t, ",") == "1,2,3,4" and not ok and err == "x"
  and not okx and errx == "handled y" and #parts == 3 and select("#", 1, 2) == 2
  and tostring(12) == "12" and tonumber("0x10") == 16 and select("#", unpack({5, 6})) == 2
  and ("%d-%s"):format(7, "x") == "7-x" and ("abc"):find("b", 1, true) == 2
  and ("Bearer tok"):match("^Bearer%s+(.+)$") == "tok" and rawequal(t, t)
  and rawget(t, 1) == 1 and next({}) == nil and type(math.pi) == "number"
  and ("x"):rep(3, "-") == "x-x-x" and ("hello"):gsub("l", "L") == "heLLo"
"""
    assert decide(sandbox, source).allow


def test_log_goes_to_the_logger_without_the_secret(
    sandbox: LuaSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """log() writes at INFO to llmproxy.auth.lua, prefixed with the script name; the secret key
    never reaches the script, so it cannot be logged."""
    presented = PresentedKey.of("sk-llmp-" + "S3cr3t" * 8)
    source = """
log("key " .. api_key)
for name, value in pairs(request.headers) do log(name .. "=" .. value) end
for name, value in pairs(data) do log(name .. "=" .. tostring(value)) end
return true
"""
    with caplog.at_level(logging.INFO, logger="llmproxy.auth.lua"):
        decide(sandbox, source, api_key=presented.prefix, name="provider redis")
    records = [r for r in caplog.records if r.name == "llmproxy.auth.lua"]
    assert records
    assert all(r.levelno == logging.INFO for r in records)
    assert records[0].getMessage() == f"provider redis: key {presented.prefix}"
    assert all(r.getMessage().startswith("provider redis: ") for r in records)
    assert presented.secret not in caplog.text
    assert "S3cr3tS3cr3t" not in caplog.text


def test_log_lines_are_truncated_and_capped(
    sandbox: LuaSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A log line keeps 500 characters (not bytes); past 20 lines a count replaces them."""
    source = 'log(("界"):rep(600)) for i = 1, 30 do log(i) end return true'
    with caplog.at_level(logging.INFO, logger="llmproxy.auth.lua"):
        decide(sandbox, source, name="s")
    messages = [r.getMessage() for r in caplog.records if r.name == "llmproxy.auth.lua"]
    assert messages[0] == "s: " + "界" * 500
    assert len(messages) == 21
    assert messages[-1] == "s: 11 more log lines dropped"


def test_log_of_a_failed_call_is_kept(
    sandbox: LuaSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Lines logged before a script fails are still written (they explain the failure)."""
    with caplog.at_level(logging.INFO, logger="llmproxy.auth.lua"), pytest.raises(LuaError):
        decide(sandbox, 'log("checking") error("boom")', name="s")
    assert "s: checking" in caplog.text


def test_compile_error_names_script_and_line(sandbox: LuaSandbox) -> None:
    """A syntax error is a LuaCompileError `<name>:<line>: <Lua message>`."""
    with pytest.raises(LuaCompileError, match=r"^/etc/llmproxy/quota\.lua:3: .*'='"):
        sandbox.compile("local a = 1\nlocal b = 2\nlocal c = = 3\n", "/etc/llmproxy/quota.lua")


def test_compile_error_keeps_a_long_path_whole(sandbox: LuaSandbox) -> None:
    """Lua shortens chunk names to 59 bytes; the error still names the full path."""
    path = "/srv/llmproxy/config/" + "very-long-directory-name/" * 4 + "decide.lua"
    with pytest.raises(LuaCompileError) as caught:
        sandbox.compile("return (", path)
    assert str(caught.value).startswith(path + ":1: ")
    with pytest.raises(LuaRuntimeError) as raised:
        sandbox.compile("\nerror('boom')", path).decide(
            api_key="k", data={}, request={}, metadata={}, now=NOW
        )
    assert str(raised.value) == f"{path}:2: boom"


def test_binary_chunk_is_refused(sandbox: LuaSandbox) -> None:
    """Precompiled bytecode does not load: only source text is accepted."""
    with pytest.raises(LuaCompileError, match=r"^provider test: .*(binary chunk|wrong mode)"):
        sandbox.compile("\x1bLuaT\x00garbage", "provider test")


def test_deeply_nested_source_is_a_compile_error(sandbox: LuaSandbox) -> None:
    """Source nested past the parser's limit is a one-line compile error, not a crash."""
    with pytest.raises(LuaCompileError) as caught:
        sandbox.compile("return " + "{" * 100_000 + "}" * 100_000, "deep")
    assert str(caught.value).startswith("deep")
    assert "\n" not in str(caught.value)


def test_runtime_error_names_script_and_line(sandbox: LuaSandbox) -> None:
    """A runtime error is a LuaRuntimeError that starts with the script's name and line."""
    with pytest.raises(LuaRuntimeError, match=r"^provider quota:2: .*nil"):
        decide(sandbox, "local x = nil\nreturn x.y", name="provider quota")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("error({})", "error object is a table value"),
        ("error('plain', 0)", "plain"),
        ("error(42)", "42"),
    ],
)
def test_error_values_become_messages(sandbox: LuaSandbox, source: str, expected: str) -> None:
    """Whatever a script raises, the error names the script and says what it raised."""
    with pytest.raises(LuaRuntimeError) as caught:
        decide(sandbox, source, name="s")
    assert str(caught.value) in (f"s: {expected}", f"s:1: {expected}")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("return nil", "got nil"),
        ("return", "got nil"),
        ("return 42", "got number"),
        ("return 'yes'", "got string"),
        ("return {}", "`allow` is nil"),
        ("return {allow = 1}", "`allow` is number"),
        ("return {allow = 'true'}", "`allow` is string"),
        ("return {allow = true, message = 5}", "`message` is number"),
        ("return {allow = false, status = '403'}", "`status` must be an integer"),
        ("return {allow = false, status = 403.5}", "`status` must be an integer"),
        ("return {allow = false, status = 200}", "`status` 200 is not an HTTP error status"),
        ("return {allow = false, status = 600}", "`status` 600 is not an HTTP error status"),
        ("return {allow = true, metadata = 'x'}", "`metadata` is string"),
        ("return {allow = true, metadata = {a = {b = 1}}}", "`metadata.a` is a table"),
        ("return {allow = true, metadata = {f = print or error}}", "`metadata.f` is a function"),
        ("return {allow = true, metadata = {[1] = 'x'}}", "keys must be strings"),
    ],
)
def test_bad_return_values(sandbox: LuaSandbox, source: str, problem: str) -> None:
    """A return value that is not a decision is a named LuaRuntimeError saying what is wrong."""
    with pytest.raises(LuaRuntimeError) as caught:
        decide(sandbox, source, name="provider q")
    assert str(caught.value).startswith("provider q: bad return value: ")
    assert problem in str(caught.value)


def test_text_that_is_not_utf8_is_replaced(sandbox: LuaSandbox) -> None:
    """Bytes that are not UTF-8 in a message or metadata become U+FFFD, never an exception."""
    source = r'return {allow = false, message = "bad \255", metadata = {["k\254"] = "v\253"}}'
    decision = decide(sandbox, source)
    assert decision.message == "bad \ufffd"
    assert decision.metadata == {"k\ufffd": "v\ufffd"}


def test_scripts_share_a_sandbox_independently(sandbox: LuaSandbox) -> None:
    """Two scripts compiled into one sandbox keep their own code and names."""
    first = sandbox.compile("return {allow = true, message = 'first'}", "one")
    second = sandbox.compile("error('second fails')", "two")
    assert first.name == "one"
    assert second.name == "two"
    for _ in range(2):
        assert first.decide(api_key="k", data={}, request={}, metadata={}, now=NOW).message == (
            "first"
        )
        with pytest.raises(LuaRuntimeError, match=r"^two:1: second fails"):
            second.decide(api_key="k", data={}, request={}, metadata={}, now=NOW)


def test_closed_sandbox_refuses_calls() -> None:
    """After close(), compiling or deciding raises a LuaError naming the script."""
    sandbox = LuaSandbox()
    script = sandbox.compile("return true", "provider x")
    sandbox.close()
    with pytest.raises(LuaRuntimeError, match=r"^provider x: the Lua sandbox .* is closed"):
        script.decide(api_key="k", data={}, request={}, metadata={}, now=NOW)
    with pytest.raises(LuaError, match=r"^provider y: "):
        sandbox.compile("return true", "provider y")

"""The Lua half of the sandbox: runs once per runtime, with the real globals, and hands back the
few private functions Python drives (``compile``, ``invoke``) plus the markers of the argument
encoding. Scripts never see the real globals; they see the allowlisted ``SAFE`` table through a
fresh environment per call.

Why the budget looks the way it does (each point was an escape in an earlier draft):

- The count hook is re-armed on every call and, once the budget is spent, fires on *every*
  instruction and raises again anywhere but in the driver itself, so ``while true do pcall(f) end``
  cannot outlive it.
- A hook is a call: at the C-stack or Lua-stack limit it cannot run, and a script that catches the
  resulting "stack overflow" in a loop would never be stopped. So the ``pcall``/``xpcall`` that
  scripts get re-raise resource errors (stack, memory, budget) instead of returning them, and
  ``xpcall`` runs its handler after unwinding, where the stack is shallow again.
- C functions run without hooks. Those whose cost grows with their input (string patterns can take
  time polynomial in the subject, ``.-.-.-b`` over 4 KB ran for a minute) charge a worst-case
  estimate to the instruction budget *before* they run, and are refused when it does not fit.
- ``coroutine``, ``setmetatable`` (``__gc`` finalizers run outside any budget) and everything that
  reaches code, files, the environment or Python are not in the allowlist.
"""

from __future__ import annotations

PRELUDE_NAME = "=llmproxy-lua-sandbox"

PRELUDE = r"""
local clock, STEP, MAX_LOG_LINES, LOG_LINE_BYTES = ...

if jit then jit.off() jit.flush() end  -- compiled loops never fire count hooks

local debug_getinfo, debug_sethook = debug.getinfo, debug.sethook
local debug_setupvalue, setfenv = debug.setupvalue, setfenv
local error, ipairs, load, next, pcall, select, setmetatable, tonumber, tostring, type =
  error, ipairs, load, next, pcall, select, setmetatable, tonumber, tostring, type
local s_byte, s_find, s_format, s_gsub, s_match, s_sub =
  string.byte, string.find, string.format, string.gsub, string.match, string.sub
local floor, huge = math.floor, math.huge
local unpack = table.unpack or unpack
local PRELUDE = debug_getinfo(1, "S").source

-- Budget ---------------------------------------------------------------------------------------
local used, limit, deadline, timeout, expired = 0, 0, 0, 0, nil
local DRIVER = {}  -- functions of this file that must finish even after the budget is spent
local hook

local function script_position(level)
  while true do
    local info = debug_getinfo(level, "Sl")
    if not info then return "" end
    if info.what ~= "C" and info.source ~= PRELUDE then
      if info.currentline and info.currentline > 0 then
        return info.short_src .. ":" .. info.currentline .. ": "
      end
      return ""
    end
    level = level + 1
  end
end

local function expire(reason)
  expired = script_position(3) .. reason
  debug_sethook(hook, "", 1)
  error(expired, 0)
end

hook = function()
  if expired then
    if not DRIVER[debug_getinfo(2, "f").func] then error(expired, 0) end
    return
  end
  used = used + STEP
  if used > limit then
    if DRIVER[debug_getinfo(2, "f").func] then return end
    expire("stopped: used more than its budget of " .. limit .. " instructions")
  elseif clock() > deadline then
    if DRIVER[debug_getinfo(2, "f").func] then return end
    expire("stopped: ran longer than its time budget of " .. timeout .. " s")
  end
end

local function charge(units, what)
  if used + units > limit then
    expire(s_format("%s could cost about %.3g instructions, more than the %.0f left in its budget",
      what, units, limit - used))
  end
  used = used + units
end

-- Errors a script may not catch: catching them in a loop would defeat the budget.
local function is_fatal(e)
  if expired then return true end
  if type(e) ~= "string" then return false end
  return s_find(e, "stack overflow", 1, true) or s_find(e, "not enough memory", 1, true)
    or s_find(e, "error in error handling", 1, true)
end

local function caught(ok, ...)
  if not ok and is_fatal((...)) then error((...), 0) end
  return ok, ...
end

local function safe_pcall(f, ...)
  return caught(pcall(f, ...))
end

local function handled(handler, ok, ...)
  if ok then return true, ... end
  local e = ...
  if is_fatal(e) then error(e, 0) end
  return false, handler(e)
end

local function safe_xpcall(f, handler, ...)
  return handled(handler, pcall(f, ...))
end

-- Library wrappers that charge C work to the budget ------------------------------------------
local BYTES_PER_INSTRUCTION = 64
local STEPS_PER_INSTRUCTION = 2

local function len(s)
  local t = type(s)
  if t == "string" then return #s end
  if t == "number" then return 24 end
  return 0
end

local function linear(name, fn)
  return function(s, ...)
    local n = len(s)
    if n > 4096 then charge(n / BYTES_PER_INSTRUCTION, name .. " on a " .. n .. "-byte string") end
    return fn(s, ...)
  end
end

-- A pattern that ends in `.*`, `.+` or `.-` (then only `)`s and maybe `$`), or in any one class
-- with a quantifier and nothing after it, matches as soon as the matcher reaches that tail: the
-- tail costs one pass over the subject, not a factor. Returns the pattern before the tail.
local FREE_TAILS = {
  "^(.-)%.[%*%+%-]%)*%$?$",  -- .* .+ .- (any character: reaches the end, where $ holds)
  "^(.-)%%%a[%*%+%-]%)*$",  -- %d+ and the other classes
  "^(.-)%[%^?[^%]]*%][%*%+%-]%)*$",  -- [^/]+
  "^(.-)%w[%*%+%-]%)*$",  -- a literal letter or digit
}

local function before_free_tail(p)
  if #p > 256 then return nil end  -- finding the tail is quadratic in the pattern length
  for _, tail in ipairs(FREE_TAILS) do
    local body = s_match(p, tail)
    -- an odd run of % before the tail would make its first character an escaped literal
    if body and #s_match(body, "%%*$") % 2 == 0 then return body end
  end
  return nil
end

-- Worst case of Lua's backtracking matcher: every start position, times every way the quantified
-- items (and %b, back-references) can share the subject, times the literal text between them.
-- Plain searches (memchr + memcmp) cost about a step per byte.
local function pattern_steps(n, p, plain, anchorable)
  if type(p) ~= "string" then p = tostring(p) end
  local m = #p
  if plain or not s_find(p, "[%^%$%*%+%?%.%(%)%[%]%%%-]") then return (n + 1) * (1 + m / 16) end
  local body = before_free_tail(p)
  if body then return pattern_steps(n, body, false, anchorable) + n + 1 end
  local starts = (anchorable and s_byte(p, 1) == 94) and 1 or (n + 1)
  local spans, q, optional = 0, 0, 0
  p, q = s_gsub(p, "%%b..", "")
  spans = spans + q
  p, q = s_gsub(p, "%%[1-9]", "")
  spans = spans + q
  p = s_gsub(p, "%%.", "")
  local _, sets = s_gsub(p, "%[", "")
  if sets > 0 then
    charge(sets * #p / BYTES_PER_INSTRUCTION, "a pattern with " .. sets .. " sets")
    p = s_gsub(p, "%[%^?%]?[^%]]*%]", "")
  end
  p, q = s_gsub(p, "[%*%+%-]", "")
  spans = spans + q
  _, optional = s_gsub(p, "%?", "")
  local ways = 1
  for j = 1, spans do
    ways = ways * (n + j) / j
    if ways == huge then break end
  end
  return starts * ways * 2 ^ optional * (1 + m / 8)
end

local function matcher(name, fn, anchorable, has_plain)
  return function(s, p, init, plain)
    local n = len(s)
    local steps = pattern_steps(n, p, has_plain and plain, anchorable)
    if steps > 4096 then
      local what = name .. " on a " .. n .. "-byte string with that pattern"
      charge(steps / STEPS_PER_INSTRUCTION, what)
    end
    return fn(s, p, init, plain)
  end
end

-- C functions that call back into Lua use the C stack for every level: LuaJIT does not bound
-- that depth (gsub inside a gsub callback, ~900 levels deep, is a segfault), so we do.
local MAX_CALLBACK_DEPTH = 32
local callback_depth = 0

local function callback_returned(ok, ...)
  callback_depth = callback_depth - 1
  if not ok then error((...), 0) end
  return ...
end

local function with_callbacks(name, fn, ...)
  if callback_depth >= MAX_CALLBACK_DEPTH then
    error(name .. " callbacks nested more than " .. MAX_CALLBACK_DEPTH .. " deep", 0)
  end
  callback_depth = callback_depth + 1
  return callback_returned(pcall(fn, ...))
end

local s_gsub_raw = string.gsub
local function gsub(s, p, repl, max)
  local n = len(s)
  local steps = pattern_steps(n, p, false, true) + n * (len(repl) + 1)
  if steps > 4096 then
    local what = "string.gsub on a " .. n .. "-byte string with that pattern"
    charge(steps / STEPS_PER_INSTRUCTION, what)
  end
  if type(repl) == "function" then
    return with_callbacks("string.gsub", s_gsub_raw, s, p, repl, max)
  end
  return s_gsub_raw(s, p, repl, max)
end

local s_rep = string.rep
local function rep(s, n, sep)
  local bytes = (len(s) + len(sep)) * (tonumber(n) or 0)
  if bytes > 4096 then
    charge(bytes / BYTES_PER_INSTRUCTION, s_format("string.rep of %.0f bytes", bytes))
  end
  return s_rep(s, n, sep)
end

local s_format_raw = string.format
local function format(fmt, ...)
  local bytes = len(fmt)
  for i = 1, select("#", ...) do bytes = bytes + len((select(i, ...))) end
  if bytes > 4096 then
    charge(bytes / BYTES_PER_INSTRUCTION, s_format("string.format of %.0f bytes", bytes))
  end
  return s_format_raw(fmt, ...)
end

local function count(t)
  return type(t) == "table" and #t or 0
end

local t_concat, t_insert, t_remove, t_sort = table.concat, table.insert, table.remove, table.sort
local function concat(t, sep, i, j)
  local n = (tonumber(j) or count(t)) - (tonumber(i) or 1)
  if n > 256 then charge(n, s_format("table.concat of %.0f items", n)) end
  return t_concat(t, sep, i, j)
end
local function insert(t, ...)
  if select("#", ...) > 1 then charge(count(t), "table.insert") end
  return t_insert(t, ...)
end
local function remove(t, ...)
  if select("#", ...) > 0 then charge(count(t), "table.remove") end
  return t_remove(t, ...)
end
local function sort(t, less)
  local n = count(t)
  if n > 16 then charge(n * math.log(n) * 1.4427, "table.sort of " .. n .. " items") end
  if less ~= nil then return with_callbacks("table.sort", t_sort, t, less) end
  return t_sort(t, less)
end
local function unpack_charged(t, i, j)
  local n = (tonumber(j) or count(t)) - (tonumber(i) or 1)
  if n > 256 then charge(n, s_format("unpack of %.0f values", n)) end
  return unpack(t, i, j)
end
local function tonumber_charged(v, base)
  local n = len(v)
  if n > 4096 then charge(n / BYTES_PER_INSTRUCTION, "tonumber of a " .. n .. "-byte string") end
  if base == nil then return tonumber(v) end
  return tonumber(v, base)
end

-- Allowlisted environment ----------------------------------------------------------------------
local function readonly(name, fields)
  return setmetatable({}, {
    __index = fields,
    __newindex = function() error(name .. " is read-only", 2) end,
    __metatable = false,
  })
end

local string_fields = {
  byte = linear("string.byte", string.byte),
  char = string.char,
  find = matcher("string.find", string.find, true, true),
  format = format,
  gmatch = matcher("string.gmatch", string.gmatch, false, false),
  gsub = gsub,
  len = string.len,
  lower = linear("string.lower", string.lower),
  match = matcher("string.match", string.match, true, false),
  rep = rep,
  reverse = linear("string.reverse", string.reverse),
  sub = linear("string.sub", string.sub),
  upper = linear("string.upper", string.upper),
}
local math_fields = {}
for k, v in next, math do
  if k ~= "randomseed" then math_fields[k] = v end
end
local table_fields = {
  concat = concat, insert = insert, remove = remove, sort = sort, unpack = unpack_charged,
}

local STRING = readonly("string", string_fields)
-- ("").dump and getmetatable("").__index.dump must not reach the real string library
local string_meta = getmetatable("")
string_meta.__index = STRING
string_meta.__metatable = false

local SAFE = {
  _VERSION = _VERSION, assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, rawequal = rawequal, rawget = rawget, rawlen = rawlen, select = select,
  tonumber = tonumber_charged, tostring = tostring, type = type, unpack = unpack_charged,
  xpcall = safe_xpcall,
  math = readonly("math", math_fields), string = STRING, table = readonly("table", table_fields),
}
local ENV_META = { __index = SAFE, __metatable = false }
local NO_GLOBALS = setmetatable({}, {
  __index = function() error("script not bound to a call", 2) end,
})

-- Per-call values ------------------------------------------------------------------------------
local current_now = 0
local LOG, nlogs = {}, 0

local function now() return current_now end
local function now_ms() return floor(current_now * 1000) end
local function log(message)
  nlogs = nlogs + 1
  if nlogs <= MAX_LOG_LINES then LOG[nlogs] = s_sub(tostring(message), 1, LOG_LINE_BYTES) end
end

-- Argument decoding: Python sends nested tables as MAP/LIST, count, then keys and values.
local MAP, LIST = {}, {}

local function decode(a, i)
  local kind, n = a[i], a[i + 1]
  i = i + 2
  local t = {}
  if kind == LIST then
    for j = 1, n do
      local v = a[i]
      if v == MAP or v == LIST then v, i = decode(a, i) else i = i + 1 end
      t[j] = v
    end
  else
    for _ = 1, n do
      local k, v = a[i], a[i + 1]
      if v == MAP or v == LIST then v, i = decode(a, i + 1) else i = i + 2 end
      t[k] = v
    end
  end
  return t, i
end

-- The decision: `return {allow = ..., message = ..., status = ..., metadata = {...}}` or a boolean.
local function refuse(what)
  error("bad return value: " .. what, 0)
end

local function run(chunk)
  local r = chunk()
  if r == true or r == false then return r end
  if type(r) ~= "table" then
    refuse("got " .. type(r) .. "; return a table {allow = true|false, ...} or true/false")
  end
  local allow, message, status, metadata = r.allow, r.message, r.status, r.metadata
  if type(allow) ~= "boolean" then
    refuse("`allow` is " .. type(allow) .. ", it must be true or false")
  end
  if message ~= nil and type(message) ~= "string" then
    refuse("`message` is " .. type(message) .. ", it must be a string")
  end
  if status ~= nil and (type(status) ~= "number" or status ~= floor(status)) then
    refuse("`status` must be an integer HTTP status")
  end
  if metadata == nil then return allow, message, status end
  if type(metadata) ~= "table" then
    refuse("`metadata` is " .. type(metadata) .. ", it must be a table")
  end
  local out, n = { allow, message, status }, 3
  for k, v in next, metadata do
    if type(k) ~= "string" then refuse("`metadata` keys must be strings") end
    local t = type(v)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      refuse("`metadata." .. k .. "` is a " .. t .. "; values must be strings, numbers or booleans")
    end
    out[n + 1], out[n + 2] = k, v
    n = n + 2
  end
  return unpack(out, 1, n)
end

local function error_text(e)
  local t = type(e)
  if t == "string" then return s_sub(e, 1, 2000) end
  if t == "number" then return tostring(e) end
  return "error object is a " .. t .. " value"
end

local bind = setfenv or function(chunk, env) debug_setupvalue(chunk, 1, env) end

local finish = function(ok, ...)
  debug_sethook()
  if expired then return false, nlogs, expired end
  if not ok then return false, nlogs, error_text((...)) end
  return true, nlogs, ...
end

local start = function(chunk, budget, ends, seconds, api_key, at, a)
  debug_sethook()  -- in case a failure outside any script left it armed
  expired = nil
  local data, i = decode(a, 1)
  local request, metadata
  request, i = decode(a, i)
  metadata = decode(a, i)
  local env = {
    api_key = api_key, data = data, key = data, request = request, metadata = metadata,
    now = now, now_ms = now_ms, log = log,
  }
  env._G = env
  bind(chunk, setmetatable(env, ENV_META))
  current_now, nlogs, callback_depth = at, 0, 0
  used, limit, deadline, timeout, expired = 0, budget, ends, seconds, nil
  debug_sethook(hook, "", STEP)
  return finish(pcall(run, chunk))
end

-- Arguments as varargs (fast), or as one table when there are more than the C stack takes.
local function invoke(chunk, budget, ends, seconds, api_key, at, ...)
  return start(chunk, budget, ends, seconds, api_key, at, { ... })
end

local function compile(source, chunkname)
  debug_sethook()
  local chunk, err = load(source, "=" .. chunkname, "t", NO_GLOBALS)
  if not chunk then return nil, err end
  return chunk, nil
end

DRIVER[compile], DRIVER[invoke], DRIVER[start], DRIVER[finish] = true, true, true, true

return compile, invoke, start, MAP, LIST, LOG
"""

"""Sandboxed Lua decision scripts: after a provider finds a key, the operator's script decides.

::

    sandbox = LuaSandbox()  # one per config snapshot; close() when the snapshot retires
    script = sandbox.compile(
        'if tonumber(data.balance) <= 0 then return {allow = false, message = "余额不足"} end\\n'
        "return {allow = true, metadata = {user_id = data.user_id}}",
        "provider redis_auth",
    )
    decision = script.decide(api_key=key.prefix, data=data, request=request, metadata={}, now=now)

A script sees ``api_key`` (the key's display prefix, never the secret), ``data`` (the provider's
result) and its alias ``key``, ``request`` (``method``, ``path``, ``ip``, ``headers``, ``model``,
``stream``), ``metadata`` (what earlier providers decided), ``now()`` (unix seconds), ``now_ms()``
and ``log(msg)``. It returns ``{allow = bool, message = string?, status = int?, metadata = table?}``
or just ``true``/``false``; anything else is a :class:`LuaRuntimeError`.

What a script can use: ``assert error ipairs next pairs pcall select tonumber tostring type unpack
xpcall rawequal rawget rawlen``, read-only ``string`` (no ``dump``), ``table`` and ``math`` (no
``randomseed``). Nothing that reaches files, processes, code loading, ``debug``, metatables,
coroutines or Python. Each call gets a fresh global table, and runs under an instruction budget
(a count hook, re-armed per call), a wall-clock deadline and the runtime's memory cap; costly C
library calls (string patterns, ``rep``, ``sort``, ...) are charged to the budget before they run.
Every failure is a :class:`LuaError` whose message starts with the script's name.

Runtime choice, LuaJIT 2.1 (``lupa.luajit21``, JIT off) over Lua 5.4 (``lupa.lua54``). Measured
on the dev machine (2 cores, Python 3.11, lupa 2.8): :meth:`LuaScript.decide` on a script compiled
once, with a 10-field ``data`` (one a 2-item list), a request with 8 headers and 2 metadata fields;
timed in batches of 100 calls, 20,000 calls per round, rounds alternating between the runtimes,
median of 7 rounds:

================================  ==========  =========
script                            LuaJIT 2.1  Lua 5.4
================================  ==========  =========
``return true``                   12.5 µs     14.5 µs
seed balance check                13.2 µs     16.0 µs
status, expiry, model loop, meta  16.3 µs     19.9 µs
================================  ==========  =========

About 5–6 µs of that is encoding the arguments in Python, 3.5 µs (LuaJIT) or 5.5 µs (Lua 5.4) the
Lua call itself. LuaJIT is 15–20 % faster; both pass the same escape corpus (the tests run it on
both), so switching is one line (``LuaSandbox._lua``).
"""

from llmproxy.auth.lua.decision import LuaCompileError, LuaDecision, LuaError, LuaRuntimeError
from llmproxy.auth.lua.sandbox import LuaSandbox, LuaScript

__all__ = [
    "LuaCompileError",
    "LuaDecision",
    "LuaError",
    "LuaRuntimeError",
    "LuaSandbox",
    "LuaScript",
]

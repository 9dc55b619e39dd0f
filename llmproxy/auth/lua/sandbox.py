"""The Lua runtime of one config snapshot, and the scripts compiled into it.

Python's half of the sandbox: it opens the runtime, runs the prelude (:mod:`._prelude`), encodes
each call's arguments as plain Lua values and turns the answer into a :class:`LuaDecision`. Only
bytes, numbers, booleans and nil cross into Lua (Python objects inside Lua are an escape route,
CVE-2026-34444); the one exception is ``time.monotonic``, sealed in the budget hook's closure where
no script can reach it, and every attribute access on Python objects is refused anyway.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any, ClassVar

import lupa.luajit21

from llmproxy.auth.lua._prelude import PRELUDE, PRELUDE_NAME
from llmproxy.auth.lua.decision import (
    LuaCompileError,
    LuaDecision,
    LuaError,
    LuaRuntimeError,
    decision_from_values,
    text,
)

log = logging.getLogger("llmproxy.auth.lua")

_HOOK_STEP = 32  # instructions between two budget checks
_MAX_LOG_LINES = 20  # per call; more are counted, not kept
_LOG_LINE_CHARS = 500
_CHUNK_ID_BYTES = 59  # Lua truncates longer chunk names in its messages (LUA_IDSIZE 60)
_MAX_DEPTH = 8
_FIXED_ARGUMENTS = 6  # chunk, budget, deadline, timeout, api_key, now
_MAX_ARGUMENTS = 4000  # LuaJIT's C stack takes about 8000 values
_INT64 = 2**63


_PRELUDE_POSITION = re.compile(re.escape(PRELUDE_NAME[1:]) + r":\d+: ")


_Encode = Callable[[str], bytes]
# str.encode without arguments is the fast path; text holding lone surrogates (possible from JSON
# escapes) takes the lenient one instead of failing the request.
_strict: _Encode = str.encode
_lenient: _Encode = partial(str.encode, encoding="utf-8", errors="surrogatepass")


class _TooDeep(Exception):
    pass


def _refuse_attributes(obj: object, name: object, is_setting: bool) -> object:
    raise AttributeError("Python attributes are not reachable from Lua")


def _chunk_id(name: str) -> str:
    """The name Lua can show in full: long paths keep their end, which says the most."""
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) <= _CHUNK_ID_BYTES:
        return name
    return "..." + encoded[-(_CHUNK_ID_BYTES - 3) :].decode("utf-8", "ignore")


class LuaSandbox:
    """One Lua runtime shared by all scripts of one config snapshot.

    ::

        sandbox = LuaSandbox(instruction_limit=1_000_000, memory_limit=16 << 20, timeout=0.05)
        script = sandbox.compile("return data.status == 'active'", "provider redis")
        decision = script.decide(api_key="sk-llmp-AbC…", data={"status": "active"},
                                 request={...}, metadata={}, now=time.time())
        ...
        sandbox.close()  # when the snapshot retires

    Calls are synchronous and run on the event loop; the instruction and wall-clock budgets,
    re-armed for every call, are what keep them short. ``memory_limit`` caps the whole runtime.
    """

    _lua: ClassVar[ModuleType] = lupa.luajit21

    def __init__(
        self,
        *,
        instruction_limit: int = 1_000_000,
        memory_limit: int = 16 * 1024 * 1024,
        timeout: float = 0.05,
    ) -> None:
        self.instruction_limit = instruction_limit
        self.memory_limit = memory_limit
        self.timeout = timeout
        self._closed = False
        self._runtime: Any = self._lua.LuaRuntime(
            encoding=None,  # strings cross as bytes: a script's non-UTF-8 output cannot raise
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=False,
            attribute_filter=_refuse_attributes,
            max_memory=memory_limit,
        )
        lua_globals = self._runtime.globals()
        try:
            prelude = lua_globals[b"load"](PRELUDE.encode(), PRELUDE_NAME.encode())
            if isinstance(prelude, tuple):  # (nil, message)
                raise self._lua.LuaError(text(prelude[1]))
            (
                self._compile,
                self._invoke,
                self._invoke_packed,
                self._map,
                self._list,
                self._log_lines,
            ) = prelude(time.monotonic, _HOOK_STEP, _MAX_LOG_LINES, _LOG_LINE_CHARS * 4)
        except self._lua.LuaError as exc:
            raise LuaError(
                f"Lua sandbox: cannot start with memory_limit {memory_limit} bytes: {exc}"
            ) from None
        lua_globals[b"python"] = None
        self._runtime.gccollect()

    def compile(self, source: str, name: str) -> LuaScript:
        """Compile ``source`` as script ``name`` (its file path, or ``provider <name>``).

        Raises :class:`LuaCompileError` (``<name>:<line>: <message>``) on a syntax error or a
        binary chunk.
        """
        self._check_open(name)
        chunk_id = _chunk_id(name)
        try:
            chunk, error = self._compile(
                source.encode("utf-8", "surrogatepass"),
                chunk_id.encode("utf-8", "surrogatepass"),
            )
        except self._lua.LuaError as exc:
            self._collect_garbage()
            raise LuaCompileError(f"{name}: cannot compile: {_first_line(exc)}") from None
        if chunk is None:  # Lua 5.4 appends a traceback to some parser errors
            message = text(error).splitlines()[0] if error else "cannot compile"
            raise LuaCompileError(_renamed(message, chunk_id, name))
        return LuaScript(self, chunk, name, chunk_id)

    def close(self) -> None:
        """Release the runtime; scripts of this sandbox raise :class:`LuaRuntimeError` after."""
        self._closed = True
        self._compile = self._invoke = self._invoke_packed = None
        self._map = self._list = self._log_lines = None
        self._runtime = None

    def _check_open(self, name: str) -> None:
        if self._closed:
            raise LuaRuntimeError(f"{name}: the Lua sandbox of this config snapshot is closed")

    def _emit_logs(self, name: str, count: int) -> None:
        for index in range(1, min(count, _MAX_LOG_LINES) + 1):
            log.info("%s: %s", name, text(self._log_lines[index])[:_LOG_LINE_CHARS])
        if count > _MAX_LOG_LINES:
            log.info("%s: %d more log lines dropped", name, count - _MAX_LOG_LINES)

    def _collect_garbage(self) -> None:
        # LuaJIT has no emergency collection on a failed allocation: garbage left by one call
        # (a memory bomb, a big table) must not make the next call fail.
        if self._runtime.get_memory_used() > self.memory_limit // 4:
            self._runtime.gccollect()

    def _encode_table(
        self, mapping: Mapping[Any, Any], out: list[Any], depth: int, encode: _Encode
    ) -> None:
        append = out.append
        append(self._map)
        append(len(mapping))
        for key, value in mapping.items():
            append(encode(key) if type(key) is str else encode(str(key)))
            kind = type(value)
            if kind is str:
                append(encode(value))
            elif (
                kind is bool
                or kind is float
                or value is None
                or (kind is int and -_INT64 <= value < _INT64)
            ):
                append(value)
            else:
                self._encode_other(value, out, depth, encode)

    def _encode_other(self, value: object, out: list[Any], depth: int, encode: _Encode) -> None:
        if isinstance(value, Mapping | list | tuple):
            if depth >= _MAX_DEPTH:
                raise _TooDeep
            if isinstance(value, Mapping):
                self._encode_table(value, out, depth + 1, encode)
                return
            out.append(self._list)
            out.append(len(value))
            for item in value:
                self._encode_other(item, out, depth + 1, encode)
        elif value is None or isinstance(value, bool | bytes):
            out.append(value)
        elif isinstance(value, str):
            out.append(encode(value))
        elif isinstance(value, int):
            out.append(int(value) if -_INT64 <= value < _INT64 else float(value))
        elif isinstance(value, float):
            out.append(float(value))
        else:  # Decimal, datetime, ...: their text, never the object
            out.append(encode(str(value)))


class LuaScript:
    """A compiled decision script; :meth:`decide` runs it for one request."""

    __slots__ = ("_chunk", "_chunk_id", "_sandbox", "name")

    def __init__(self, sandbox: LuaSandbox, chunk: Any, name: str, chunk_id: str) -> None:
        self.name = name
        self._sandbox = sandbox
        self._chunk = chunk
        self._chunk_id = chunk_id

    def decide(
        self,
        *,
        api_key: str,
        data: Mapping[str, object],
        request: Mapping[str, object],
        metadata: Mapping[str, object],
        now: float,
    ) -> LuaDecision:
        """Run the script; raises :class:`LuaRuntimeError` when it fails or overruns its budget.

        ``api_key`` is the key's display prefix (never the secret); ``request`` holds ``method``,
        ``path``, ``ip``, ``headers`` (lowercase names, auth headers removed), ``model`` and
        ``stream``; ``metadata`` is what earlier providers decided.
        """
        sandbox = self._sandbox
        sandbox._check_open(self.name)
        try:
            args = self._arguments(api_key, data, request, metadata, now, _strict)
        except UnicodeEncodeError:
            args = self._arguments(api_key, data, request, metadata, now, _lenient)
        try:
            if len(args) <= _MAX_ARGUMENTS:
                result = sandbox._invoke(*args)
            else:
                packed = sandbox._runtime.table_from(args[_FIXED_ARGUMENTS:])
                result = sandbox._invoke_packed(*args[:_FIXED_ARGUMENTS], packed)
        except sandbox._lua.LuaError as exc:  # outside the script: no memory left for its tables
            sandbox._collect_garbage()
            raise LuaRuntimeError(f"{self.name}: {_first_line(exc)}") from None
        sandbox._collect_garbage()
        if result[1]:
            sandbox._emit_logs(self.name, result[1])
        if result[0] is not True:
            raise LuaRuntimeError(self._named(text(result[2])))
        return decision_from_values(self.name, result[2:])

    def _arguments(
        self,
        api_key: str,
        data: Mapping[str, object],
        request: Mapping[str, object],
        metadata: Mapping[str, object],
        now: float,
        encode: _Encode,
    ) -> list[Any]:
        sandbox = self._sandbox
        args: list[Any] = [
            self._chunk,
            sandbox.instruction_limit,
            time.monotonic() + sandbox.timeout,
            sandbox.timeout,
            encode(api_key),
            float(now),
        ]
        try:
            sandbox._encode_table(data, args, 1, encode)
            sandbox._encode_table(request, args, 1, encode)
            sandbox._encode_table(metadata, args, 1, encode)
        except _TooDeep:
            raise LuaRuntimeError(
                f"{self.name}: data, request or metadata nested deeper than {_MAX_DEPTH} levels"
            ) from None
        return args

    def _named(self, message: str) -> str:
        return _renamed(message, self._chunk_id, self.name)

    def __repr__(self) -> str:
        return f"LuaScript({self.name!r})"


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _renamed(message: str, chunk_id: str, name: str) -> str:
    """``message`` naming the script by its full name, whatever Lua had to shorten."""
    message = _PRELUDE_POSITION.sub("", message)
    if chunk_id != name:
        message = message.replace(chunk_id + ":", name + ":")
    if not message.startswith(name + ":"):
        message = f"{name}: {message}"
    return message

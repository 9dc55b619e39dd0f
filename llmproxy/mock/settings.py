"""The knobs of the mock backend, and the three ways to turn them.

A knob is set when the backend is built (``MockSettings(ttft=0.2)``), replaced while it runs
(``POST /mock/settings`` → :meth:`MockSettings.updated`), or overridden for one request through an
``x-mock-*`` header (:func:`with_header_overrides`). All three paths end in the same frozen,
validated dataclass, so the request handlers never see an invalid value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, get_args

import msgspec

Fault = Literal["500", "429", "529", "reset_before", "reset_mid", "stall"]
"""What goes wrong on purpose: ``"500"``/``"429"``/``"529"`` answer with that status and an error
body in the called API's shape (529 is Anthropic's ``overloaded_error``); ``"reset_before"`` drops
the connection without a response; ``"reset_mid"`` streams ``fault_after`` tokens, then drops it
(no ``[DONE]``); ``"stall"`` accepts and never answers."""

FAULTS: frozenset[str] = frozenset(get_args(Fault))


@dataclasses.dataclass(frozen=True, slots=True)
class MockSettings:
    """How the fake vLLM behaves. The defaults answer at once, like a very fast GPU::

    MockSettings()                                  # instant, 16 tokens, model "mock-model"
    MockSettings(ttft=0.2, itl=0.02, tokens=64)     # a realistic-looking stream
    MockSettings(fault="reset_mid", fault_after=3)  # dies after the third token
    MockSettings(slots=8, prefill_per_token=0.0005, prefix_cache_blocks=512)  # a small GPU

    The last four knobs (see :mod:`llmproxy.mock.gpu`) default to a GPU without limits or cache.
    """

    models: tuple[str, ...] = ("mock-model",)
    """Model names served; any other requested model gets vLLM's 404."""
    tokens: int = 16
    """Completion tokens when the request has no ``max_tokens`` (finish_reason ``"stop"``); for
    Anthropic's ``/v1/messages``, whose ``max_tokens`` is required, the most an answer has."""
    ttft: float = 0.0
    """Seconds before the first token (or before the whole non-streamed response)."""
    itl: float = 0.0
    """Seconds between two tokens."""
    embedding_dim: int = 8
    fault: Fault | None = None
    fault_after: int = 1
    """Tokens streamed before a ``reset_mid`` fault."""
    name: str = "mock"
    """Echoed in the ``x-mock-backend`` header of every response, to tell backends apart."""
    api_key: str | None = None
    """When set, ``/v1/*`` requires ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    slots: int = 0
    """Generations that run at once, like a GPU's batch; the others wait in a FIFO queue and show
    up as ``vllm:num_requests_waiting``. 0: unlimited, nothing ever waits."""
    prefill_per_token: float = 0.0
    """Seconds of prefill per prompt token *not* found in the prefix cache, paid while holding a
    slot, before the first token. What makes a prefix cache hit worth routing for."""
    prefix_cache_blocks: int = 0
    """Capacity of the LRU prefix cache in blocks of ``block_chars`` prompt characters; 0: none."""
    block_chars: int = 64
    """Prompt characters per prefix cache block; one block is ``block_chars / 4`` tokens."""

    def __post_init__(self) -> None:
        # A list from Python callers or JSON would make the settings unhashable; keep it a tuple.
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or not all(self.models):
            raise ValueError("models: give at least one non-empty model name")
        if self.tokens < 1:
            raise ValueError(f"tokens: must be >= 1, got {self.tokens}")
        if self.ttft < 0 or self.itl < 0:
            raise ValueError(f"ttft/itl: must be >= 0 seconds, got {self.ttft}/{self.itl}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim: must be >= 1, got {self.embedding_dim}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault: must be one of {sorted(FAULTS)} or None, got {self.fault!r}")
        if self.fault_after < 0:
            raise ValueError(f"fault_after: must be >= 0, got {self.fault_after}")
        if self.slots < 0:
            raise ValueError(f"slots: must be >= 0 (0 = unlimited), got {self.slots}")
        if self.prefill_per_token < 0:
            raise ValueError(f"prefill_per_token: must be >= 0 s, got {self.prefill_per_token}")
        if self.prefix_cache_blocks < 0:
            raise ValueError(
                f"prefix_cache_blocks: must be >= 0 (0 = no cache), got {self.prefix_cache_blocks}"
            )
        if self.block_chars < 4:
            raise ValueError(f"block_chars: must be >= 4 (one token), got {self.block_chars}")

    def updated(self, changes: Mapping[str, Any]) -> MockSettings:
        """Return a copy with ``changes`` (decoded JSON) applied; knobs not named keep their value.

        Raises ``ValueError`` naming the bad knob, so ``POST /mock/settings`` can answer 400.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        try:
            return msgspec.convert({**dataclasses.asdict(self), **changes}, MockSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None

    def as_json(self) -> dict[str, Any]:
        """The knobs as a JSON-ready dict (what ``GET /mock/settings`` returns)."""
        return dataclasses.asdict(self)


_HEADER_KNOBS: tuple[tuple[str, str, type[int] | type[float]], ...] = (
    ("x-mock-ttft", "ttft", float),
    ("x-mock-itl", "itl", float),
    ("x-mock-tokens", "tokens", int),
    ("x-mock-fault-after", "fault_after", int),
)


def with_header_overrides(settings: MockSettings, headers: Mapping[str, str]) -> MockSettings:
    """Apply the ``x-mock-*`` request headers on top of ``settings`` for one request.

    ``x-mock-fault: none`` (or an empty value) switches a configured fault off for that request.
    Most requests carry no such header, so the common path costs five dict lookups and no copy.
    """
    changes: dict[str, Any] = {}
    for header, knob, kind in _HEADER_KNOBS:
        raw = headers.get(header)
        if raw is not None:
            try:
                changes[knob] = kind(raw)
            except ValueError:
                raise ValueError(f"{header}: expected a {kind.__name__}, got {raw!r}") from None
    fault = headers.get("x-mock-fault")
    if fault is not None:
        changes["fault"] = None if fault in ("", "none") else fault
    if not changes:
        return settings
    return dataclasses.replace(settings, **changes)

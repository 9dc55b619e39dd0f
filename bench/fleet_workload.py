"""The multi-tenant workloads of the fleet benchmark, and the arithmetic that sizes them. Pure.

Tenants each have a long system prompt of their own and several conversations going on at once;
each request of a conversation repeats the system prompt and every earlier turn, then adds one new
user turn — the traffic where a replica's prefix cache pays off, if the gateway keeps sending a
tenant to the replica that holds its prefix. The assistant turns in the history are exactly what
the mock answers (:func:`llmproxy.mock.completion_text`), as a real client would send back.

Two shapes (:data:`WORKLOADS`): ``uniform``, where every tenant sends the same share, and
``skewed``, where one tenant sends half the requests (with as many more conversations, so each
conversation grows at the same pace) and every system prompt is 1,500 words or more: a tenant too
busy for one replica, whose overflow must land where its prefix gets cached too.

Everything is a function of a seed: every strategy of one run replays the same requests at the
same times, so their numbers compare like for like.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from llmproxy.mock import completion_text, estimate_tokens

_WORDS = (
    "account", "answer", "billing", "policy", "customer", "invoice", "refund", "contract",
    "shipping", "warranty", "device", "setting", "network", "password", "report", "summary",
    "language", "formal", "concise", "never", "always", "escalate", "verify", "identity",
    "product", "catalog", "region", "support", "ticket", "priority", "schedule", "holiday",
    "discount", "tier", "premium", "legal", "privacy", "record", "audit", "translate",
    "explain", "example", "format", "table", "markdown", "tone", "friendly", "apology",
)  # fmt: skip
"""Filler vocabulary of the generated prompts (their content does not matter, their bytes do)."""
_MEAN_WORD_CHARS = sum(len(word) for word in _WORDS) / len(_WORDS)


@dataclass(frozen=True, slots=True)
class Shape:
    """How the tenants talk: the knobs of the workload, not of the fleet."""

    tenants: int = 8
    conversations: int = 3
    """Conversations of one tenant going on at the same time."""
    turns: int = 8
    """User turns after which a conversation ends and a new one takes its place."""
    system_chars: tuple[int, int] = (4000, 8000)
    """Length range of a tenant's system prompt (each tenant draws one)."""
    system_words: tuple[int, int] | None = None
    """Length range of a tenant's system prompt in words; when set, instead of ``system_chars``."""
    heavy_share: float = 0.0
    """Share of all requests sent by tenant 0 (the others share the rest evenly); 0: every
    tenant sends the same share."""
    user_chars: tuple[int, int] = (100, 400)
    """Length range of one user turn."""
    answer_tokens: int = 32
    """Tokens of each assistant turn: the mock's ``tokens`` knob, as the history repeats them."""

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.conversations < 1 or self.turns < 1:
            raise ValueError("tenants, conversations and turns must be >= 1")
        if not 0.0 <= self.heavy_share < 1.0 or (self.heavy_share and self.tenants < 2):
            raise ValueError(f"heavy_share must be in [0, 1) with 2+ tenants: {self.heavy_share}")

    def share(self, tenant: int) -> float:
        """The share of all requests ``tenant`` sends."""
        if not self.heavy_share:
            return 1 / self.tenants
        if tenant == 0:
            return self.heavy_share
        return (1 - self.heavy_share) / (self.tenants - 1)

    def conversations_of(self, tenant: int) -> int:
        """Conversations ``tenant`` has going on at once: ``conversations`` for a tenant of the
        smallest share, more in proportion for a busier one (so every conversation advances at
        about the same pace: a tenant with more traffic has more users, not faster ones)."""
        least = min(self.share(t) for t in range(self.tenants))
        return max(1, round(self.conversations * self.share(tenant) / least))

    @property
    def mean_system_chars(self) -> float:
        """A system prompt's expected length in characters."""
        if self.system_words is None:
            return sum(self.system_chars) / 2
        return sum(self.system_words) / 2 * (_MEAN_WORD_CHARS + 1)

    @property
    def mean_turn_chars(self) -> float:
        """Characters one user turn plus its answer add to a conversation, on average."""
        low, high = self.user_chars
        return (low + high) / 2 + len(completion_text(self.answer_tokens))


@dataclass(frozen=True, slots=True)
class Turn:
    """One request: the ``turn``-th user turn of conversation ``conversation`` of ``tenant``."""

    tenant: int
    conversation: int
    """Serial number over the whole workload (new conversations get new numbers)."""
    turn: int
    """1 for a conversation's first request."""
    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs: system prompt, earlier turns, the new user turn."""

    @property
    def prompt_chars(self) -> int:
        return sum(len(content) for _, content in self.messages)

    @property
    def prompt_tokens(self) -> int:
        """What the mock bills (and prefills) for this prompt."""
        return estimate_tokens(self.prompt_chars)

    def body(self, model: str) -> bytes:
        """The streamed chat completion request, with the usage event at the end."""
        return json.dumps(
            {
                "model": model,
                "messages": [{"role": role, "content": text} for role, text in self.messages],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()


def _words(rng: random.Random, chars: int, opening: str = "") -> str:
    text = [opening] if opening else []
    size = len(opening)
    while size < chars:
        word = rng.choice(_WORDS)
        text.append(word)
        size += len(word) + 1
    return " ".join(text)[:chars]


def _word_count(rng: random.Random, words: int, opening: str) -> str:
    return " ".join([opening, *(rng.choice(_WORDS) for _ in range(words - len(opening.split())))])


def system_prompts(shape: Shape, seed: int) -> list[str]:
    """One distinct system prompt per tenant; different from their first characters on, so two
    tenants never share a cache block."""
    rng = random.Random(f"{seed}:system")
    prompts = []
    for tenant in range(shape.tenants):
        opening = f"Tenant {tenant}: you are the assistant of"
        if shape.system_words is None:
            prompts.append(_words(rng, rng.randint(*shape.system_chars), opening))
        else:
            prompts.append(_word_count(rng, rng.randint(*shape.system_words), opening))
    return prompts


def turns(shape: Shape, seed: int) -> Iterator[Turn]:
    """The endless request sequence: a tenant drawn by its share, one of its conversations (picked
    uniformly), that conversation's next turn. Independent of time, so the same seed gives the
    same requests at any arrival rate."""
    rng = random.Random(f"{seed}:turns")
    systems = system_prompts(shape, seed)
    answer = completion_text(shape.answer_tokens)
    # Per tenant, per conversation slot: (serial number, history after the system prompt).
    live: list[list[tuple[int, list[tuple[str, str]]] | None]] = [
        [None] * shape.conversations_of(tenant) for tenant in range(shape.tenants)
    ]
    serial = 0
    while True:
        if shape.heavy_share and rng.random() < shape.heavy_share:
            tenant = 0
        elif shape.heavy_share:
            tenant = 1 + rng.randrange(shape.tenants - 1)
        else:
            tenant = rng.randrange(shape.tenants)
        slot = rng.randrange(len(live[tenant]))
        current = live[tenant][slot]
        if current is None or len(current[1]) >= 2 * shape.turns:
            current = (serial, [])
            serial += 1
            live[tenant][slot] = current
        number, history = current
        question = _words(rng, rng.randint(*shape.user_chars), f"Question {len(history) // 2 + 1}:")
        messages = (("system", systems[tenant]), *history, ("user", question))
        yield Turn(tenant, number, len(history) // 2 + 1, messages)
        history += [("user", question), ("assistant", answer)]


def arrival_times(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrivals (exponential gaps) at ``rate`` per second over ``[0, duration)``: an
    open loop, so a slow fleet gets the same requests at the same times as a fast one."""
    rng = random.Random(f"{seed}:arrivals")
    times = []
    now = rng.expovariate(rate)
    while now < duration:
        times.append(now)
        now += rng.expovariate(rate)
    return times


def schedule(shape: Shape, rate: float, duration: float, seed: int) -> list[tuple[float, Turn]]:
    """The requests of one run with their send times, seconds from its start."""
    return list(zip(arrival_times(rate, duration, seed), turns(shape, seed), strict=False))


def mean_prompt_tokens(shape: Shape, seed: int, sample: int = 2000) -> float:
    """Average prompt tokens per request over the first ``sample`` requests of the sequence."""
    return sum(turn.prompt_tokens for turn in islice(turns(shape, seed), sample)) / sample


def service_seconds(
    *, prompt_tokens: float, tokens: int, itl: float, prefill_per_token: float, ttft: float = 0.0
) -> float:
    """How long one request holds a mock slot when nothing of its prompt is cached: ``ttft``,
    prefill of every prompt token, then ``tokens`` tokens ``itl`` apart (the first comes at once).
    """
    return ttft + prefill_per_token * prompt_tokens + itl * (tokens - 1)


def arrival_rate(*, replicas: int, slots: int, load: float, service: float) -> float:
    """Requests per second that keep ``load`` (0..1) of the fleet's slots busy (Little's law:
    busy slots = rate × time each is held), sized on the uncached ``service`` time so the fleet
    copes even when no strategy gets a cache hit."""
    return load * replicas * slots / service


def cache_blocks_for(shape: Shape, tenants: float, block_chars: int) -> int:
    """Prefix cache blocks that hold about ``tenants`` tenants' working set: the system prompt
    plus the history of each live conversation, which is on average half-way through its turns
    (with a heavy tenant, the mean over the tenants: its many conversations count for more).
    """
    conversations = sum(shape.conversations_of(t) for t in range(shape.tenants)) / shape.tenants
    history = conversations * (shape.turns + 1) / 2 * shape.mean_turn_chars
    return round(tenants * (shape.mean_system_chars + history) / block_chars)


WORKLOADS: dict[str, Shape] = {
    "uniform": Shape(),
    "skewed": Shape(heavy_share=0.5, system_words=(1500, 2000)),
}
"""The workload shapes by name, as ``--workload`` takes them (``answer_tokens`` is then set to
the fleet's ``tokens``)."""

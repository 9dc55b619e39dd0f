"""The simulated GPU of one mock backend: a few batch slots with a queue, and a prefix cache.

A real vLLM replica runs a bounded batch; the requests that do not fit wait, and their time to
first token grows with the queue. Before its first token a request pays prefill for every prompt
token whose KV state is not already in the prefix cache. Those two effects are what a fleet-aware
gateway exploits (send a tenant where its prefix is cached, avoid replicas with a queue), so the
mock reproduces them, opt-in, with three knobs (see :class:`~llmproxy.mock.settings.MockSettings`):

- ``slots``: at most that many generations hold a slot at once; the rest wait in FIFO order
  (:class:`SlotPool`).
- ``prefill_per_token``: seconds per *uncached* prompt token, slept while holding the slot.
- ``prefix_cache_blocks`` / ``block_chars``: an LRU of prompt blocks (:class:`PrefixCache`).

The cache is pure (text in, block counts out) and the pool uses only asyncio futures, so both are
unit-tested without a server; :class:`Gpu` ties them to the settings and to the counters of
:class:`~llmproxy.mock.stats.MockStats`.

Simplifications, each small next to a system prompt of thousands of tokens: a prompt's blocks are
cached as soon as it gets a slot (vLLM: once their prefill is computed), and generated tokens are
not cached (vLLM caches them too), so a conversation's next turn pays prefill for the previous
answer again. The KV cache itself is not modelled: a slot holds any prompt length.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmproxy.mock.settings import MockSettings
from llmproxy.mock.stats import MockStats

CHARS_PER_TOKEN = 4
"""The mock's token estimate (:func:`~llmproxy.mock._text.estimate_tokens`): four characters."""


def block_hashes(prompt: str, block_chars: int, seed: str = "") -> list[bytes]:
    """The identities of the *full* ``block_chars``-character blocks of ``prompt``, in order.

    Each is chained on the previous one, like vLLM's block hashes, so a block's identity stands
    for the whole prompt up to and including it: two prompts share block ``i`` only if they share
    their first ``i + 1`` blocks. A trailing partial block is not cached (vLLM caches full blocks
    only). ``seed`` (the model name) keeps two models from sharing KV state.
    """
    digest = hashlib.blake2b(seed.encode(), digest_size=16).digest()
    hashes = []
    for start in range(0, len(prompt) - block_chars + 1, block_chars):
        block = prompt[start : start + block_chars].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        hashes.append(digest)
    return hashes


def cached_tokens(blocks: int, block_chars: int) -> int:
    """Prompt tokens covered by ``blocks`` cached blocks: whole tokens only, so rounded down."""
    return blocks * block_chars // CHARS_PER_TOKEN


class PrefixCache:
    """An LRU set of block hashes with room for ``capacity`` blocks (0: caches nothing).

    :meth:`lookup_and_insert` is one scheduling step of vLLM's prefix caching: count the leading
    blocks already cached, then cache (or refresh) all of the prompt's blocks. They are refreshed
    from the last to the first, so the head of a prompt is the most recent and the tail of the
    least recently used prompt is evicted first, as vLLM frees a request's blocks in reverse: the
    shared system prompt outlives the conversation tails hanging off it.
    """

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: bytes) -> bool:
        return block in self._blocks

    def lookup_and_insert(self, hashes: list[bytes]) -> int:
        """How many of the leading ``hashes`` were cached; all of them are cached afterwards."""
        blocks = self._blocks
        hits = 0
        for block in hashes:
            if block not in blocks:
                break
            hits += 1
        if self.capacity <= 0:
            return hits
        for block in reversed(hashes):
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = None
        self._evict()
        return hits

    def resize(self, capacity: int) -> None:
        """Change the capacity, evicting the least recently used blocks if it shrank."""
        self.capacity = capacity
        self._evict()

    def flush(self) -> None:
        """Forget every block: the next requests start cold."""
        self._blocks.clear()

    def _evict(self) -> None:
        blocks = self._blocks
        excess = len(blocks) - max(self.capacity, 0)
        for _ in range(excess):
            blocks.popitem(last=False)


class SlotPool:
    """At most ``slots`` holders at once (0: unlimited); the others wait, strictly first in,
    first out.

    A freed slot is handed to the oldest waiter directly rather than put back for anyone to take,
    so a request arriving later can never overtake one already queued. A waiter cancelled in the
    queue (its client left) leaves it; one cancelled just after being handed a slot passes it on.
    """

    __slots__ = ("_slots", "_waiters", "running")

    def __init__(self, slots: int = 0) -> None:
        self._slots = slots
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.running = 0
        """Slots held now."""

    @property
    def slots(self) -> int:
        return self._slots

    @slots.setter
    def slots(self, slots: int) -> None:
        """Resize at run time; growing lets queued requests in at once, shrinking lets the
        running ones finish (``running`` may exceed ``slots`` until they do)."""
        self._slots = slots
        self._wake()

    @property
    def waiting(self) -> int:
        """Requests in the queue now."""
        return len(self._waiters)

    def has_room(self) -> bool:
        """True when :meth:`try_acquire` would succeed: a free slot and nobody queued before."""
        return not self._waiters and self._free()

    def try_acquire(self) -> bool:
        """Take a slot without waiting, if there is one and nobody is queued for it."""
        if self.has_room():
            self.running += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in line for it when there is none."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            else:
                with contextlib.suppress(ValueError):  # already dropped by _wake
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the oldest waiter, if any, gets it."""
        self.running -= 1
        self._wake()

    def _free(self) -> bool:
        return self._slots <= 0 or self.running < self._slots

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._free():
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter not yet removed by its own task
                self.running += 1
                waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class Prefill:
    """What a request got when it was scheduled: prompt tokens, how many were cached, and the
    prefill time it must spend before its first token."""

    prompt_tokens: int
    cached_tokens: int
    seconds: float


class Gpu:
    """The slot pool and the prefix cache of one mock backend, with their counters in ``stats``.

    :meth:`configure` applies the knobs when the settings change (the server calls it); each
    generation then runs inside :meth:`generation`::

        async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
            await asyncio.sleep(settings.ttft + prefill.seconds)
            ...tokens...
    """

    __slots__ = ("_block_chars", "cache", "pool", "stats")

    def __init__(self, stats: MockStats, settings: MockSettings | None = None) -> None:
        self.stats = stats
        self.pool = SlotPool()
        self.cache = PrefixCache(0)
        self._block_chars = 0
        self.configure(settings or MockSettings())

    def configure(self, settings: MockSettings) -> None:
        """Apply ``slots``, ``prefix_cache_blocks`` and ``block_chars``; a new block size makes
        every cached block meaningless, so the cache is flushed then."""
        if settings.slots != self.pool.slots:
            self.pool.slots = settings.slots
        if settings.block_chars != self._block_chars:
            self._block_chars = settings.block_chars
            self.cache.flush()
        if settings.prefix_cache_blocks != self.cache.capacity:
            self.cache.resize(settings.prefix_cache_blocks)

    @contextlib.asynccontextmanager
    async def generation(
        self, settings: MockSettings, model: str, prompt_text: str, prompt_tokens: int
    ) -> AsyncIterator[Prefill]:
        """Hold a slot for one generation (queueing for it if needed) and look its prompt up in
        the prefix cache; yields the prefill the caller must sleep before the first token."""
        stats, pool = self.stats, self.pool
        if not pool.try_acquire():
            stats.waiting[model] = stats.waiting.get(model, 0) + 1
            stats.queued_peak = max(stats.queued_peak, pool.waiting + 1)
            try:
                await pool.acquire()
            finally:
                stats.waiting[model] -= 1
        try:
            stats.running[model] = stats.running.get(model, 0) + 1
            stats.peak_running = max(stats.peak_running, pool.running)
            cached = self._lookup(settings, model, prompt_text, prompt_tokens)
            uncached = prompt_tokens - cached
            yield Prefill(prompt_tokens, cached, settings.prefill_per_token * uncached)
        finally:
            stats.running[model] -= 1
            pool.release()

    def _lookup(self, settings: MockSettings, model: str, prompt_text: str, tokens: int) -> int:
        if settings.prefix_cache_blocks <= 0:
            return 0
        hashes = block_hashes(prompt_text, self._block_chars, model)
        cached = min(tokens, cached_tokens(self.cache.lookup_and_insert(hashes), self._block_chars))
        stats = self.stats
        stats.prefix_queries[model] = stats.prefix_queries.get(model, 0) + tokens
        stats.prefix_hits[model] = stats.prefix_hits.get(model, 0) + cached
        return cached

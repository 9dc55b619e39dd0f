"""The simulated GPU's pure parts: chained block hashes, the LRU prefix cache and the slot pool."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.mock import MockSettings, MockStats
from llmproxy.mock.gpu import Gpu, PrefixCache, SlotPool, block_hashes, cached_tokens


def test_block_hashes_are_chained_over_full_blocks() -> None:
    """A block's identity covers everything before it; a trailing partial block is not cached."""
    a = block_hashes("x" * 64 + "y" * 64 + "z" * 10, 64)
    b = block_hashes("w" * 64 + "y" * 64, 64)
    assert len(a) == 2
    assert a[0] != b[0]
    assert a[1] != b[1]  # same text in block 1, but a different prefix before it
    assert block_hashes("x" * 64 + "q" * 64, 64)[0] == a[0]
    assert block_hashes("x" * 63, 64) == []
    assert block_hashes("x" * 64, 64, seed="other-model") != block_hashes("x" * 64, 64)


def test_cached_tokens_uses_the_mock_estimate() -> None:
    """Four characters per token, whole tokens only."""
    assert cached_tokens(3, 64) == 48
    assert cached_tokens(1, 6) == 1


def test_repeated_prompt_hits_every_block() -> None:
    cache = PrefixCache(100)
    hashes = block_hashes("s" * 640, 64)
    assert cache.lookup_and_insert(hashes) == 0
    assert cache.lookup_and_insert(hashes) == 10
    assert len(cache) == 10


def test_shared_prefix_hits_only_the_shared_blocks() -> None:
    """Prompts sharing 2.5 blocks of text share 2 cached blocks, and nothing after a difference."""
    cache = PrefixCache(100)
    system = "s" * 160
    cache.lookup_and_insert(block_hashes(system + "a" * 200, 64))
    assert cache.lookup_and_insert(block_hashes(system + "b" * 200, 64)) == 2
    # A prompt that differs in its first block hits nothing, though later text is the same.
    assert cache.lookup_and_insert(block_hashes("t" + system[1:] + "a" * 200, 64)) == 0


def test_lru_evicts_least_recently_used_tail_first() -> None:
    """Past capacity the least recently used prompt goes, its tail before its head."""
    cache = PrefixCache(3)
    a = block_hashes("a" * 128, 64)
    b = block_hashes("b" * 128, 64)
    cache.lookup_and_insert(a)
    cache.lookup_and_insert(b)  # 4 blocks for 3 places: a's tail is evicted, its head stays
    assert (a[0] in cache, a[1] in cache) == (True, False)
    assert cache.lookup_and_insert(a) == 1  # a again: its tail is back, b's tail is evicted
    assert (b[0] in cache, b[1] in cache) == (True, False)
    assert cache.lookup_and_insert(b) == 1
    cache.lookup_and_insert(block_hashes("c" * 192, 64))  # 3 new blocks push out a and b
    assert cache.lookup_and_insert(a) == 0


def test_lru_refresh_protects_a_hot_prompt() -> None:
    """A prompt used again is refreshed and survives newer one-off prompts."""
    cache = PrefixCache(4)
    hot = block_hashes("h" * 128, 64)
    cache.lookup_and_insert(hot)
    for letter in "cd":
        cache.lookup_and_insert(block_hashes(letter * 64, 64))
        assert cache.lookup_and_insert(hot) == 2
    cache.lookup_and_insert(block_hashes("e" * 128, 64))
    assert cache.lookup_and_insert(hot) == 2


def test_resize_and_flush() -> None:
    cache = PrefixCache(10)
    cache.lookup_and_insert(block_hashes("a" * 640, 64))
    cache.resize(4)
    assert len(cache) == 4
    cache.flush()
    assert len(cache) == 0
    cache.resize(0)  # no cache: nothing is stored, nothing hits
    hashes = block_hashes("a" * 640, 64)
    cache.lookup_and_insert(hashes)
    assert cache.lookup_and_insert(hashes) == 0


async def test_slot_pool_is_fifo() -> None:
    """Freed slots go to waiters in arrival order, never to a later arrival."""
    pool = SlotPool(1)
    await pool.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await pool.acquire()
        order.append(i)
        await asyncio.sleep(0)
        pool.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # registered in this order
    assert (pool.running, pool.waiting) == (1, 5)
    pool.release()
    assert not pool.try_acquire()  # handed to waiter 0, not free for a newcomer
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (pool.running, pool.waiting) == (0, 0)


async def test_slot_pool_cancellation_passes_the_slot_on() -> None:
    """A waiter cancelled in the queue leaves it; one cancelled after the handoff releases."""
    pool = SlotPool(1)
    await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert pool.waiting == 1
    pool.release()  # handed to second ...
    second.cancel()  # ... which is cancelled before it runs: the slot is given back
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (pool.running, pool.waiting) == (0, 0)
    assert pool.try_acquire()


async def test_slot_pool_resize_lets_waiters_in() -> None:
    pool = SlotPool(1)
    await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    pool.slots = 3
    await asyncio.gather(*waiters[:2])
    assert (pool.running, pool.waiting) == (3, 1)
    pool.slots = 0  # unlimited
    await waiters[2]
    assert pool.running == 4


async def test_gpu_counts_prefill_and_cache() -> None:
    """The GPU yields the prefill of uncached tokens and counts cache queries and hits."""
    stats = MockStats()
    settings = MockSettings(slots=2, prefill_per_token=0.01, prefix_cache_blocks=8)
    gpu = Gpu(stats, settings)
    prompt = "p" * 256  # 4 blocks, 64 tokens
    async with gpu.generation(settings, "m", prompt, 64) as first:
        assert stats.running == {"m": 1}
    async with gpu.generation(settings, "m", prompt, 64) as second:
        pass
    assert first.cached_tokens == 0
    assert first.seconds == pytest.approx(0.64)
    assert (second.cached_tokens, second.seconds) == (64, 0.0)
    assert (stats.prefix_queries, stats.prefix_hits) == ({"m": 128}, {"m": 64})
    assert (stats.running, stats.peak_running) == ({"m": 0}, 1)


def test_gpu_configure_applies_the_knobs() -> None:
    """New slots and cache size apply at once; a new block size flushes the cache."""
    gpu = Gpu(MockStats())
    gpu.configure(MockSettings(slots=3, prefix_cache_blocks=5))
    gpu.cache.lookup_and_insert(block_hashes("a" * 256, 64))
    assert (gpu.pool.slots, gpu.cache.capacity, len(gpu.cache)) == (3, 5, 4)
    gpu.configure(MockSettings(slots=3, prefix_cache_blocks=5, block_chars=32))
    assert len(gpu.cache) == 0

"""The lookup cache: bounded, expiring, and never a place where a revoked key lingers."""

from __future__ import annotations

from llmproxy.auth.cache import LookupCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hits_expire_after_their_ttl() -> None:
    """Found keys live ttl seconds, unknown keys negative_ttl seconds."""
    clock = Clock()
    cache: LookupCache[str] = LookupCache(10.0, 2.0, 100, clock)
    cache.put("a", "data")
    cache.put("b", None)
    assert cache.get("a") == (True, "data")
    assert cache.get("b") == (True, None)
    clock.now = 2.5
    assert cache.get("a") == (True, "data")
    assert cache.get("b") == (False, None)
    clock.now = 10.5
    assert cache.get("a") == (False, None)


def test_size_is_bounded_oldest_first() -> None:
    """Past max_entries the oldest entry is dropped."""
    cache: LookupCache[int] = LookupCache(10.0, 2.0, 3, Clock())
    for index in range(5):
        cache.put(str(index), index)
    assert len(cache) == 3
    assert cache.get("0") == (False, None)
    assert cache.get("4") == (True, 4)


def test_invalidate_one_or_all() -> None:
    """Invalidation forgets a key at once."""
    cache: LookupCache[int] = LookupCache(10.0, 2.0, 10, Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.invalidate("a")
    assert cache.get("a") == (False, None)
    assert cache.get("b") == (True, 2)
    cache.invalidate()
    assert len(cache) == 0


def test_zero_ttl_disables_caching() -> None:
    """A negative_ttl of 0 means unknown keys are always asked again."""
    cache: LookupCache[int] = LookupCache(10.0, 0.0, 10, Clock())
    cache.put("x", None)
    assert cache.get("x") == (False, None)

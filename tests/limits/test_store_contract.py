"""What every limit store does, pinned for the memory store and the Redis store alike."""

from __future__ import annotations

import asyncio
import random

import pytest

from llmproxy.limits import KeyPolicy, Rate

SLOW = Rate(per_second=0.001, burst=2)  # refills nothing within a test


async def test_request_bucket_burst_then_refusal(store):
    """A full bucket admits `burst` requests, then refuses with reason requests and a wait."""
    policy = KeyPolicy(requests=Rate(per_second=0.5, burst=2))
    first = await store.admit("k", policy, 0)
    second = await store.admit("k", policy, 0)
    third = await store.admit("k", policy, 0)
    assert [first.allowed, second.allowed, third.allowed] == [True, True, False]
    assert (first.requests_limit, first.requests_remaining) == (2, 1)
    assert second.requests_remaining == 0
    assert third.reason == "requests"
    assert third.lease is None
    assert third.retry_after == pytest.approx(2.0, abs=0.05)
    assert third.requests_reset == pytest.approx(4.0, abs=0.05)


async def test_request_bucket_refills(store):
    """After retry_after the bucket admits again."""
    policy = KeyPolicy(requests=Rate(per_second=20.0, burst=1))
    assert (await store.admit("k", policy, 0)).allowed
    refused = await store.admit("k", policy, 0)
    assert not refused.allowed
    assert refused.retry_after is not None
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await store.admit("k", policy, 0)).allowed


async def test_rate_only_policy_has_nothing_to_settle(store):
    """With only a request rate nothing is held: no lease, no tokens headers."""
    admission = await store.admit("k", KeyPolicy(requests=SLOW), 100)
    assert admission.allowed
    assert admission.lease is None
    assert admission.tokens_limit is None
    assert await store.in_flight("k") == 0


async def test_global_bucket_is_one_for_all(store):
    """check_global takes from one shared bucket whatever the key."""
    rate = Rate(per_second=0.001, burst=3)
    answers = [await store.check_global(rate) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert answers[2].requests_remaining == 0
    assert answers[3].reason == "requests"
    assert answers[3].retry_after == pytest.approx(1000.0, rel=0.01)


async def test_concurrency_slots(store):
    """max_concurrent slots are held until settled, and a refusal says retry in a second."""
    policy = KeyPolicy(max_concurrent=2)
    first = await store.admit("k", policy, 0)
    second = await store.admit("k", policy, 0)
    refused = await store.admit("k", policy, 0)
    assert first.lease is not None
    assert second.lease not in (None, first.lease)
    assert (refused.allowed, refused.reason, refused.retry_after) == (False, "concurrency", 1.0)
    assert await store.in_flight("k") == 2
    await store.settle("k", policy, first.lease, 0, 0)
    assert await store.in_flight("k") == 1
    assert (await store.admit("k", policy, 0)).allowed


async def test_concurrency_refusal_takes_no_request_token(store):
    """All or nothing: a request refused for its slot keeps the bucket's token."""
    policy = KeyPolicy(requests=SLOW, max_concurrent=1)
    first = await store.admit("k", policy, 0)
    refused = await store.admit("k", policy, 0)
    assert refused.reason == "concurrency"
    assert refused.requests_remaining == 1
    await store.settle("k", policy, first.lease, 0, 0)
    assert (await store.admit("k", policy, 0)).allowed
    assert (await store.admit("k", policy, 0)).reason == "requests"


async def test_tokens_refusal_takes_nothing(store):
    """All or nothing: a reservation refused by TPM takes no request token and no slot."""
    policy = KeyPolicy(requests=SLOW, max_concurrent=1, tokens_per_minute=600)
    refused = await store.admit("k", policy, 601)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert refused.retry_after is None  # bigger than the whole budget: waiting cannot help
    assert refused.requests_remaining == 2
    assert await store.in_flight("k") == 0
    admitted = await store.admit("k", policy, 600)
    assert admitted.allowed
    assert admitted.tokens_remaining == 0


async def test_quota_refusal_takes_nothing(store):
    """All or nothing: a quota refusal takes no request token, no slot and no TPM tokens."""
    policy = KeyPolicy(requests=SLOW, max_concurrent=1, tokens_per_minute=6000, total_quota=50)
    refused = await store.admit("k", policy, 60)
    assert (refused.allowed, refused.reason) == (False, "quota")
    assert refused.retry_after is None  # the quota itself cannot cover it
    assert refused.requests_remaining == 2
    assert refused.tokens_remaining == 6000
    assert await store.in_flight("k") == 0
    assert await store.quota_used("k") == 0


async def test_tpm_reserve_then_refund(store):
    """Settling below the reservation gives the difference back to the TPM bucket."""
    policy = KeyPolicy(tokens_per_minute=1000)
    admitted = await store.admit("k", policy, 600)
    assert admitted.tokens_remaining in range(400, 402)
    assert (await store.admit("k", policy, 500)).reason == "tokens"
    await store.settle("k", policy, admitted.lease, 600, 100)
    probe = await store.admit("k", policy, 0)
    assert probe.tokens_remaining in range(900, 905)


async def test_tpm_overcharge(store):
    """Using more than reserved charges the excess: the bucket can go below zero."""
    policy = KeyPolicy(tokens_per_minute=1000)
    admitted = await store.admit("k", policy, 100)
    await store.settle("k", policy, admitted.lease, 100, 1700)
    refused = await store.admit("k", policy, 1)
    assert refused.reason == "tokens"
    assert refused.tokens_remaining == 0
    assert refused.retry_after == pytest.approx(60 * 701 / 1000, rel=0.01)  # 700 of debt + 1


async def test_quota_reserve_then_settle(store):
    """Quota counts real usage; reservations of requests in flight block what they cover."""
    policy = KeyPolicy(total_quota=1000)
    first = await store.admit("k", policy, 600)
    refused = await store.admit("k", policy, 500)
    assert (refused.reason, refused.retry_after) == ("quota", 1.0)  # in flight may settle lower
    await store.settle("k", policy, first.lease, 600, 250)
    assert await store.quota_used("k") == 250
    second = await store.admit("k", policy, 750)
    assert second.allowed
    await store.settle("k", policy, second.lease, 750, 750)
    assert await store.quota_used("k") == 1000
    spent = await store.admit("k", policy, 1)
    assert (spent.reason, spent.retry_after) == ("quota", None)


async def test_quota_baseline_is_the_larger_count(store):
    """The store counts from max(its own counter, the key data's used_quota)."""
    admitted = await store.admit("k", KeyPolicy(total_quota=1000, used_quota=300), 100)
    await store.settle("k", KeyPolicy(total_quota=1000), admitted.lease, 100, 50)
    assert await store.quota_used("k") == 350
    again = await store.admit("k", KeyPolicy(total_quota=1000, used_quota=200), 650)
    assert again.allowed  # 1000 - 350 = 650: the lower data value is ignored
    await store.settle("k", KeyPolicy(total_quota=1000), again.lease, 650, 0)
    refused = await store.admit("k", KeyPolicy(total_quota=1000, used_quota=900), 101)
    assert refused.reason == "quota"  # the data now says more was used elsewhere


async def test_settle_is_idempotent_per_lease(store):
    """Settling one lease twice frees one slot and counts its usage once."""
    policy = KeyPolicy(max_concurrent=5, tokens_per_minute=1000, total_quota=10_000)
    kept = await store.admit("k", policy, 100)
    twice = await store.admit("k", policy, 100)
    for _ in range(2):
        await store.settle("k", policy, twice.lease, 100, 40)
    assert await store.in_flight("k") == 1
    assert await store.quota_used("k") == 40
    probe = await store.admit("k", policy, 0)
    assert probe.tokens_remaining in range(860, 865)  # 1000 - 100 (kept) - 40 (used once)
    await store.settle("k", policy, kept.lease, 100, 0)


async def test_unknown_lease_changes_nothing(store):
    """A settle of a lease never issued changes nothing."""
    policy = KeyPolicy(max_concurrent=1, total_quota=10)
    admitted = await store.admit("k", policy, 5)
    await store.settle("k", policy, "r:not-a-lease", 5, 5)
    await store.settle("k", policy, "m:999999", 5, 5)
    assert await store.in_flight("k") == 1
    assert await store.quota_used("k") == 0
    await store.settle("k", policy, admitted.lease, 5, 5)


async def test_keys_are_independent(store):
    """One key's limits do not touch another's."""
    policy = KeyPolicy(requests=SLOW, max_concurrent=1)
    assert (await store.admit("a", policy, 0)).allowed
    assert (await store.admit("b", policy, 0)).allowed
    assert (await store.admit("a", policy, 0)).reason == "concurrency"


async def test_concurrent_admits_never_overrun_the_quota(store):
    """64 simultaneous admits against a quota for 10 reservations admit exactly 10, and
    quota_used is the sum of the real usage once they settle."""
    policy = KeyPolicy(total_quota=1000)
    answers = await asyncio.gather(*(store.admit("k", policy, 100) for _ in range(64)))
    admitted = [a for a in answers if a.allowed]
    assert len(admitted) == 10
    assert {a.reason for a in answers if not a.allowed} == {"quota"}
    usage = [random.randint(0, 100) for _ in admitted]
    await asyncio.gather(
        *(
            store.settle("k", policy, a.lease, 100, used)
            for a, used in zip(admitted, usage, strict=True)
        )
    )
    assert await store.quota_used("k") == sum(usage)
    assert await store.in_flight("k") == 0


async def test_slots_return_to_zero_after_many_cycles(store):
    """1000 admit/settle cycles — a third settled with used=0 like cancellations — leak no slot."""
    policy = KeyPolicy(max_concurrent=8, tokens_per_minute=10**9, total_quota=10**12)

    async def cycle(n: int) -> None:
        admission = await store.admit("k", policy, 10)
        if admission.allowed:
            assert admission.lease is not None
            await asyncio.sleep(0)
            await store.settle("k", policy, admission.lease, 10, 0 if n % 3 == 0 else 7)

    for start in range(0, 1000, 50):
        await asyncio.gather(*(cycle(n) for n in range(start, start + 50)))
    assert await store.in_flight("k") == 0
    probe = [await store.admit("k", policy, 0) for _ in range(8)]
    assert all(a.allowed for a in probe)


async def test_negative_reservation_counts_as_none(store):
    """A negative reservation (a caller's bad estimate) reserves nothing and refunds nothing."""
    policy = KeyPolicy(tokens_per_minute=1000, total_quota=1000)
    admitted = await store.admit("k", policy, -500)
    assert admitted.tokens_remaining == 1000
    await store.settle("k", policy, admitted.lease, -500, 0)
    assert (await store.admit("k", policy, 1000)).allowed

"""The multi-admission limits step: a key's and its team's limits, all or nothing, stricter wins."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.auth.keydata import KeyLimits
from llmproxy.auth.pipeline import Identity
from llmproxy.config.model import PerKeyRateSpec
from llmproxy.errors import GatewayError
from llmproxy.gateway import limits_step
from llmproxy.gateway.limits_step import Limit
from llmproxy.limits import Admission, KeyPolicy, Rate
from llmproxy.teams import Team, TeamIndex
from tests.harness import gateway, make_config, mock_backend


def _identity(team: str = "", **limits: int) -> Identity:
    return Identity("key_a", "sk-…", "a", "", "p", KeyLimits(**limits), team=team)


def test_limits_of_lists_the_key_then_its_limited_team() -> None:
    """Key first (when limited), then its team (when it has limits); unknown teams add none.
    A team's rpm is a per-minute limit bursting by ``per_key.burst_size`` (else the minute's
    count), its header limit the rpm."""
    spec = PerKeyRateSpec(burst_size=3)
    teams = TeamIndex([Team("ml", rpm=120, total_quota=50, used_quota=7), Team("free")])
    limits = limits_step.limits_of(spec, _identity("ml", max_concurrent=2), teams)
    assert [limit.limit_id for limit in limits] == ["key_a", "team:ml"]
    assert limits[1] == Limit(
        "team:ml",
        KeyPolicy(requests=Rate(2.0, 3, 120), total_quota=50, used_quota=7),
        "ml",
    )
    assert [x.limit_id for x in limits_step.limits_of(spec, _identity("ml"), teams)] == ["team:ml"]
    assert limits_step.limits_of(spec, _identity("free"), teams) == []
    assert limits_step.limits_of(spec, _identity("ghost"), teams) == []
    unshaped = limits_step.team_policy(PerKeyRateSpec(), Team("ml", rpm=120))
    assert unshaped.requests == Rate(2.0, 120, 120)


def test_a_keys_rpm_and_burst_and_its_scripts_make_its_request_bucket() -> None:
    """A key's own rpm is that many in any minute at once unless its burst says otherwise; its
    burst alone resizes the configured rate's bucket; a decision script's rpm / burst override
    both; ``per_key.burst_size``, when set, is the burst of a key's rpm without its own."""
    spec = PerKeyRateSpec(enabled=True, requests_per_second=10)

    def requests(overrides: dict[str, object] | None = None, **limits: int) -> Rate | None:
        return limits_step.key_policy(spec, KeyLimits(**limits), overrides or {}).requests

    assert requests() == Rate(10.0, 10, 10)
    assert requests(rpm=60) == Rate(1.0, 60, 60)
    assert requests(rpm=2) == Rate(2 / 60, 2, 2)
    assert requests(rpm=60, burst=5) == Rate(1.0, 5, 60)
    assert requests(burst=3) == Rate(10.0, 3, 10)
    assert requests({"rpm": "30"}, rpm=60) == Rate(0.5, 30, 30)
    assert requests({"rpm": 30, "burst": 4}, rpm=60, burst=50) == Rate(0.5, 4, 30)
    shaped = PerKeyRateSpec(enabled=True, requests_per_second=10, burst_size=20)
    assert limits_step.key_policy(shaped, KeyLimits(), {}).requests == Rate(10.0, 20, 10)
    assert limits_step.key_policy(shaped, KeyLimits(rpm=60), {}).requests == Rate(1.0, 20, 60)
    assert limits_step.key_policy(shaped, KeyLimits(rpm=60, burst=2), {}).requests == Rate(
        1.0, 2, 60
    )


def test_the_headers_show_the_least_remaining_per_dimension() -> None:
    """Requests from the key (fewer left), tokens from the team (fewer left)."""
    key = Admission(True, requests_limit=10, requests_remaining=2, tokens_limit=900,
                    tokens_remaining=800)  # fmt: skip
    team = Admission(True, requests_limit=100, requests_remaining=50, tokens_limit=1000,
                     tokens_remaining=100, tokens_reset=6.0)  # fmt: skip
    merged = limits_step.stricter([key, team])
    assert (merged.requests_limit, merged.requests_remaining) == (10, 2)
    assert (merged.tokens_limit, merged.tokens_remaining, merged.tokens_reset) == (1000, 100, 6.0)
    only = limits_step.stricter([Admission(True), team])
    assert (only.requests_remaining, only.tokens_remaining) == (50, 100)


def test_a_team_refusal_names_the_team_with_the_keys_code() -> None:
    """Same code and Retry-After as the key's refusal; the message says whose limit it is."""
    refused = limits_step.refusal(Admission(False, "quota", retry_after=None), "ml")
    assert (refused.status, refused.code) == (429, "insufficient_quota")
    assert refused.message == "the remaining quota of this key's team `ml` cannot cover the request"
    slow = limits_step.refusal(Admission(False, "requests", retry_after=2.5), "ml")
    assert (b"retry-after", b"3") in slow.headers


async def test_when_the_team_refuses_the_keys_admission_is_given_back() -> None:
    """All or nothing: the key's slot taken before the team's refusal is free again."""
    async with mock_backend() as mock:
        config = make_config([{"url": mock.url}], rate_limit={"enabled": True})
        async with gateway(config) as gw:
            runtime = gw.runtime
            key = Limit("key_a", KeyPolicy(max_concurrent=1))
            team = Limit("team:ml", KeyPolicy(requests=Rate(0.001, 1)), "ml")
            first = await limits_step.admit(runtime, [key, team], 10)
            assert [hold.limit_id for hold in first.holds] == ["key_a", "team:ml"]
            assert first.lease_of("key_a")
            assert first.lease_of("nobody") == ""
            first.settle(runtime, 5)
            await asyncio.sleep(0.05)
            with pytest.raises(GatewayError) as refused:
                await limits_step.admit(runtime, [key, team], 10)
            assert "team `ml`" in refused.value.message
            await asyncio.sleep(0.05)  # the give-back runs as its own task
            alone = await limits_step.admit(runtime, [key], 10)  # the key's one slot is free
            alone.settle(runtime, 0)
            await asyncio.sleep(0.05)

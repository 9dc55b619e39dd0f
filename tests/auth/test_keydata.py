"""Reading provider data: statuses, dates, lists and numbers as stores hold them."""

from __future__ import annotations

import pytest

from llmproxy.auth.keydata import (
    effective_state,
    ip_allowed,
    key_info,
    model_allowed,
    parse_status,
    parse_timestamp,
)


@pytest.mark.parametrize(
    ("stored", "state"),
    [
        ("active", "active"),
        (0, "active"),
        ("0", "active"),
        ("enabled", "active"),
        (None, "active"),
        ("disabled", "disabled"),
        (1, "disabled"),
        (2, "quota_exceeded"),
        ("quota_exceeded", "quota_exceeded"),
        (3, "expired"),
        ("EXPIRED", "expired"),
        ("something-else", "disabled"),
        (42, "disabled"),
    ],
)
def test_statuses_words_and_seed_numbers(stored: object, state: str) -> None:
    """Seed numbers and words map to states; anything unknown fails closed as disabled."""
    assert parse_status(stored) == state


def test_timestamps_in_every_form() -> None:
    """Unix numbers, numeric strings and ISO dates (UTC when zoneless) all parse."""
    assert parse_timestamp(1_700_000_000) == 1_700_000_000.0
    assert parse_timestamp("1700000000") == 1_700_000_000.0
    assert parse_timestamp("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_timestamp("2023-11-14 22:13:20") == 1_700_000_000.0
    assert parse_timestamp(None) is None
    assert parse_timestamp("") is None
    with pytest.raises(ValueError, match="expires_at"):
        parse_timestamp("next tuesday")


def test_redis_hash_strings_are_typed() -> None:
    """Comma lists and numeric strings, as a Redis hash stores them, become typed values."""
    info = key_info(
        {
            "status": "0",
            "models": "llama, qwen",
            "allowed_ips": "10.0.0.0/8,192.168.1.5",
            "total_quota": "1000",
            "used_quota": "10",
            "rpm": "60",
            "balance": "3.5",
        },
        "sha256:abc",
    )
    assert info.state == "active"
    assert info.models == frozenset({"llama", "qwen"})
    assert len(info.networks) == 2
    assert info.limits.total_quota == 1000
    assert info.limits.used_quota == 10
    assert info.limits.rpm == 60
    assert info.balance == 3.5
    assert info.key_id == "sha256:abc"


def test_effective_state_folds_in_expiry_quota_and_balance() -> None:
    """Expiry, used-up quota and an empty balance each turn an active key away."""
    now = 1_000.0
    assert effective_state(key_info({}, "k"), now) == "active"
    assert effective_state(key_info({"expires_at": 999}, "k"), now) == "expired"
    assert effective_state(key_info({"expires_at": 1001}, "k"), now) == "active"
    quota = {"total_quota": 100, "used_quota": 100}
    assert effective_state(key_info(quota, "k"), now) == "quota_exceeded"
    assert effective_state(key_info({"balance": 0}, "k"), now) == "quota_exceeded"
    assert effective_state(key_info({"status": "disabled", "balance": 5}, "k"), now) == "disabled"


def test_a_decision_script_owns_the_balance_not_the_keys_own_fields() -> None:
    """With a script the balance (any value) is left to it; expiry, quota and status are not."""
    now = 1_000.0
    for balance in (0, -3, "none"):
        owned = key_info({"balance": balance}, "k", scripted=True)
        assert (owned.balance, effective_state(owned, now)) == (None, "active")
    quota = {"total_quota": 100, "used_quota": 100, "balance": 0}
    assert effective_state(key_info(quota, "k", scripted=True), now) == "quota_exceeded"
    expired = key_info({"expires_at": 999, "balance": 0}, "k", scripted=True)
    assert effective_state(expired, now) == "expired"


def test_ip_and_model_allowlists() -> None:
    """An allowlist admits only its members; no allowlist admits everyone."""
    info = key_info({"allowed_ips": ["10.1.0.0/16", "::1"], "models": ["llama"]}, "k")
    assert ip_allowed(info, "10.1.2.3")
    assert ip_allowed(info, "::1")
    assert not ip_allowed(info, "10.2.0.1")
    assert not ip_allowed(info, None)
    assert not ip_allowed(info, "not-an-ip")
    assert model_allowed(info, "llama")
    assert not model_allowed(info, "qwen")
    open_key = key_info({}, "k")
    assert ip_allowed(open_key, "1.2.3.4")
    assert model_allowed(open_key, "anything")


def test_nonsense_values_are_errors_naming_the_field() -> None:
    """A bad number or CIDR is a ValueError naming the field, never a silent default."""
    with pytest.raises(ValueError, match="rpm"):
        key_info({"rpm": "lots"}, "k")
    with pytest.raises(ValueError, match="allowed_ips"):
        key_info({"allowed_ips": ["10.0.0.0/33"]}, "k")

"""The mapping between policies and the scripts' arguments, and between replies and answers."""

from __future__ import annotations

import pytest

from llmproxy.limits import Admission, KeyPolicy, Rate
from llmproxy.limits._wire import (
    AbandonedAdmission,
    admit_args,
    admit_keys,
    decode_admission,
    global_key,
    key_names,
    settle_args,
    settle_keys,
)


def test_every_key_is_under_the_prefix_and_shares_a_hash_slot():
    """A key's state lives under the prefix, with the key id as the Redis Cluster hash tag."""
    names = key_names("p:", "team-a")
    assert names.requests == "p:key:{team-a}:requests"
    assert all(name.startswith("p:key:{team-a}:") for name in names)
    assert len(set(names)) == len(names)
    assert global_key("p:") == "p:global"
    assert set(admit_keys(names)) == set(names)
    assert set(settle_keys(names)) == set(names) - {names.requests}


def test_admit_args_mark_unlimited_dimensions():
    """0 marks an unlimited rate, concurrency or TPM; -1 an absent quota."""
    args = admit_args("", KeyPolicy(), 5, lease_ttl=3600, quota_ttl=10, marker_ttl=60)
    assert args == ["", "0", "0", "0", "0", "-1", "0", "5", "3600.0", "10.0", "60.0"]
    policy = KeyPolicy(Rate(0.5, 2), 3, 6000, 100, 7)
    args = admit_args("r:x", policy, 9, lease_ttl=1.5, quota_ttl=10, marker_ttl=60)
    assert args == ["r:x", "0.5", "2", "3", "6000", "100", "7", "9", "1.5", "10.0", "60.0"]


def test_settle_args():
    """A settle names the lease, the usage and whether it voids an abandoned admission."""
    assert settle_args("r:x", 12, void=True, quota_ttl=5, marker_ttl=6) == [
        "r:x",
        "12",
        "1",
        "5.0",
        "6.0",
    ]


def test_decode_allowed_with_headers():
    """An allowed reply carries the lease and both header sets; '' reads as None."""
    reply = ["1", "", "", "10", "9", "0.500000", "6000", "5000", "10.000000"]
    assert decode_admission(reply, "r:x") == Admission(
        allowed=True,
        lease="r:x",
        requests_limit=10,
        requests_remaining=9,
        requests_reset=0.5,
        tokens_limit=6000,
        tokens_remaining=5000,
        tokens_reset=10.0,
    )
    assert decode_admission(["1", "", "", "", "", "", "", "", ""], "") == Admission(allowed=True)


def test_decode_refusal():
    """A refusal has its reason and wait, and no lease even when one was proposed."""
    reply = ["0", "tokens", "", "", "", "", "100", "3", "59.000000"]
    admission = decode_admission(reply, "r:x")
    assert (admission.allowed, admission.reason, admission.retry_after) == (False, "tokens", None)
    assert admission.lease is None
    assert decode_admission(["0", "requests", "0.25", *[""] * 6], "").retry_after == 0.25


def test_decode_rejects_foreign_replies():
    """A void lease and malformed replies are errors, never an answer."""
    with pytest.raises(AbandonedAdmission):
        decode_admission(["0", "void", *[""] * 7], "r:x")
    with pytest.raises(ValueError, match="9 fields"):
        decode_admission(["1"], "")
    with pytest.raises(ValueError, match="unknown reason"):
        decode_admission(["0", "bogus", *[""] * 7], "")

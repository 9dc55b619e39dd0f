"""What goes over the wire to the limit scripts: key names, arguments, and replies read back.

Pure functions, so the mapping between :class:`~llmproxy.limits.admission.KeyPolicy` and the
scripts' positional arguments — and between their string replies and an
:class:`~llmproxy.limits.admission.Admission` — is tested without a server.

Key layout under ``prefix`` (``rate_limit.key_prefix``, default ``llmproxy:limits:``)::

    {prefix}global                  hash {t, ts}: the global request bucket
    {prefix}key:{<key id>}:requests hash {t, ts}: the key's request bucket
    {prefix}key:{<key id>}:tokens   hash {t, ts}: the key's tokens-per-minute bucket
    {prefix}key:{<key id>}:leases   sorted set: open lease -> expiry (Redis time, seconds)
    {prefix}key:{<key id>}:held     hash: open lease -> "<tokens reserved> <tpm> <quota reserved>"
    {prefix}key:{<key id>}:quota    hash {used, reserved}: lifetime quota counters
    {prefix}key:{<key id>}:late     sorted set: leases that expired unsettled -> marker expiry
    {prefix}key:{<key id>}:void     sorted set: abandoned admissions -> marker expiry

The braces make every key of one API key share a Redis Cluster hash slot, as a multi-key script
requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from llmproxy.limits.admission import Admission, KeyPolicy, Rate, Reason

_REASONS: dict[str, Reason] = {
    "requests": "requests",
    "concurrency": "concurrency",
    "tokens": "tokens",
    "quota": "quota",
}


class AbandonedAdmission(Exception):
    """The script found the lease voided: its admission was given up before it reached Redis."""


class KeyNames(NamedTuple):
    """The Redis keys holding one API key's limit state (see the module docstring)."""

    requests: str
    leases: str
    held: str
    tokens: str
    quota: str
    late: str
    void: str


def key_names(prefix: str, key_id: str) -> KeyNames:
    """The keys of ``key_id`` under ``prefix``."""
    base = f"{prefix}key:{{{key_id}}}:"
    return KeyNames(
        requests=base + "requests",
        leases=base + "leases",
        held=base + "held",
        tokens=base + "tokens",
        quota=base + "quota",
        late=base + "late",
        void=base + "void",
    )


def global_key(prefix: str) -> str:
    """The key of the bucket all traffic shares."""
    return f"{prefix}global"


def admit_keys(names: KeyNames) -> list[str]:
    """``KEYS`` of the admit script, in its order."""
    return [
        names.requests,
        names.leases,
        names.held,
        names.tokens,
        names.quota,
        names.late,
        names.void,
    ]


def settle_keys(names: KeyNames) -> list[str]:
    """``KEYS`` of the settle script, in its order."""
    return [names.leases, names.held, names.tokens, names.quota, names.late, names.void]


def admit_args(
    lease: str,
    policy: KeyPolicy,
    reserve_tokens: int,
    *,
    lease_ttl: float,
    quota_ttl: float,
    marker_ttl: float,
) -> list[str]:
    """``ARGV`` of the admit script; 0 (or -1 for the quota) marks a dimension not limited."""
    rate = policy.requests
    return [
        lease,
        "0" if rate is None else repr(float(rate.per_second)),
        "0" if rate is None else str(rate.burst),
        str(policy.max_concurrent or 0),
        str(policy.tokens_per_minute or 0),
        "-1" if policy.total_quota is None else str(policy.total_quota),
        str(policy.used_quota),
        str(reserve_tokens),
        repr(float(lease_ttl)),
        repr(float(quota_ttl)),
        repr(float(marker_ttl)),
    ]


def settle_args(
    lease: str, used_tokens: int, *, void: bool, quota_ttl: float, marker_ttl: float
) -> list[str]:
    """``ARGV`` of the settle script."""
    return [
        lease,
        str(used_tokens),
        "1" if void else "0",
        repr(float(quota_ttl)),
        repr(float(marker_ttl)),
    ]


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def _integer(text: str) -> int | None:
    return None if text == "" else int(text)


def decode_admission(reply: Sequence[str], lease: str, rate: Rate | None = None) -> Admission:
    """The :class:`Admission` for a script's reply; ``lease`` is the one proposed ('' for none).

    The scripts reply with the request bucket's size; the admission's ``requests_limit`` is
    ``rate``'s configured limit (:attr:`Rate.shown_limit`) when ``rate`` is given.

    Raises :class:`AbandonedAdmission` for a voided lease and ``ValueError`` for a reply that
    is not one of the scripts' (a script or server mismatch).
    """
    if len(reply) != 9:
        raise ValueError(f"limit script replied {list(reply)!r}, expected 9 fields")
    flag, reason = reply[0], reply[1]
    if reason == "void":
        raise AbandonedAdmission(lease)
    allowed = flag == "1"
    if not allowed and reason not in _REASONS:
        raise ValueError(f"limit script refused for an unknown reason {reason!r}")
    return Admission(
        allowed=allowed,
        reason=None if allowed else _REASONS[reason],
        retry_after=None if allowed else _number(reply[2]),
        lease=(lease or None) if allowed else None,
        requests_limit=_integer(reply[3]) if rate is None else rate.shown_limit,
        requests_remaining=_integer(reply[4]),
        requests_reset=_number(reply[5]),
        tokens_limit=_integer(reply[6]),
        tokens_remaining=_integer(reply[7]),
        tokens_reset=_number(reply[8]),
    )

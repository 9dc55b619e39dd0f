"""Rate limits: global and per-key request buckets, concurrency slots, token budgets, quotas.

The gateway resolves a :class:`KeyPolicy` per request, asks the store to :meth:`~LimitStore.admit`
it, and settles the lease when the response ends. The pure bucket maths is in :mod:`.bucket`;
:class:`MemoryLimitStore` keeps state in this process, :class:`RedisLimitStore` shares it between
processes with one Lua script per decision, and :class:`FailoverLimitStore` decides what happens
while Redis cannot answer.
"""

from llmproxy.limits.admission import (
    UNLIMITED,
    Admission,
    KeyPolicy,
    LimitStore,
    LimitsUnavailable,
    Rate,
    Reason,
)
from llmproxy.limits.build import build_store
from llmproxy.limits.failover import FailoverLimitStore, FailurePolicy
from llmproxy.limits.memory import MemoryLimitStore
from llmproxy.limits.policy import (
    default_burst,
    local_rate,
    local_share,
    rate_of,
    requests_per_minute,
    requests_per_second,
)
from llmproxy.limits.redis import RedisLimitStore

__all__ = [
    "UNLIMITED",
    "Admission",
    "FailoverLimitStore",
    "FailurePolicy",
    "KeyPolicy",
    "LimitStore",
    "LimitsUnavailable",
    "MemoryLimitStore",
    "Rate",
    "Reason",
    "RedisLimitStore",
    "build_store",
    "default_burst",
    "local_rate",
    "local_share",
    "rate_of",
    "requests_per_minute",
    "requests_per_second",
]

"""The finish sink that counts each request's tokens against its builtin key's quota.

The limiter reserves and settles quota in its own store (memory, the daemon's table or Redis);
this sink is what makes the key store's ``used_quota`` follow, so a restart, a reload or another
replica starts from what was really used. The provider batches the counts and writes them back
once a second (:data:`~llmproxy.auth.providers.builtin.QUOTA_FLUSH_INTERVAL`).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.auth.providers.builtin import BuiltinProvider
from llmproxy.finish import Finished, Sink


def quota_sink(providers: Sequence[BuiltinProvider]) -> Sink | None:
    """The sink for a snapshot whose pipeline has ``builtin`` providers (they all read one store,
    so the first counts), or None without one."""
    if not providers:
        return None
    provider = providers[0]

    def finished(done: Finished) -> None:
        if done.key_id and done.total_tokens > 0:
            provider.count_usage(done.key_id, done.total_tokens)

    return finished

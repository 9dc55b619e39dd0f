"""With several workers a key-store write reaches a worker as a counter it has not seen; the
requests that notice it wait for a reload that began after the write, never an older one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmproxy.auth.pipeline import AuthPipeline, Stage
from llmproxy.auth.providers.builtin import BuiltinProvider
from llmproxy.config.model import AuthConfig


class SlowStore(BuiltinProvider):
    """A builtin provider whose reload reads the store when it starts and lands 50 ms later
    (the thread read of a real one), recording what it read."""

    def __init__(self, path: Path, store: dict[str, bool]) -> None:
        super().__init__("keys", path)
        self.data = store
        self.view: dict[str, bool] = {}
        self.reloads = 0

    async def reload_now(self) -> None:
        read = dict(self.data)
        await asyncio.sleep(0.05)
        self.view = read
        self.reloads += 1


async def test_a_request_never_passes_on_a_reload_older_than_the_change_it_saw(
    tmp_path: Path,
) -> None:
    store = {"revoked": False}
    provider = SlowStore(tmp_path / "keys.db", store)
    pipeline = AuthPipeline(
        AuthConfig(), [Stage.create(provider, None, skip_on_error=False, cache=None)]
    )
    earlier = asyncio.create_task(pipeline.refresh_keys(1))  # a request saw write 1
    await asyncio.sleep(0.01)
    store["revoked"] = True  # write 2 (a revoke) while that reload is reading
    await pipeline.refresh_keys(2)  # a request with the revoked key saw write 2
    assert provider.view == {"revoked": True}
    assert pipeline.keys_seen == 2
    await earlier
    together = [pipeline.refresh_keys(3) for _ in range(5)]
    await asyncio.gather(*together)
    assert provider.reloads == 3  # one for 1, one for 2, one for the five that saw 3

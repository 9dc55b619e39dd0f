"""Teams end to end: the real daemon (two workers), the mock backend, the official openai SDK.

Teams and keys are made through the admin socket, as ``llmproxy teams`` makes them; every limit
is checked where a client meets it: a 429 from the SDK naming the team, with a Retry-After.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.e2e.daemon import free_port, running

MESSAGES: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Gateway:
    url: str
    admin: httpx.Client

    def team(self, name: str, **fields: object) -> dict[str, Any]:
        answer = self.admin.post("/teams", json={"name": name, **fields})
        assert answer.status_code == 201, answer.text
        team: dict[str, Any] = answer.json()["team"]
        return team

    def key(self, name: str, **fields: object) -> str:
        answer = self.admin.post("/keys", json={"name": name, **fields})
        assert answer.status_code == 201, answer.text
        secret: str = answer.json()["secret"]
        return secret

    def client(self, secret: str, url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=(url or self.url) + "/v1", api_key=secret, max_retries=0)

    def chat(self, secret: str, model: str = "mock-model", url: str | None = None) -> Any:
        return self.client(secret, url).chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=3
        )


def _config(port: int, mocks: tuple[int, int], socket: Path, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        listen: "127.0.0.1:{port}"
        backends:
          - {{url: "http://127.0.0.1:{mocks[0]}", name: fast, models: [mock-model]}}
          - {{url: "http://127.0.0.1:{mocks[1]}", name: slow, models: [slow-model]}}
        health_check: {{enabled: false}}
        auth: {{enabled: true, storage: builtin, builtin_db: keys.db}}
        admin: {{socket: "{socket}"}}
        """
    ) + textwrap.dedent(extra)


_MEMORY = """\
server: {workers: 2}
rate_limit:
  enabled: true
  per_key: {burst_size: 2}
"""


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[int, int]]:
    fast, slow = free_port(), free_port()
    with (
        running(["mock-backend", "--port", str(fast), "--tokens", "3"], _health(fast)),
        running(
            ["mock-backend", "--port", str(slow), "--models", "slow-model", "--ttft", "1.5"],
            _health(slow),
        ),
    ):
        yield fast, slow


def _health(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mocks: tuple[int, int]) -> Iterator[Gateway]:
    """One daemon with two workers (limits on the daemon's shared table) over a SQLite store."""
    workdir = tmp_path_factory.mktemp("teams")
    socket_dir = Path(tempfile.mkdtemp(prefix="llmp-", dir="/tmp"))
    socket = socket_dir / "admin.sock"
    port = free_port()
    config = workdir / "config.yaml"
    config.write_text(_config(port, mocks, socket, _MEMORY))
    try:
        with running(["serve", "-c", str(config)], _health(port)):
            deadline = time.monotonic() + 10
            while not socket.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            transport = httpx.HTTPTransport(uds=str(socket))
            with httpx.Client(transport=transport, base_url="http://admin") as admin:
                _until_serving(admin)
                yield Gateway(f"http://127.0.0.1:{port}", admin)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _until_serving(admin: httpx.Client) -> None:
    """Wait until every worker serves and the admin API's key store is open."""
    deadline = time.monotonic() + 20
    while True:
        workers = admin.get("/status").json()["workers"] or []
        if all(w["alive"] for w in workers) and admin.get("/teams").status_code == 200:
            return
        assert time.monotonic() < deadline, "the daemon never came up"
        time.sleep(0.1)


def _refused(call: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        call()
    return refused.value


def test_a_team_rpm_is_shared_by_its_keys(gateway: Gateway) -> None:
    """Team rpm 2 (burst 2), two keys: the third request, from either key, is the team's 429."""
    gateway.team("rpm-team", rpm=2)
    one = gateway.key("rpm-one", team="rpm-team")
    two = gateway.key("rpm-two", team="rpm-team")
    assert gateway.chat(one).usage.completion_tokens == 3
    assert gateway.chat(two).usage.completion_tokens == 3
    for secret in (one, two):
        error = _refused(lambda secret=secret: gateway.chat(secret))
        assert error.code == "rate_limit_exceeded"
        assert "team `rpm-team`" in error.message
        assert int(error.response.headers["retry-after"]) >= 1
    alone = gateway.key("rpm-alone")  # another key, no team: not limited by it
    assert gateway.chat(alone).usage.completion_tokens == 3


def test_the_keys_stricter_limit_still_wins(gateway: Gateway) -> None:
    """Team rpm 6000, key rpm 1 (burst 2): the key's own 429, which names no team."""
    gateway.team("loose-team", rpm=6000)
    secret = gateway.key("strict-key", team="loose-team", rpm=1)
    response = gateway.client(secret).chat.completions.with_raw_response.create(
        model="mock-model", messages=MESSAGES, max_tokens=3
    )
    assert response.headers["x-ratelimit-limit-requests"] == "1"  # the configured rpm
    assert response.headers["x-ratelimit-remaining-requests"] == "1"  # of the burst of 2
    gateway.chat(secret)
    error = _refused(lambda: gateway.chat(secret))
    assert error.code == "rate_limit_exceeded"
    assert error.message.endswith("429 - rate limit reached for requests")


def test_a_team_max_concurrent_counts_every_key_in_flight(gateway: Gateway) -> None:
    """Team max_concurrent 1: while one key's slow request runs, the other key's is refused."""
    gateway.team("slot-team", max_concurrent=1)
    one = gateway.key("slot-one", team="slot-team")
    two = gateway.key("slot-two", team="slot-team")

    async def both() -> tuple[Any, Any]:
        async def ask(secret: str, after: float) -> Any:
            await asyncio.sleep(after)
            client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
            async with client:
                return await client.chat.completions.create(
                    model="slow-model", messages=MESSAGES, max_tokens=1
                )

        return await asyncio.gather(ask(one, 0), ask(two, 0.5), return_exceptions=True)

    first, second = asyncio.run(both())
    assert not isinstance(first, BaseException), first
    assert isinstance(second, openai.RateLimitError), second
    assert "too many concurrent requests for this key's team `slot-team`" in second.message
    assert gateway.chat(two, "slow-model").choices  # the slot is back


def test_a_team_quota_is_used_up_by_its_keys_together(gateway: Gateway) -> None:
    """Team quota 40 tokens: the keys together soon get insufficient_quota naming the team,
    and the tokens used are written back to the team."""
    gateway.team("quota-team", total_quota=40)
    secrets = [gateway.key(f"quota-{n}", team="quota-team") for n in range(2)]
    served = 0
    refusal = None
    for turn in range(30):
        try:
            gateway.chat(secrets[turn % 2])
            served += 1
        except openai.RateLimitError as error:
            refusal = error
            break
    assert refusal is not None, served
    assert served >= 2
    assert refusal.code == "insufficient_quota"
    assert "quota of this key's team `quota-team`" in refusal.message

    def used() -> int:
        team = gateway.admin.get("/teams/quota-team").json()["team"]
        return int(team["used_quota"])

    deadline = time.monotonic() + 10
    while used() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 0 < used() <= 40


def test_a_team_limit_update_applies_without_a_restart(gateway: Gateway) -> None:
    """A team without limits gets rpm 1 (burst 2): from the next request, on either worker."""
    gateway.team("later-team")
    secret = gateway.key("later-key", team="later-team")
    for _ in range(3):
        gateway.chat(secret)
    changed = gateway.admin.patch("/teams/later-team", json={"rpm": 1})
    assert changed.status_code == 200, changed.text
    gateway.chat(secret)
    gateway.chat(secret)
    error = _refused(lambda: gateway.chat(secret))
    assert "team `later-team`" in error.message
    shown = gateway.admin.get("/teams/later-team").json()
    assert [k["name"] for k in shown["keys"]] == ["later-key"]
    assert "secret" not in shown["keys"][0]
    assert "sha256" not in shown["keys"][0]


def test_two_gateways_share_a_team_limit_through_redis(
    tmp_path: Path, mocks: tuple[int, int]
) -> None:
    """Two gateway processes, one key store, limits in Redis: team rpm 1 (burst 2) holds
    across them — the third request is refused whichever gateway gets it."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    shared = textwrap.dedent(
        f"""\
        rate_limit:
          enabled: true
          storage: redis
          key_prefix: "{prefix}"
          redis: {{addr: "127.0.0.1:6379"}}
          per_key: {{burst_size: 2}}
        """
    )
    socket_dir = Path(tempfile.mkdtemp(prefix="llmp-", dir="/tmp"))
    ports = [free_port(), free_port()]
    try:
        with ExitStack() as stack:
            for n, port in enumerate(ports):
                config = tmp_path / f"gateway-{n}.yaml"
                config.write_text(_config(port, mocks, socket_dir / f"admin-{n}.sock", shared))
                stack.enter_context(running(["serve", "-c", str(config)], _health(port)))
            transport = httpx.HTTPTransport(uds=str(socket_dir / "admin-0.sock"))
            admin = stack.enter_context(httpx.Client(transport=transport, base_url="http://admin"))
            _until_serving(admin)
            first, second = (Gateway(f"http://127.0.0.1:{port}", admin) for port in ports)
            first.team("redis-team", rpm=1)
            secret = first.key("redis-key", team="redis-team")
            # The second gateway reads the shared store within its refresh interval.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                models = httpx.get(
                    second.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}
                )
                if models.status_code == 200:
                    break
                time.sleep(0.1)
            assert models.status_code == 200, models.text
            first.chat(secret)
            second.chat(secret)
            for gateway in (first, second):
                error = _refused(lambda gateway=gateway: gateway.chat(secret))
                assert "team `redis-team`" in error.message
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        client = redis.Redis(host="127.0.0.1", port=6379)
        try:
            names = list(client.scan_iter(prefix + "*"))
            assert any(b"team:redis-team" in name for name in names), names
            for name in names:
                client.delete(name)
        finally:
            client.close()

"""Active health checks: probe every backend on an interval, as that backend wants to be probed.

Two halves: `ProbeStreak` is the pure rule that turns a run of probe results into healthy or
unhealthy (hysteresis, so one dropped probe does not flap a backend), and `HealthChecker` is the
I/O loop that sends the probes through an injected `aiohttp.ClientSession` and writes the verdict
to `Backend.probe_healthy`. The checker is the only writer of that flag (but for a reload that
turns probes off, which clears it).

Each backend has its own :class:`Probe`: the path (or the ``models`` mode, ``GET /v1/models``,
which any OpenAI-compatible server answers), the statuses that count as healthy, and the
headers — the backend's ``api_key`` and ``headers`` included, so a health route behind a key
(a LiteLLM proxy's) is probed as the requests are sent.

Passive ejection (failures seen on real requests) lives on `Backend` itself and is independent:
a backend takes traffic only when it passes both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import msgspec

from llmproxy.routing.backend import Backend

logger = logging.getLogger("llmproxy.routing")


@dataclass(slots=True)
class ProbeStreak:
    """Hysteresis over probe results for one backend.

        streak = ProbeStreak(healthy=True, unhealthy_threshold=3, healthy_threshold=2)
        streak.observe(False), streak.observe(False)   # (False, False): still healthy
        streak.observe(False)                          # True: it just went unhealthy

    A healthy backend goes down after `unhealthy_threshold` consecutive failures; an unhealthy one
    comes back after `healthy_threshold` consecutive successes. A result in the current direction
    breaks the opposite streak.
    """

    healthy: bool
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    streak: int = 0

    def __post_init__(self) -> None:
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError(
                "health_check.unhealthy_threshold and healthy_threshold: must be >= 1, got "
                f"{self.unhealthy_threshold} and {self.healthy_threshold}"
            )

    def observe(self, ok: bool) -> bool:
        """Record one probe result; return True when it flips `healthy`."""
        if ok == self.healthy:
            # A result that agrees with the current state breaks any streak towards the other.
            self.streak = 0
            return False
        self.streak += 1
        threshold = self.healthy_threshold if ok else self.unhealthy_threshold
        if self.streak < threshold:
            return False
        self.healthy = ok
        self.streak = 0
        return True


MODELS_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class Probe:
    """How one backend is probed."""

    path: str = "/health"
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = ()
    """Statuses that count as healthy; empty means any 2xx."""
    models: bool = False
    """``models`` mode: ``GET /v1/models`` must answer a model list."""

    def healthy_status(self, status: int) -> bool:
        return status in self.expect if self.expect else 200 <= status < 300


class _ModelList(msgspec.Struct):
    data: list[object]


_decode_model_list = msgspec.json.Decoder(_ModelList).decode


class HealthChecker:
    """Probes `GET {backend.url}{path}` for every backend, all concurrently, every `interval`.

        checker = HealthChecker(backends, session, interval=10.0, timeout=2.0,
                                probes={backend: Probe(path="/health")})
        await checker.start()    # first round starts now, in a background task
        ...
        await checker.stop()     # on shutdown, before closing the session

    An answer within `timeout` with a healthy status (any 2xx, or the probe's `expect`) is a
    success, and in ``models`` mode only when it is a model list; any other answer, a timeout or
    a connection error is a failure. A backend without a probe of its own gets `Probe(path)`.
    Transitions are logged on the `llmproxy.routing` logger by backend name.
    `probe_once()` runs a single round, which is how tests drive it without waiting.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        session: aiohttp.ClientSession,
        interval: float = 10.0,
        path: str = "/health",
        timeout: float = 5.0,
        unhealthy_threshold: int = 3,
        healthy_threshold: int = 2,
        *,
        probes: Mapping[Backend, Probe] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError(
                f"health_check.interval and timeout: must be > 0 seconds, got {interval} and "
                f"{timeout}"
            )
        self._backends = tuple(backends)
        self._session = session
        self._interval = interval
        default = Probe(path=path if path.startswith("/") else "/" + path)
        self._probes = {backend: (probes or {}).get(backend, default) for backend in backends}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._stop_timeout = stop_timeout
        self._streaks = {
            backend: ProbeStreak(backend.probe_healthy, unhealthy_threshold, healthy_threshold)
            for backend in self._backends
        }
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the probe loop in the background; calling it twice is harmless."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(), name="llmproxy.routing.health")

    async def stop(self) -> None:
        """Stop the loop, waiting at most `stop_timeout` for an in-flight round to unwind."""
        task = self._task
        self._task = None
        if task is None:
            return
        # 1. Ask the loop to stop; probes in flight are cancelled with it.
        task.cancel()
        # 2. Wait with a bound: a cancelled aiohttp request unwinds quickly, but never hang
        #    shutdown on it.
        done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
        if not done:
            logger.warning(
                "health checker did not stop within %.1fs; abandoning it", self._stop_timeout
            )
            return
        # 3. Surface a crash instead of leaving "exception was never retrieved" for the GC.
        if not task.cancelled() and task.exception() is not None:
            logger.error("health checker had crashed", exc_info=task.exception())

    async def probe_once(self) -> None:
        """Probe every backend once, concurrently, and apply the results."""
        await asyncio.gather(*(self._check(backend) for backend in self._backends))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.probe_once()
            # Fixed rate rather than fixed gap, so slow probes do not stretch the interval.
            await asyncio.sleep(max(self._interval - (loop.time() - started), 0.0))

    async def _check(self, backend: Backend) -> None:
        failure = await self._probe(backend)
        streak = self._streaks[backend]
        if failure is not None:
            logger.debug("health probe for backend %r failed: %s", backend.name, failure)
        if not streak.observe(failure is None):
            return
        backend.probe_healthy = streak.healthy
        if streak.healthy:
            logger.info(
                "backend %r is healthy again after %d successful probes of %s",
                backend.name,
                streak.healthy_threshold,
                self._where(backend),
            )
        else:
            logger.warning(
                "backend %r marked unhealthy after %d failed probes of %s (last: %s); "
                "check that the server is up and answers there (backends[].health_check sets "
                "the path, headers and expected statuses)",
                backend.name,
                streak.unhealthy_threshold,
                self._where(backend),
                failure,
            )

    def _where(self, backend: Backend) -> str:
        probe = self._probes[backend]
        return MODELS_PATH if probe.models else probe.path

    async def _probe(self, backend: Backend) -> str | None:
        """Return None for a healthy answer, else a short reason for the logs."""
        probe = self._probes[backend]
        try:
            async with self._session.get(
                backend.url + self._where(backend),
                headers=probe.headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if not probe.healthy_status(response.status):
                    return f"HTTP {response.status}"
                if probe.models:
                    try:
                        _decode_model_list(await response.read())
                    except msgspec.MsgspecError:
                        return "not a model list"
                return None
        except TimeoutError:
            return f"no answer within {self._timeout.total}s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:
            # A probe must never kill the loop: an unexpected error is one more failed probe.
            logger.exception("health probe for backend %r raised unexpectedly", backend.name)
            return f"unexpected {type(exc).__name__}"

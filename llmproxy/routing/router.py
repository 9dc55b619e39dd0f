"""Model routing: which backend gets a request for a given model, including fallback chains.

The router answers two different "no" questions so the gateway can pick the right status:
`serves_any(model)` is False when no backend is configured for the model at all (404
`model_not_found`), while `route(...)` returning None with `serves_any` True means backends exist
but none can take the request now (503). There is no exception on the request path.

It holds no I/O and reads the clock only through the `now` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from llmproxy.routing.backend import Backend
from llmproxy.routing.balancer import Balancer

FallbackChain = tuple[str, Sequence[str]]
"""`(primary, [fallback, ...])`, each side naming a backend by `name` or by `url`."""


class Router:
    """Chooses a backend per request from a fixed set of backends, a balancer and fallbacks.

        router = Router(backends, make_balancer("round_robin"), [("vllm-1", ["vllm-2"])])
        if not router.serves_any(model):
            ...404 model_not_found
        tried: list[Backend] = []
        backend = router.route(model, time.monotonic(), exclude=tried)
        if backend is None:
            ...503, no backend available
        # on a retryable failure: tried.append(backend) and route again

    Normal picks go through the balancer over backends that serve the model, are available and
    have weight > 0. Only when that set is empty does the router walk the fallback chains of the
    model's backends, in config order, and return the first fallback target that serves the
    model, is available and is not excluded; weight-0 backends are reachable only this way.

    Build a new `Router` (and balancer) on config reload; its tables are computed once here.
    """

    __slots__ = (
        "_all_primaries",
        "_any",
        "_any_primaries",
        "_backends",
        "_balancer",
        "_by_model",
        "_fallbacks",
        "_primaries",
    )

    def __init__(
        self,
        backends: Sequence[Backend],
        balancer: Balancer,
        fallbacks: Iterable[FallbackChain] = (),
    ) -> None:
        self._backends = tuple(backends)
        self._balancer = balancer
        _check_unique(self._backends)

        # Per-model tables, so the hot path only filters by availability. Each holds, in config
        # order, the backends listing the model plus the "any model" backends.
        self._any = tuple(b for b in self._backends if b.models is None)
        by_model: dict[str, list[Backend]] = {}
        for backend in self._backends:
            if backend.models is None:
                continue
            for model in backend.models:
                by_model.setdefault(model, [])
        for model, serving in by_model.items():
            serving.extend(b for b in self._backends if b.serves(model))
        self._by_model = {model: tuple(serving) for model, serving in by_model.items()}
        self._primaries = {model: _weighted(serving) for model, serving in self._by_model.items()}
        self._any_primaries = _weighted(self._any)
        self._all_primaries = _weighted(self._backends)

        self._fallbacks = self._resolve_fallbacks(fallbacks)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """Every configured backend, in config order (for status output)."""
        return self._backends

    def named(self, name: str) -> Backend | None:
        """The backend called ``name``, if the config still has it."""
        for backend in self._backends:
            if backend.name == name:
                return backend
        return None

    def serves_any(self, model: str | None) -> bool:
        """Whether any backend is configured for `model`, healthy or not."""
        if model is None:
            return bool(self._backends)
        return model in self._by_model or bool(self._any)

    def models(self) -> list[str]:
        """The model names listed by backends, sorted; "any model" backends add none."""
        return sorted(self._by_model)

    def fallbacks_for(self, backend: Backend) -> list[Backend]:
        """The fallback targets configured for `backend`, in order, across all its chains."""
        return list(self._fallbacks.get(backend, ()))

    def affinity_shares(self) -> dict[str, float]:
        """Per backend, the share of prompt prefixes it owns (only under `prefix_affinity`)."""
        shares = getattr(self._balancer, "shares", None)
        return shares() if callable(shares) else {}

    def route(
        self,
        model: str | None,
        now: float,
        exclude: Collection[Backend] = (),
        key: int | None = None,
        reserve: int = 0,
        on_fallback: Callable[[Backend], None] | None = None,
        only: Backend | None = None,
    ) -> Backend | None:
        """Pick a backend for `model`, skipping `exclude` (backends already tried for a retry).

        Returns None when nothing that serves the model can take the request, fallbacks included.
        When a fallback target is picked, `on_fallback` is told the primary it stands in for.
        `only`: the request can be served by that backend alone (it holds the request's state,
        such as a Responses API response): no balancing, no fallback.
        """
        if only is not None:
            usable = (
                only.serves(model) and only.available_for(model, now) and not only.full_for(reserve)
            )
            return only if usable and only not in exclude else None
        if model is None:
            serving, primaries = self._backends, self._all_primaries
        else:
            serving = self._by_model.get(model, self._any)
            primaries = self._primaries.get(model, self._any_primaries)
        candidates = [
            b
            for b in primaries
            if b.available_for(model, now)
            and not b.full_for(reserve)
            and (not exclude or b not in exclude)
        ]
        if candidates:
            return self._balancer.pick(candidates, key)
        for primary in serving:
            for target in self._fallbacks.get(primary, ()):
                if (
                    target.serves(model)
                    and target.available_for(model, now)
                    and not target.full_for(reserve)
                    and (not exclude or target not in exclude)
                ):
                    if on_fallback is not None:
                        on_fallback(primary)
                    return target
        return None

    def can_serve_elsewhere(
        self, model: str | None, now: float, exclude: Collection[Backend]
    ) -> bool:
        """Whether a backend outside ``exclude`` could serve ``model`` now (fallbacks
        included), without picking one (a pick moves the balancer's state)."""
        serving = self._backends if model is None else self._by_model.get(model, self._any)
        candidates = list(serving)
        for primary in serving:
            candidates.extend(self._fallbacks.get(primary, ()))
        return any(
            b not in exclude and b.serves(model) and b.available_for(model, now) for b in candidates
        )

    def saturated(
        self, model: str | None, now: float, reserve: int = 0, only: Backend | None = None
    ) -> bool:
        """Whether some backend could serve `model` now but every such backend is full (for a
        request leaving `reserve` slots free): it should wait for a slot rather than fail."""
        if only is not None:
            return only.available_for(model, now) and only.full_for(reserve)
        serving = self._backends if model is None else self._by_model.get(model, self._any)
        available = [b for b in serving if b.available_for(model, now)]
        return bool(available) and all(b.full_for(reserve) for b in available)

    def _resolve_fallbacks(self, chains: Iterable[FallbackChain]) -> dict[Backend, list[Backend]]:
        lookup: dict[str, Backend] = {}
        for backend in self._backends:
            lookup.setdefault(backend.url, backend)
        # Names win over URLs when the same string is both, because names are what people type.
        for backend in self._backends:
            lookup[backend.name] = backend

        def resolve(reference: str, where: str) -> Backend:
            found = lookup.get(reference) or lookup.get(reference.rstrip("/"))
            if found is None:
                raise ValueError(
                    f"{where}: {reference!r} names no backend; use a backend name or url"
                )
            return found

        resolved: dict[Backend, list[Backend]] = {}
        for index, (primary_ref, target_refs) in enumerate(chains):
            primary = resolve(primary_ref, f"fallback[{index}].primary")
            targets = resolved.setdefault(primary, [])
            for position, target_ref in enumerate(target_refs):
                target = resolve(target_ref, f"fallback[{index}].fallback[{position}]")
                if target is not primary and target not in targets:
                    targets.append(target)
        return resolved


def _weighted(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    return tuple(b for b in backends if b.weight > 0)


def _check_unique(backends: Sequence[Backend]) -> None:
    names: set[str] = set()
    for index, backend in enumerate(backends):
        if backend.name in names:
            raise ValueError(
                f"backends[{index}].name: {backend.name!r} is used twice; give each a unique name"
            )
        names.add(backend.name)

"""Router: model filtering, availability, retry exclusion and fallback chains."""

from __future__ import annotations

from collections import Counter

import pytest

from llmproxy.routing import Backend, Router, SmoothWeightedRoundRobin

NOW = 1000.0


def make_router(*backends: Backend, fallbacks: list[tuple[str, list[str]]] | None = None) -> Router:
    return Router(backends, SmoothWeightedRoundRobin(), fallbacks or [])


def route_names(router: Router, model: str | None, picks: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        backend = router.route(model, NOW)
        assert backend is not None
        counts[backend.name] += 1
    return counts


def test_routes_only_to_backends_serving_the_model() -> None:
    """A model is sent to backends listing it plus backends that serve any model."""
    qwen = Backend.create("qwen", "http://qwen", models=("qwen",))
    llama = Backend.create("llama", "http://llama", models=("llama",))
    anything = Backend.create("any", "http://any")
    router = make_router(qwen, llama, anything)
    assert set(route_names(router, "qwen", 20)) == {"qwen", "any"}
    assert set(route_names(router, "llama", 20)) == {"llama", "any"}
    assert set(route_names(router, "other", 20)) == {"any"}
    assert set(route_names(router, None, 30)) == {"qwen", "llama", "any"}


def test_serves_any_and_models() -> None:
    """serves_any separates unknown models (404) from unavailable ones; models() lists names."""
    qwen = Backend.create("qwen", "http://qwen", models=("qwen", "qwen-mini"))
    llama = Backend.create("llama", "http://llama", models=("llama",))
    router = make_router(qwen, llama)
    assert router.serves_any("qwen")
    assert not router.serves_any("gpt-4")
    assert router.route("gpt-4", NOW) is None
    assert router.serves_any(None)
    assert router.models() == ["llama", "qwen", "qwen-mini"]
    qwen.probe_healthy = False
    assert router.serves_any("qwen")
    assert router.route("qwen", NOW) is None


def test_any_model_backend_serves_unknown_models() -> None:
    """With a backend that serves any model, every model name is servable."""
    router = make_router(Backend.create("any", "http://any"))
    assert router.serves_any("whatever")
    assert router.models() == []


def test_backends_in_config_order() -> None:
    """The router exposes its backends in config order for status output."""
    a, b = Backend.create("a", "http://a"), Backend.create("b", "http://b")
    assert make_router(a, b).backends == (a, b)


def test_empty_router() -> None:
    """A router without backends serves nothing."""
    router = make_router()
    assert not router.serves_any(None)
    assert router.route(None, NOW) is None


def test_unavailable_backends_are_skipped() -> None:
    """Probe-unhealthy and passively ejected backends receive no traffic until they recover."""
    a, b, c = (Backend.create(n, f"http://{n}") for n in "abc")
    router = make_router(a, b, c)
    a.probe_healthy = False
    b.record_failure(NOW, failure_threshold=1, ejection_time=30.0)
    assert set(route_names(router, "m", 10)) == {"c"}
    assert router.route("m", NOW + 30.0) in (b, c)


def test_exclusion_for_retries() -> None:
    """Excluded backends are skipped, and excluding every one yields None."""
    a, b = Backend.create("a", "http://a"), Backend.create("b", "http://b")
    router = make_router(a, b)
    assert all(router.route("m", NOW, exclude=[a]) is b for _ in range(5))
    assert router.route("m", NOW, exclude={a, b}) is None


def test_weights_shape_traffic() -> None:
    """Routing goes through the balancer, so weights set the shares."""
    router = make_router(
        Backend.create("a", "http://a", weight=3), Backend.create("b", "http://b", weight=1)
    )
    assert route_names(router, "m", 400) == {"a": 300, "b": 100}


def test_weight_zero_only_via_fallback() -> None:
    """A weight-0 backend gets no normal traffic, only when it is a fallback for a down primary."""
    primary = Backend.create("primary", "http://primary", models=("m",))
    spare = Backend.create("spare", "http://spare", weight=0, models=("m",))
    router = make_router(primary, spare, fallbacks=[("primary", ["spare"])])
    assert set(route_names(router, "m", 20)) == {"primary"}
    primary.probe_healthy = False
    assert router.route("m", NOW) is spare


def test_weight_zero_without_fallback_is_never_used() -> None:
    """A weight-0 backend that is nobody's fallback leaves the model unavailable."""
    primary = Backend.create("primary", "http://primary")
    spare = Backend.create("spare", "http://spare", weight=0)
    router = make_router(primary, spare)
    primary.probe_healthy = False
    assert router.route("m", NOW) is None


def test_fallback_chain_in_order() -> None:
    """Fallback targets are tried in configured order, skipping unavailable and excluded ones."""
    primary = Backend.create("p", "http://p:8000", models=("m",))
    first = Backend.create("f1", "http://f1:8000", weight=0)
    second = Backend.create("f2", "http://f2:8000", weight=0)
    router = make_router(primary, first, second, fallbacks=[("http://p:8000", ["f1", "f2"])])
    assert router.route("m", NOW) is primary
    primary.probe_healthy = False
    assert router.route("m", NOW) is first
    assert router.route("m", NOW, exclude=[first]) is second
    first.probe_healthy = False
    assert router.route("m", NOW) is second
    second.probe_healthy = False
    assert router.route("m", NOW) is None


def test_fallback_used_when_primary_excluded() -> None:
    """A retry that excludes the only primary moves on to its fallback."""
    primary = Backend.create("p", "http://p")
    spare = Backend.create("s", "http://s", weight=0)
    router = make_router(primary, spare, fallbacks=[("p", ["s"])])
    assert router.route("m", NOW, exclude=[primary]) is spare


def test_fallback_must_serve_the_model() -> None:
    """A fallback target that does not serve the requested model is not used for it."""
    primary = Backend.create("p", "http://p", models=("m",))
    other = Backend.create("o", "http://o", weight=0, models=("n",))
    router = make_router(primary, other, fallbacks=[("p", ["o"])])
    primary.probe_healthy = False
    assert router.route("m", NOW) is None


def test_fallbacks_for_resolves_names_and_urls() -> None:
    """Chains name backends by name or URL, merge per primary, and drop duplicates and self."""
    a, b, c = (Backend.create(n, f"http://{n}:8000") for n in "abc")
    router = make_router(
        a, b, c, fallbacks=[("a", ["http://b:8000/", "a"]), ("http://a:8000", ["c", "b"])]
    )
    assert router.fallbacks_for(a) == [b, c]
    assert router.fallbacks_for(b) == []


def test_unknown_fallback_reference_is_rejected() -> None:
    """A chain naming no configured backend fails at construction with its position."""
    a = Backend.create("a", "http://a")
    with pytest.raises(ValueError, match=r"fallback\[0\]\.fallback\[0\]: 'nope' names no backend"):
        make_router(a, fallbacks=[("a", ["nope"])])
    with pytest.raises(ValueError, match=r"fallback\[0\]\.primary"):
        make_router(a, fallbacks=[("nope", ["a"])])


def test_duplicate_names_are_rejected() -> None:
    """Two backends with one name make fallback references ambiguous, so they are refused."""
    with pytest.raises(ValueError, match=r"backends\[1\]\.name: 'a' is used twice"):
        make_router(Backend.create("a", "http://a"), Backend.create("a", "http://b"))

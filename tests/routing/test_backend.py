"""Backend live state: in-flight counting, latency EWMA and passive ejection."""

from __future__ import annotations

import pytest

from llmproxy.routing import Backend


def test_create_treats_empty_models_as_any() -> None:
    """A backend configured without models serves every model, and None model fits anywhere."""
    backend = Backend.create("a", "http://a:8000/")
    assert backend.models is None
    assert backend.url == "http://a:8000"
    assert backend.serves("qwen")
    assert backend.serves(None)


def test_model_list_limits_what_is_served() -> None:
    """A backend with a model list serves only those models."""
    backend = Backend.create("a", "http://a", models=("qwen", "llama"))
    assert backend.serves("qwen")
    assert not backend.serves("mistral")
    assert backend.serves(None)


def test_negative_weight_is_rejected() -> None:
    """A negative weight is a config error named after the backend."""
    with pytest.raises(ValueError, match="backend 'a': weight"):
        Backend.create("a", "http://a", weight=-1)


def test_bad_alpha_is_rejected() -> None:
    """An EWMA alpha outside (0, 1] is refused."""
    with pytest.raises(ValueError, match="ewma_alpha"):
        Backend.create("a", "http://a", ewma_alpha=0.0)


def test_in_flight_never_goes_negative() -> None:
    """begin/end count in-flight requests and a stray end() cannot push it below zero."""
    backend = Backend.create("a", "http://a")
    backend.begin()
    backend.begin()
    assert backend.in_flight == 2
    assert backend.requests_total == 2
    backend.end()
    backend.end()
    backend.end()
    assert backend.in_flight == 0


def test_first_byte_ewma() -> None:
    """The first sample seeds the EWMA and later ones move it by alpha."""
    backend = Backend.create("a", "http://a", ewma_alpha=0.5)
    assert backend.snapshot(0.0)["ttfb_ewma_ms"] is None
    backend.record_first_byte(1.0)
    assert backend.ttfb_ewma == 1.0
    backend.record_first_byte(3.0)
    assert backend.ttfb_ewma == pytest.approx(2.0)
    backend.record_first_byte(-5.0)
    assert backend.ttfb_ewma == pytest.approx(1.0)


def test_ejected_after_threshold_consecutive_failures() -> None:
    """N consecutive failures eject the backend for ejection_time, then it is available again."""
    backend = Backend.create("a", "http://a")
    for _ in range(4):
        backend.record_failure(100.0, failure_threshold=5, ejection_time=30.0)
        assert backend.is_available(100.0)
    backend.record_failure(100.0, failure_threshold=5, ejection_time=30.0)
    assert not backend.is_available(100.0)
    assert not backend.is_available(129.9)
    assert backend.is_available(130.0)
    assert backend.failures_total == 5


def test_streak_restarts_after_ejection() -> None:
    """After an ejection a backend needs a fresh run of failures to be ejected again."""
    backend = Backend.create("a", "http://a")
    for _ in range(3):
        backend.record_failure(0.0, failure_threshold=3, ejection_time=10.0)
    assert not backend.is_available(5.0)
    backend.record_failure(10.0, failure_threshold=3, ejection_time=10.0)
    assert backend.is_available(10.0)


def test_success_resets_failure_streak() -> None:
    """A success between failures prevents ejection."""
    backend = Backend.create("a", "http://a")
    for _ in range(4):
        backend.record_failure(0.0, failure_threshold=5, ejection_time=30.0)
    backend.record_success()
    for _ in range(4):
        backend.record_failure(0.0, failure_threshold=5, ejection_time=30.0)
    assert backend.is_available(0.0)
    assert backend.consecutive_failures == 4


def test_zero_threshold_disables_ejection() -> None:
    """failure_threshold 0 turns passive ejection off."""
    backend = Backend.create("a", "http://a")
    for _ in range(100):
        backend.record_failure(0.0, failure_threshold=0, ejection_time=30.0)
    assert backend.is_available(0.0)


def test_probe_health_gates_availability() -> None:
    """A backend failing its active probes is unavailable even when not ejected."""
    backend = Backend.create("a", "http://a")
    backend.probe_healthy = False
    assert not backend.is_available(0.0)


def test_draining_takes_a_backend_out_of_rotation_until_undrained() -> None:
    """A draining backend takes no new request but keeps counting the ones in flight."""
    backend = Backend.create("a", "http://a")
    backend.begin()
    backend.draining = True
    assert not backend.is_available(0.0)
    assert backend.snapshot(0.0)["available"] is False
    assert backend.snapshot(0.0)["draining"] is True
    backend.end()
    assert backend.in_flight == 0
    backend.draining = False
    assert backend.is_available(0.0)


def test_error_rate_is_failures_over_requests() -> None:
    """The error rate is 0 before any request, then failed attempts over sent ones."""
    backend = Backend.create("a", "http://a")
    assert backend.error_rate == 0.0
    for _ in range(4):
        backend.begin()
        backend.end()
    backend.record_failure(0.0, failure_threshold=0, ejection_time=1.0)
    assert backend.error_rate == 0.25
    assert backend.snapshot(0.0)["error_rate"] == 0.25


def test_snapshot_reports_state() -> None:
    """The snapshot is plain data: identity, availability, ejection countdown and counters."""
    backend = Backend.create("a", "http://a", weight=3, models=("m2", "m1"))
    backend.begin()
    backend.record_first_byte(0.25)
    backend.record_failure(10.0, failure_threshold=1, ejection_time=30.0)
    assert backend.snapshot(20.0) == {
        "name": "a",
        "url": "http://a",
        "weight": 3,
        "models": ["m1", "m2"],
        "available": False,
        "models_out": {},
        "probe_healthy": True,
        "draining": False,
        "ejected_for_seconds": 20.0,
        "in_flight": 1,
        "ttfb_ewma_ms": 250.0,
        "error_rate": 1.0,
        "consecutive_failures": 0,
        "requests_total": 1,
        "failures_total": 1,
        "max_in_flight": None,
        "queue_waiting": None,
        "running": None,
        "kv_cache_usage": None,
        "signals_age_seconds": None,
    }


def test_backends_compare_by_identity() -> None:
    """Two backends built from identical config are distinct keys for balancer state."""
    first = Backend.create("a", "http://a")
    second = Backend.create("a", "http://a")
    assert first != second
    assert len({first, second}) == 2


def test_one_client_never_ejects_with_5xx_alone() -> None:
    """5xx answers met by one client, however many, never reach an ejection when min_clients
    is above 1; the run still counts them."""
    backend = Backend.create("b", "http://b")
    for _ in range(50):
        backend.record_failure(100.0, 5, 30.0, client="key-a", min_clients=3)
    assert backend.is_available(100.0)
    assert backend.failures_total == 50


def test_enough_clients_or_one_unattributed_failure_eject() -> None:
    """A run with min_clients different clients, or with a failure no client can cause (None),
    ejects at the threshold; a success starts the count over."""
    backend = Backend.create("b", "http://b")
    for client in ("a", "b", "a", "c", "a"):
        backend.record_failure(10.0, 5, 30.0, client=client, min_clients=3)
    assert not backend.is_available(10.0)
    other = Backend.create("o", "http://o")
    for _ in range(4):
        other.record_failure(10.0, 5, 30.0, client="a", min_clients=3)
    other.record_failure(10.0, 5, 30.0, client=None, min_clients=3)
    assert not other.is_available(10.0)
    reset = Backend.create("r", "http://r")
    for client in ("a", "b"):
        reset.record_failure(10.0, 5, 30.0, client=client, min_clients=3)
    reset.record_success()
    for _ in range(4):
        reset.record_failure(10.0, 5, 30.0, client="c", min_clients=3)
    assert reset.is_available(10.0)


def test_a_failing_model_is_taken_out_alone() -> None:
    """Failures counted against one model take that model out; the backend's other models stay
    available; the backend is down only when every model it lists is out."""
    backend = Backend.create("a", "http://a", models=("good", "bad"))
    for _ in range(3):
        backend.record_failure(10.0, 3, 30.0, model="bad")
    assert not backend.available_for("bad", 11.0)
    assert backend.available_for("good", 11.0)
    assert backend.is_available(11.0)
    assert not backend.is_down(11.0)
    assert backend.models_out(11.0) == {"bad": 29.0}
    for _ in range(3):
        backend.record_failure(10.0, 3, 30.0, model="good")
    assert backend.is_down(11.0)
    assert backend.available_for("bad", 41.0)
    backend.record_success("good")
    assert backend.model_health["good"].consecutive == 0

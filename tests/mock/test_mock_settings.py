"""The knobs: validation, runtime updates, x-mock-* headers, CLI flags, and the pure text core."""

from __future__ import annotations

import msgspec
import pytest

from llmproxy.mock import MockSettings, completion_text, estimate_tokens
from llmproxy.mock.__main__ import parse_args
from llmproxy.mock._wire import ChunkEncoder
from llmproxy.mock.settings import with_header_overrides


@pytest.mark.parametrize(
    "bad",
    [
        {"models": ()},
        {"tokens": 0},
        {"ttft": -0.1},
        {"embedding_dim": 0},
        {"fault": "boom"},
        {"fault_after": -1},
        {"slots": -1},
        {"prefill_per_token": -0.001},
        {"prefix_cache_blocks": -1},
        {"block_chars": 3},
    ],
)
def test_invalid_settings_rejected(bad: dict[str, object]) -> None:
    """Each out-of-range knob raises ValueError, whether built directly or updated from JSON."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        MockSettings().updated(bad)


def test_updated_keeps_other_knobs() -> None:
    """updated() changes the named knobs only and converts JSON lists to tuples."""
    settings = MockSettings(name="a", itl=0.5).updated({"models": ["x"], "ttft": 1})
    assert settings == MockSettings(models=("x",), ttft=1.0, itl=0.5, name="a")


def test_models_list_becomes_tuple() -> None:
    """A list of models given from Python is stored as a tuple, keeping the settings hashable."""
    assert MockSettings(models=["a", "b"]).models == ("a", "b")  # type: ignore[arg-type]


def test_header_overrides() -> None:
    """x-mock-* headers override for one request; none of them means the same object back."""
    base = MockSettings(fault="500")
    assert with_header_overrides(base, {}) is base
    headers = {"x-mock-ttft": "0.5", "x-mock-tokens": "3", "x-mock-fault": "none"}
    assert with_header_overrides(base, headers) == MockSettings(ttft=0.5, tokens=3)
    with pytest.raises(ValueError, match="x-mock-tokens"):
        with_header_overrides(base, {"x-mock-tokens": "1.5"})


def test_cli_flags() -> None:
    """The command-line flags mirror the knobs."""
    settings, host, port, _ = parse_args(
        ["--port", "9005", "--models", "a, b", "--itl", "0.01", "--fault", "429", "--name", "n"]
    )
    assert (host, port) == ("127.0.0.1", 9005)
    assert settings == MockSettings(models=("a", "b"), itl=0.01, fault="429", name="n")


def test_cli_gpu_flags() -> None:
    """The simulated GPU's knobs have flags too, and keep their defaults when not given."""
    settings, _, _, _ = parse_args(
        ["--slots", "8", "--prefill-per-token", "0.0005", "--prefix-cache-blocks", "512"]
    )
    assert settings == MockSettings(slots=8, prefill_per_token=0.0005, prefix_cache_blocks=512)
    assert parse_args(["--block-chars", "32"])[0].block_chars == 32
    with pytest.raises(SystemExit):
        parse_args(["--slots", "-2"])


def test_text_core() -> None:
    """Completion text and prompt token estimates are deterministic and easy to predict."""
    assert completion_text(3) == "lorem ipsum dolor "
    assert completion_text(17).endswith("et lorem ")
    assert [estimate_tokens(0), estimate_tokens(4), estimate_tokens(5, 2)] == [1, 1, 4]


def test_chunk_encoder_emits_valid_json() -> None:
    """Hand-assembled chunk bytes are valid JSON, even for a model name that needs escaping."""
    chunks = ChunkEncoder("chat", "chatcmpl-1", 'odd "model"', "length")
    first = msgspec.json.decode(chunks.token(0, last=True).removeprefix(b"data: "))
    assert first["model"] == 'odd "model"'
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": "lorem "},
        "logprobs": None,
        "finish_reason": "length",
    }
    usage = msgspec.json.decode(chunks.usage(2, 1).removeprefix(b"data: "))
    assert usage["usage"]["total_tokens"] == 3

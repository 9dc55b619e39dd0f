"""Synthetic load: seeded length distributions, and requests of those sizes."""

from __future__ import annotations

import itertools
import random
import statistics

import msgspec
import pytest

from llmproxy.replay.synthetic import Dist, LengthDistribution, SyntheticLoad
from llmproxy.replay.text import CHARS_PER_TOKEN, chars_for_tokens, made_up_text


def _draw(dist: LengthDistribution, n: int = 20_000, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [dist.sample(rng) for _ in range(n)]


def test_fixed_is_always_the_mean() -> None:
    assert set(_draw(LengthDistribution(Dist.FIXED, 128), 100)) == {128}


def test_uniform_covers_mean_plus_minus_spread_evenly() -> None:
    values = _draw(LengthDistribution(Dist.UNIFORM, 100, 0.5))
    assert min(values) == 50
    assert max(values) == 150
    assert statistics.fmean(values) == pytest.approx(100, rel=0.02)


def test_lognormal_keeps_the_mean_and_is_skewed_right() -> None:
    values = _draw(LengthDistribution(Dist.LOGNORMAL, 512, 0.5))
    assert statistics.fmean(values) == pytest.approx(512, rel=0.03)
    assert statistics.median(values) < statistics.fmean(values)  # a long right tail
    assert min(values) >= 1


def test_a_distribution_never_gives_zero() -> None:
    assert min(_draw(LengthDistribution(Dist.LOGNORMAL, 1, 0.9))) >= 1
    assert min(_draw(LengthDistribution(Dist.UNIFORM, 1, 0.9))) >= 1


@pytest.mark.parametrize(
    ("kind", "mean", "spread"),
    [(Dist.FIXED, 0, 0.5), (Dist.UNIFORM, 10, 1.0), (Dist.LOGNORMAL, 10, -0.1)],
)
def test_bad_distributions_are_refused(kind, mean, spread) -> None:
    with pytest.raises(ValueError, match=r"mean|spread"):
        LengthDistribution(kind, mean, spread)


def _load(seed: int = 3, **changes) -> SyntheticLoad:
    settings = {
        "model": "mock-model",
        "prompt": LengthDistribution(Dist.LOGNORMAL, 64),
        "output": LengthDistribution(Dist.UNIFORM, 16),
        "seed": seed,
        **changes,
    }
    return SyntheticLoad(**settings)


def _bodies(load: SyntheticLoad, n: int = 50) -> list[bytes]:
    return [request.body or b"" for request in itertools.islice(load.requests(), n)]


def test_the_same_seed_sends_the_same_requests() -> None:
    assert _bodies(_load(seed=3)) == _bodies(_load(seed=3))
    assert _bodies(_load(seed=3)) != _bodies(_load(seed=4))


def test_requests_have_the_drawn_sizes() -> None:
    load = _load()
    prompt_rng, output_rng = random.Random("3:prompt"), random.Random("3:output")
    for request in itertools.islice(load.requests(), 20):
        body = msgspec.json.decode(request.body or b"")
        prompt, output = load.prompt.sample(prompt_rng), load.output.sample(output_rng)
        assert len(body["messages"][0]["content"]) == chars_for_tokens(prompt)
        assert body["max_tokens"] == output
        assert body["model"] == "mock-model"
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (request.method, request.endpoint, request.stream) == (
            "POST",
            "/v1/chat/completions",
            True,
        )


def test_no_two_prompts_share_a_prefix() -> None:
    """Identical prompt starts would be served from a prefix cache and flatter the server."""
    prompts = [
        msgspec.json.decode(body)["messages"][0]["content"][:8]
        for body in _bodies(_load(prompt=LengthDistribution(Dist.FIXED, 64)), 200)
    ]
    assert len(set(prompts)) == 200


def test_unstreamed_and_ignore_eos() -> None:
    request = next(_load(stream=False, ignore_eos=True).requests())
    body = msgspec.json.decode(request.body or b"")
    assert "stream" not in body
    assert "stream_options" not in body
    assert body["ignore_eos"] is True
    assert request.stream is False


def test_describe_names_the_distributions() -> None:
    described = _load().describe()
    assert described["prompt_tokens"] == "lognormal(mean 64, spread 0.5)"
    assert LengthDistribution(Dist.FIXED, 7).describe() == "fixed(7)"


@pytest.mark.parametrize("chars", [0, 1, 2, 5, 100, 70_000, 200_000])
def test_made_up_text_has_exactly_the_size_asked(chars: int) -> None:
    assert len(made_up_text(chars, 12)) == chars


def test_made_up_text_is_deterministic_and_wordy() -> None:
    text = made_up_text(400, 5)
    assert text == made_up_text(400, 5)
    assert text != made_up_text(400, 6)
    words = text.split()
    assert words[0] == "5"
    assert len(text) / len(words) < 2 * CHARS_PER_TOKEN  # words, not one long blob

"""Synthetic load when there is no recording: prompt and output lengths drawn from distributions.

Real traffic is not one fixed size: a few long prompts or answers occupy a server far longer
than the median one, which is what a load test should exercise. Lengths come from a seeded
:class:`random.Random` per quantity (prompt, output), so a run with the same ``--seed`` sends the
same sizes in the same order, and changing one distribution does not reshuffle the other.

- ``fixed``: always the mean.
- ``uniform``: whole numbers spread evenly over ``mean × (1 ± spread)``.
- ``lognormal``: right-skewed like real prompt lengths, with ``sigma = spread`` and the mean
  preserved (``mu = ln(mean) − sigma² / 2``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from llmproxy.apis import CHAT
from llmproxy.replay.outgoing import Outgoing
from llmproxy.replay.text import chars_for_tokens, made_up_text

DEFAULT_SPREAD = 0.5


class Dist(StrEnum):
    """The shape of a length distribution."""

    FIXED = "fixed"
    UNIFORM = "uniform"
    LOGNORMAL = "lognormal"


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """Token counts of one quantity (prompt or output) around ``mean``, never below 1."""

    kind: Dist
    mean: int
    spread: float = DEFAULT_SPREAD

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise ValueError(f"a mean length must be at least 1 token, got {self.mean}")
        if not 0 <= self.spread < 1 and self.kind is Dist.UNIFORM:
            raise ValueError(f"a uniform spread must be in [0, 1), got {self.spread}")
        if self.spread < 0:
            raise ValueError(f"a spread cannot be negative, got {self.spread}")

    def sample(self, rng: random.Random) -> int:
        """One length, drawn with ``rng``."""
        if self.kind is Dist.FIXED or self.spread == 0:
            return self.mean
        if self.kind is Dist.UNIFORM:
            low = max(1, round(self.mean * (1 - self.spread)))
            high = max(low, round(self.mean * (1 + self.spread)))
            return rng.randint(low, high)
        sigma = self.spread
        mu = math.log(self.mean) - sigma * sigma / 2
        return max(1, round(rng.lognormvariate(mu, sigma)))

    def describe(self) -> str:
        """``lognormal(mean 512, spread 0.5)``, ``fixed(128)``: for reports."""
        if self.kind is Dist.FIXED:
            return f"fixed({self.mean})"
        return f"{self.kind.value}(mean {self.mean}, spread {self.spread:g})"


@dataclass(frozen=True, slots=True)
class SyntheticLoad:
    """What every synthetic request looks like."""

    model: str
    prompt: LengthDistribution
    output: LengthDistribution
    stream: bool = True
    seed: int = 0
    ignore_eos: bool = False
    """Ask the server (vLLM's extension) to generate exactly the drawn output length."""

    def requests(self) -> Iterator[Outgoing]:
        """An endless stream of chat completion requests, the same for the same seed."""
        prompt_rng = random.Random(f"{self.seed}:prompt")
        output_rng = random.Random(f"{self.seed}:output")
        salt = self.seed * 1_000_003
        while True:
            prompt = self.prompt.sample(prompt_rng)
            output = self.output.sample(output_rng)
            salt += 1
            body = msgspec.json.encode(self.body(prompt, output, salt))
            yield Outgoing("POST", CHAT, self.model, self.stream, body)

    def body(self, prompt_tokens: int, output_tokens: int, salt: int) -> dict[str, Any]:
        """The chat completion body for one request of the given sizes."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "user", "content": made_up_text(chars_for_tokens(prompt_tokens), salt)}
            ],
            "max_tokens": output_tokens,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-ready data, for the report."""
        return {
            "model": self.model,
            "prompt_tokens": self.prompt.describe(),
            "output_tokens": self.output.describe(),
            "stream": self.stream,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
        }

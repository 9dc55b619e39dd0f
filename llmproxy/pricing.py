"""What a request cost, from its tokens and the ``pricing`` table: one definition for usage
records, metrics and budgets.

Costs are counted in whole nano-units of ``pricing_currency`` (10⁻⁹): a budget's reservations and
settlements are integer arithmetic in the limit store (exact, atomic in Redis), and a record's
``cost`` is the same integer divided by 10⁹, so the sum of the records equals what the budgets
counted::

    prices = PriceTable.of(config.pricing)
    nanos = prices.cost_nanos("llama", prompt=1200, cached=1000, completion=300)
    cost = nanos / NANOS            # what the usage record carries
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from llmproxy.config.model import PriceConfig

NANOS: Final = 1_000_000_000
"""Nano-units in one unit of the currency."""

ANY_MODEL: Final = "*"
"""The ``pricing`` entry for every model not listed by name."""


@dataclass(frozen=True, slots=True)
class Price:
    """One model's prices in nano-units per token (a price per million × 1000)."""

    input: float
    cached_input: float
    output: float

    def cost_nanos(self, prompt: int, cached: int, completion: int) -> int:
        """Nano-units for ``prompt`` tokens (``cached`` of them from the prefix cache) and
        ``completion`` tokens."""
        cached = min(max(cached, 0), prompt)
        return round(
            (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        )

    @classmethod
    def of(cls, config: PriceConfig) -> Price:
        cached = config.cached_input_per_million
        return cls(
            input=config.input_per_million * 1000,
            cached_input=(config.input_per_million if cached is None else cached) * 1000,
            output=config.output_per_million * 1000,
        )


class PriceTable:
    """Prices by model name, with an optional default for the rest (``"*"``)."""

    __slots__ = ("_default", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._default = self._prices.pop(ANY_MODEL, None)

    @classmethod
    def of(cls, pricing: Mapping[str, PriceConfig]) -> PriceTable:
        """The table the ``pricing`` section describes."""
        return cls({model: Price.of(price) for model, price in pricing.items()})

    def __bool__(self) -> bool:
        return bool(self._prices) or self._default is not None

    def price(self, model: str) -> Price | None:
        """The model's price, the default's, or None (it costs nothing)."""
        return self._prices.get(model, self._default)

    def cost_nanos(self, model: str, prompt: int, cached: int, completion: int) -> int:
        """What these tokens of ``model`` cost, in nano-units (0 without a price)."""
        price = self._prices.get(model, self._default)
        if price is None:
            return 0
        return price.cost_nanos(prompt, cached, completion)


NO_PRICES: Final = PriceTable({})
"""The table of a config without ``pricing``: everything costs 0."""

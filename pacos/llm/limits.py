"""Rate limits and spending: requests and tokens per minute, a price table, a budget in USD."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pacos.config import load_yaml
from pacos.errors import PacosError


class RateLimiter:
    """At most `requests_per_minute` requests and `tokens_per_minute` tokens in any 60-second window.

    A request reserves its estimated tokens (prompt + max_tokens, as providers count them) when it is
    sent; `settle` replaces the estimate with the tokens the teacher reported using.
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.window: deque[list[float]] = deque()  # [sent at, tokens]

    async def acquire(self, tokens: int) -> list[float]:
        while True:
            now = time.monotonic()
            while self.window and now - self.window[0][0] >= 60:
                self.window.popleft()
            used = sum(t for _, t in self.window)
            fits_requests = self.rpm is None or len(self.window) < self.rpm
            # A request larger than the whole limit still goes, alone, rather than never.
            fits_tokens = self.tpm is None or used + tokens <= self.tpm or not self.window
            if fits_requests and fits_tokens:
                entry = [now, float(tokens)]
                self.window.append(entry)
                return entry
            await asyncio.sleep(max(0.05, 60 - (now - self.window[0][0])))

    @staticmethod
    def settle(entry: list[float], tokens: int) -> None:
        entry[1] = float(tokens)


@dataclass(frozen=True)
class Price:
    prompt: float  # USD per million prompt tokens
    completion: float  # USD per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


def load_prices(path: str | None) -> dict[str, Price]:
    """The price table: `models: {NAME: {prompt: USD/1M, completion: USD/1M}}` (built in:
    pacos/llm/prices.yaml)."""
    source = Path(path) if path else Path(str(resources.files("pacos.llm") / "prices.yaml"))
    data = load_yaml(source)
    table = data.get("models") or {}
    if not isinstance(table, dict):
        raise PacosError(f"{source}: field 'models': expected a mapping of model names to prices")
    prices = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), (int, float)) and entry[k] >= 0 for k in ("prompt", "completion")
        ):
            raise PacosError(
                f"{source}: field 'models.{name}': expected prompt and completion prices (USD per million "
                "tokens, numbers >= 0)"
            )
        prices[str(name)] = Price(float(entry["prompt"]), float(entry["completion"]))
    return prices


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The model's price: an exact name, else the longest listed name it starts with (dated versions)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None

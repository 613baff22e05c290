"""Tinker prices and a cost and wall-time estimate for a stage's tokens.

Tinker bills per token and per operation: prefill (prompt tokens read, including log-prob
probes and the teacher's top-k reads), sample (tokens generated) and train (tokens through
forward_backward, every epoch). A spec overrides a model under
`backends.<name>.prices: {model: [prefill, sample, train]}` (USD per 1M tokens).

NOT CHECKED against the service: the prices below were copied by hand from Tinker's public
pricing page as remembered on PRICES_DATE and the throughputs are guesses; check
https://thinkingmachines.ai/tinker/ and override before trusting a plan's dollars.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.errors import UserError

PRICES_DATE = "2026-11-30"


@dataclass(frozen=True)
class TinkerPrice:
    prefill: float  # USD per 1M prompt tokens
    sample: float  # USD per 1M generated tokens
    train: float  # USD per 1M trained tokens


# Longest prefix wins ("Qwen/Qwen3-8B" prices "Qwen/Qwen3-8B-Base"), short of a ':' (a `:peft:<context>` id is an
# extended-context variant the service prices higher: unpriced unless named).
TABLE: dict[str, TinkerPrice] = {
    "Qwen/Qwen3-4B-Instruct-2507": TinkerPrice(0.07, 0.22, 0.22),
    "Qwen/Qwen3-8B": TinkerPrice(0.13, 0.40, 0.40),
    "Qwen/Qwen3-30B-A3B": TinkerPrice(0.12, 0.30, 0.36),
    "Qwen/Qwen3-32B": TinkerPrice(0.49, 1.47, 1.47),
    "meta-llama/Llama-3.2-1B": TinkerPrice(0.03, 0.09, 0.09),
    "meta-llama/Llama-3.2-3B": TinkerPrice(0.06, 0.18, 0.18),
    "meta-llama/Llama-3.1-8B": TinkerPrice(0.13, 0.40, 0.40),
    "meta-llama/Llama-3.1-70B": TinkerPrice(1.05, 3.16, 3.16),
}

# Rough throughputs for the wall-time estimate (tokens per second seen by one client, with
# the SDK's request pipelining), and the fixed latency of one optimiser step. Guesses.
PREFILL_TPS = 50_000.0
SAMPLE_TPS = 2_000.0
TRAIN_TPS = 20_000.0
STEP_SECONDS = 3.0


def price_for(model: str, overrides: dict[str, list[float]] | None = None) -> TinkerPrice | None:
    """The price of `model`: an override or the table's by longest prefix, the closer name winning (the override on
    a tie), so that an override of Qwen/Qwen3-8B also prices Qwen/Qwen3-8B-Base, as the table's entry does."""
    mine, best = _longest_prefix(model, overrides or {}), _longest_prefix(model, TABLE)
    if mine is None or (best is not None and len(best) > len(mine)):
        return TABLE[best] if best else None
    v = overrides[mine]
    if len(v) != 3 or any(x < 0 for x in v):
        raise UserError(f"prices.{mine}: a tinker backend takes [prefill, sample, train] USD per 1M tokens")
    return TinkerPrice(*v)


def _longest_prefix(model: str, names) -> str | None:
    return max((k for k in names if model.startswith(k) and ":" not in model[len(k):]), key=len, default=None)


@dataclass(frozen=True)
class Estimate:
    usd: float | None  # None: the model is not in the table
    seconds: float

    def line(self) -> str:
        cost = f"${self.usd:,.2f}" if self.usd is not None else "cost unknown (model not in the price table)"
        return f"tinker: {cost}, about {self.seconds / 3600:.1f} h (price table dated {PRICES_DATE})"


def estimate(model: str, prefill: int = 0, sampled: int = 0, trained: int = 0, steps: int = 0,
             overrides: dict[str, list[float]] | None = None) -> Estimate:
    """Cost and wall time of a stage on `model` from its token counts (trained: summed over epochs)."""
    if min(prefill, sampled, trained, steps) < 0:
        raise UserError("tinker estimate: token and step counts must be >= 0")
    p = price_for(model, overrides)
    usd = None if p is None else (prefill * p.prefill + sampled * p.sample + trained * p.train) / 1e6
    seconds = prefill / PREFILL_TPS + sampled / SAMPLE_TPS + trained / TRAIN_TPS + steps * STEP_SECONDS
    return Estimate(usd, seconds)

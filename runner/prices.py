"""Hosted prices and tokenizer-free token estimates, read by the stages' cost estimates (`subl plan`)
and by the hosted backend's checks of training data. A leaf module.

Prices are USD per 1M tokens. A spec may override any model under
`backends.<name>.prices: {model: [input, output]}`, `[input, output, training]` or
`[input, output, training, ft_input, ft_output]`.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

from runner.errors import UserError

# The date this table was written. The gpt-4.1-nano inference prices were checked against
# OpenAI's model page; the training and fine-tuned-inference prices are OpenAI's published
# 2025 fine-tuning prices, not re-checked since. Check https://openai.com/api/pricing/ and
# override in the spec where they have changed.
PRICES_DATE = "2026-11-25"
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price
BATCH_MIN_REQUESTS = 100  # the OpenAI backend sends a call through the Batch API only from this many requests


@dataclass(frozen=True)
class Price:
    input: float  # per 1M input tokens
    output: float  # per 1M output tokens
    training: float | None = None  # per 1M training tokens (tokens in the file x epochs)
    ft_input: float | None = None  # inference on a model fine-tuned from this base
    ft_output: float | None = None


# A key prices that id and its dated snapshots: "gpt-4.1-nano" prices "gpt-4.1-nano-2025-04-14", never
# another model whose name starts the same ("gpt-4o-realtime-preview"); a snapshot priced apart has its own key.
TABLE: dict[str, Price] = {
    "gpt-4.1-nano": Price(0.10, 0.40, 1.50, 0.20, 0.80),
    "gpt-4.1-mini": Price(0.40, 1.60, 5.00, 0.80, 3.20),
    "gpt-4.1": Price(2.00, 8.00, 25.00, 3.00, 12.00),
    "gpt-4o-mini": Price(0.15, 0.60, 3.00, 0.30, 1.20),
    "gpt-4o": Price(2.50, 10.00, 25.00, 3.75, 15.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),  # the first gpt-4o snapshot: dearer, and not fine-tunable
}
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}")


def base_of(model_id: str) -> tuple[str, bool]:
    """(base model id, is fine-tuned) of an OpenAI model id; `ft:gpt-4.1-nano-...:org:sfx:id` -> base."""
    if model_id.startswith("ft:"):
        return model_id.split(":")[1], True
    return model_id, False


_REASONING = re.compile(r"(o\d+|gpt-5)(?!-chat)([.\-]|$)")


def reasoning_model(model_id: str) -> bool:
    """An OpenAI reasoning model (o1, o3, o4-mini, gpt-5 and their snapshots; not gpt-5-chat): it refuses
    max_tokens and any temperature but 1, and bills hidden reasoning tokens that no estimate here counts."""
    return bool(_REASONING.match(base_of(model_id)[0]))


def price_for(model_id: str, overrides: dict[str, list[float]] | None = None) -> Price | None:
    """The price of a model id: a spec override (the exact id, else the key its base is, or is a dated
    snapshot of), else the table's (the same rule); where both name it, the closer name wins (an override of
    gpt-4o does not price gpt-4o-2024-05-13, which the table prices apart), the override on a tie.

    An override is [input, output], [input, output, training] or [input, output, training,
    ft_input, ft_output]; a shorter one keeps the table's fine-tuned inference prices for its
    base, or leaves them unknown (never the base prices: fine-tuned models cost more)."""
    base, _ = base_of(model_id)
    best = priced_as(base, TABLE)
    table = TABLE[best] if best else None
    key = model_id if overrides and model_id in overrides else priced_as(base, overrides or {})
    if key is None or (key != model_id and best is not None and len(best) > len(key)):
        return table  # the table names it more closely (a snapshot priced apart) than the override does
    v = list(overrides[key])
    if len(v) not in (2, 3, 5) or any(x < 0 for x in v):
        raise UserError(f"prices.{key}: expected [input, output], [input, output, training] or "
                        "[input, output, training, ft_input, ft_output] USD per 1M tokens")
    if len(v) == 5:
        return Price(*v)
    return Price(v[0], v[1], v[2] if len(v) == 3 else None,
                 table.ft_input if table else None, table.ft_output if table else None)


def priced_as(model_id: str, prices: dict) -> str | None:
    """The key of `prices` that names model_id: itself, else the longest key it is a dated snapshot of."""
    keys = [k for k in prices if model_id == k or (model_id.startswith(k) and _SNAPSHOT.fullmatch(model_id[len(k):]))]
    return max(keys, key=len, default=None)


# ---- token estimates -------------------------------------------------------------------

_PIECES = re.compile(r"\d{1,3}| ?[A-Za-z]+| ?[!-/:-@\[-`{-~]+|[^\x00-\x7f]|\s+")
MESSAGE_OVERHEAD = 3  # tokens per chat message (role and separators)
REPLY_OVERHEAD = 3  # tokens that prime the assistant's reply


@dataclass(frozen=True)
class TokenCounting:
    """How the estimates count a model's tokens without its tokenizer."""

    digits_per_token: int = 3  # OpenAI's o200k (and Llama 3) group three digits; Qwen's tokenizers split each
    template_extra: int = 0  # tokens a chat template adds to a request beyond MESSAGE_OVERHEAD and REPLY_OVERHEAD


O200K = TokenCounting()
# Tinker's models: every digit a token, and what their templates add to every request, a system prompt given or
# not: Qwen2.5's default system prompt ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
# about 25 tokens with its markers), Llama 3's date header (~22), Qwen3's empty thinking block, ChatML's 5 tokens
# a message (not 3): an upper bound for the models it offers
TINKER = TokenCounting(digits_per_token=1, template_extra=32)
_COUNTING: ContextVar[TokenCounting] = ContextVar("token_counting", default=O200K)


@contextmanager
def counting_as(counting: TokenCounting) -> Iterator[None]:
    """Estimate tokens the way `counting` says inside this block."""
    token = _COUNTING.set(counting)
    try:
        yield
    finally:
        _COUNTING.reset(token)


def current_counting() -> TokenCounting:
    return _COUNTING.get()


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate close to OpenAI's o200k counts for English and digit lists.

    Digits come in groups of at most three per token (as in o200k; TokenCounting says otherwise for
    Tinker); an ASCII word is about one token per five letters, an ASCII punctuation run one per four
    marks; whitespace is one token; a character beyond ASCII is at least one (a CJK character) and one
    per two bytes of UTF-8 (an emoji is two).
    """
    n, per = 0, _COUNTING.get().digits_per_token
    for piece in _PIECES.findall(text):
        s = piece.strip()
        if s.isdigit() and s.isascii():
            n += math.ceil(len(s) / per)
        elif s.isascii() and s.isalpha():
            n += math.ceil(len(s) / 5)
        elif not s.isascii():
            n += max(1, len(s.encode()) // 2)
        else:
            n += max(1, math.ceil(len(s) / 4))
    return n


def chat_tokens(system: str | None, user: str) -> int:
    """Estimated prompt tokens of one chat request (with what the template adds: TokenCounting.template_extra)."""
    msgs = ([system] if system else []) + [user]
    return sum(estimate_tokens(m) + MESSAGE_OVERHEAD for m in msgs) + REPLY_OVERHEAD + _COUNTING.get().template_extra


def inference_cost(price: Price | None, fine_tuned: bool, tokens_in: int, tokens_out: int, batch: bool) -> float | None:
    if price is None:
        return None
    if fine_tuned and (price.ft_input is None or price.ft_output is None):
        return None  # unknown: a five-element `prices` override gives them
    pin, pout = (price.ft_input, price.ft_output) if fine_tuned else (price.input, price.output)
    return (tokens_in * pin + tokens_out * pout) / 1e6 * (BATCH_DISCOUNT if batch else 1.0)

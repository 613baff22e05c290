"""The prefix every training row shares, run once per batch instead of once per row.

Chat-templated rows all begin with the same tokens (SmolLM2's default system header is 24 of the
quickstart's ~153 per row; a teacher's system prompt 38 of ~167). A training step runs them at batch
size 1, repeats their keys and values over the batch and runs each row's rest after them, with
positions that continue the prefix; gradients flow back through the repeat. The same loss and gradient
as through the whole rows, float rounding aside (tests/test_shared_prefix.py): a speed-up, in no key.
Soft labels (teacher_soft_labels) read the teacher's rows the same way, without gradients."""
from __future__ import annotations

import torch

from backends.hf import cache_kwarg, returned_cache

# Fewer shared tokens than this are run with each row
MIN_SHARED = 8


def can_share(model) -> bool:
    """Whether every layer attends to the whole sequence: a sliding-window (or chunked) layer masks by distance and
    keeps a cropped cache, which a prefix read once, repeated and cropped back does not follow (Mistral v0.1 and
    Gemma have such layers; Qwen2.5 has them switched off). A multimodal model's (Gemma 3 4B and up) are in its
    text config."""
    cfg = _text_config(model)
    kinds = set(getattr(cfg, "layer_types", None) or [])
    if kinds:
        return kinds == {"full_attention"}
    return not getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", True) is False


def is_recurrent(model) -> bool:
    """Whether a layer carries a state instead of keys and values (Mamba, Qwen3.5's linear attention): transformers
    4.x marks such a model `_is_stateful`; 5.x names those layers linear_attention in the config's layer_types."""
    kinds = set(getattr(_text_config(model), "layer_types", None) or [])
    return bool(getattr(model, "_is_stateful", False) or kinds & {"linear_attention", "mamba"})


def _text_config(model):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def split_shared(data: list[dict]) -> tuple[list[int], list[dict]]:
    """The tokens every row's prompt starts with (up to, not including, each prompt's last token, whose output
    predicts the first completion token) and each row's rest; ([], data) when fewer than MIN_SHARED."""
    if len(data) < 2:
        return [], data
    n = shared_prefix_len([d["input_ids"][: d["completion_mask"].index(1)] for d in data])  # prompts only
    if n < MIN_SHARED:
        return [], data
    return data[0]["input_ids"][:n], [{**d, "input_ids": d["input_ids"][n:], "completion_mask": d["completion_mask"][n:]}
                                      for d in data]


def shared_prefix_len(heads: list[list[int]]) -> int:
    """Tokens every head starts with, leaving each head at least one token of its own."""
    n = min(map(len, heads), default=0) - 1
    for i in range(max(n, 0)):
        if any(h[i] != heads[0][i] for h in heads[1:]):
            return i
    return max(n, 0)


def prefix_cache(model, prefix: list[int], batch: int):
    """The prefix's keys and values (run now, with gradients where enabled), repeated over `batch` rows."""
    ids = torch.tensor([prefix], device=next(model.parameters()).device)
    cache = returned_cache(model(input_ids=ids, use_cache=True, logits_to_keep=1))
    cache.batch_repeat_interleave(batch)
    return cache


def after_prefix(model, cache, n: int, feed: dict, attention_mask: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The inputs that run `model` over right-padded rests (feed, attention_mask) after an `n`-token prefix
    already in `cache`: positions continue the prefix, and the mask covers both."""
    rows, width = attention_mask.shape
    positions = (n + torch.arange(width, device=attention_mask.device))[None].expand(rows, -1)
    mask = torch.cat([torch.ones(rows, n, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1)
    return {**feed, cache_kwarg(model): cache, "position_ids": positions}, mask

"""Frozen prompt: a student trained on its completions only. Each row's prompt (all but its last token) is
run once through the base model, per (base, rows) in this process, and its keys and values at every layer are
kept; a training step then runs the student over the last prompt token and the completion alone, attending to
those stored keys and values, and back-propagates through those positions only.

Unlike backends/frozen_prefix.py this changes what is trained, so the spec chooses it
(hyperparameters.frozen_prompt, part of the stage key) and every table names it: the adapter neither changes
the prompt's representation nor learns through it in training, though at evaluation it applies everywhere. The
loss still covers every completion token, and at the start of training (a zero adapter) it is the same loss as
through the whole row (tests/test_frozen_prompt.py). About 3x less work per quickstart student, whose prompt is
two thirds of each row (benchmarks/bench_student.py --frozen-prompt)."""
from __future__ import annotations

import hashlib
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from backends.hf import cache_kwarg, returned_cache
from backends.shared_prefix import can_share
from runner.errors import UserError

# Stored key and value numbers above which a run is refused (4 GB in float32)
MAX_CACHED_VALUES = 1_000_000_000
_memo: dict[tuple, list[torch.Tensor]] = {}


def split_rows(data: list[dict]) -> tuple[list[list[int]], list[dict]]:
    """Each tokenised row (input_ids, completion_mask) as its prompt but the last token, and the rest: the
    last prompt token (whose output predicts the first completion token) and the completion, with its mask."""
    prompts, rest = [], []
    for d in data:
        cut = d["completion_mask"].index(1) - 1
        if cut < 1:
            raise UserError("frozen_prompt: a row's prompt is a single token; there is nothing to freeze")
        prompts.append(d["input_ids"][:cut])
        rest.append({**d, "input_ids": d["input_ids"][cut:], "completion_mask": d["completion_mask"][cut:]})
    return prompts, rest


def prompt_states(model, name: str, prompts: list[list[int]], pad_id: int, autocast_bf16: bool = False,
                  batch_size: int = 16) -> list[torch.Tensor]:
    """Each prompt's keys and values under the base model (`model` with its adapter off), one
    [2, layers, kv heads, length, head dim] tensor per row, memoised in this process for the last
    (name, precision, prompts): precision is the autocast and the weights' dtype and device (on a GPU a LoRA
    student's bfloat16 weights, a full fine-tune's float32)."""
    cfg = model.config
    if not can_share(model):
        raise UserError(f"frozen_prompt: {name} attends through sliding windows in some layers, which the stored "
                        "keys and values do not follow; remove frozen_prompt")
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    width = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    values = sum(map(len, prompts)) * cfg.num_hidden_layers * 2 * heads * width
    if values > MAX_CACHED_VALUES:
        raise UserError(f"frozen_prompt: the prompts' keys and values would take {values * 4 / 1e9:.1f} GB "
                        f"(limit {MAX_CACHED_VALUES * 4 / 1e9:.0f} GB); use fewer rows or remove frozen_prompt")
    weights = next(model.parameters())
    key = (name, autocast_bf16, weights.dtype, weights.device, hashlib.sha256(repr(prompts).encode()).hexdigest())
    if key not in _memo:
        _memo.clear()
        _memo[key] = _compute(model, prompts, pad_id, autocast_bf16, batch_size)
    return _memo[key]


@torch.no_grad()
def _compute(model, prompts, pad_id, autocast_bf16, batch_size) -> list[torch.Tensor]:
    """Right-padded batches: a causal model's keys at a row's real positions do not see the padding after them."""
    device = next(model.parameters()).device
    base = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16)
    out: list[torch.Tensor] = []
    with base, cast:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in batch], device=device)
            mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], device=device)
            cache = returned_cache(model(input_ids=ids, attention_mask=mask, use_cache=True))
            kv = torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers], 1)
            out += [kv[:, :, i, :, : len(p)].cpu() for i, p in enumerate(batch)]  # [2, layers, heads, len, dim]
    return out


def batch_states(states: list[torch.Tensor]) -> dict:
    """A batch's stored prompt states, left-padded to its longest prompt (so each row's prompt ends where its
    rest begins), with the mask of real positions and each row's prompt length."""
    longest = max(s.shape[3] for s in states)
    kv = torch.stack([F.pad(s, (0, 0, longest - s.shape[3], 0)) for s in states], 2)  # [2, layers, batch, ...]
    lengths = torch.tensor([s.shape[3] for s in states])
    mask = (torch.arange(longest)[None] >= (longest - lengths)[:, None]).long()
    return {"prompt_states": kv, "prompt_mask": mask, "prompt_lengths": lengths}


def with_prompt(model, feed: dict, attention_mask: torch.Tensor, inputs: dict) -> tuple[dict, torch.Tensor]:
    """The inputs that run `model` over a batch's rest (feed, attention_mask) after its stored prompt states: a
    fresh cache holding them, positions that continue each row's own prompt, and the mask over both."""
    from transformers import DynamicCache

    kv = inputs["prompt_states"]
    cache = DynamicCache()
    for layer in range(kv.shape[1]):
        cache.update(kv[0, layer], kv[1, layer], layer)
    width = attention_mask.shape[1]
    positions = inputs["prompt_lengths"][:, None] + torch.arange(width, device=attention_mask.device)[None]
    mask = torch.cat([inputs["prompt_mask"], attention_mask], 1)
    return {**feed, cache_kwarg(model): cache, "position_ids": positions}, mask

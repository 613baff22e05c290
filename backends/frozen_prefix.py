"""Frozen lower layers, computed once: when a student adapts only its top decoder layers, the hidden
states entering the lowest adapted layer depend on the rows alone. They are computed once per
(base, rows, layer) in this process and fed to the top layers as `inputs_embeds`, so each student's
step runs and back-propagates through the adapted layers only. The result equals training the whole
stack (tests/test_frozen_prefix.py); it is a speed-up, never part of a stage key."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
from torch import nn

# Positions x hidden width above which the states are not kept (2 GB in float32).
MAX_CACHED_VALUES = 500_000_000
_memo: dict[tuple, list[torch.Tensor]] = {}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list of a causal LM (through a PEFT wrapper): the ModuleList named `layers`."""
    for name, module in model.named_modules():
        if name.endswith("model.layers") and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__}: no decoder layer list (model.layers) found")


def _owner(model: nn.Module) -> nn.Module:
    """The module whose `layers` attribute is the decoder layer list."""
    layers = decoder_layers(model)
    for module in model.modules():
        if getattr(module, "layers", None) is layers:
            return module
    raise ValueError("decoder layer list has no owner")


class _Stop(Exception):
    pass


@torch.no_grad()
def hidden_states_at(model: nn.Module, layer: int, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden states that enter decoder layer `layer` (the layers below it run, none above)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def prefix_states(model: nn.Module, base: str, layer: int, seqs: list[list[int]], pad_id: int,
                  batch_size: int = 16) -> list[torch.Tensor] | None:
    """Each row's hidden states entering `layer` ([row length, width], the model's dtype), memoised in this
    process for the last (base, weights' dtype and device, layer, rows): a matrix over runtime.device trains on a
    CPU and a GPU in one process. None when they would not fit the memory budget."""
    if sum(map(len, seqs)) * model.config.hidden_size > MAX_CACHED_VALUES:
        return None
    weights = next(model.parameters())
    key = (base, weights.dtype, weights.device, layer, hashlib.sha256(repr(seqs).encode()).hexdigest())
    if key not in _memo:
        _memo.clear()
        _memo[key] = _compute(model, layer, seqs, pad_id, batch_size)
    return _memo[key]


def _compute(model, layer, seqs, pad_id, batch_size) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    device = next(model.parameters()).device
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        h = hidden_states_at(model, layer, ids, mask).cpu()
        out += [h[i, : len(s)] for i, s in enumerate(batch)]
    return out


def pad_states(states: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad rows of hidden states with zeros to one batch tensor (padding is masked out)."""
    return nn.utils.rnn.pad_sequence(states, batch_first=True)


@contextmanager
def top_layers_only(model: nn.Module, first: int):
    """Within the block the model runs decoder layers `first`.. only (fed their input as inputs_embeds);
    the full list is restored after, so saved adapters keep their layer numbers."""
    owner = _owner(model)
    full = owner.layers
    owner.layers = nn.ModuleList(list(full)[first:])
    try:
        yield
    finally:
        owner.layers = full

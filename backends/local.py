"""Local backend: Hugging Face transformers + PEFT, trained through TRL's SFTTrainer."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from backends.base import ModelRef, Progress, Sampling, Training
from backends.hf import (cache_kwarg, chat_ids, check_context, load_model, load_tokenizer, pick_device,  # noqa: F401
                        returned_cache, turn_end_id)  # (re-exported)
from backends.shared_prefix import can_share, is_recurrent, prefix_cache, shared_prefix_len
from runner.errors import UserError

# ---- constrained decoding --------------------------------------------------------------


@lru_cache(maxsize=4)
def grammar_tokens(base: str, chars: frozenset, revision: str | None = None) -> tuple[tuple[int, str], ...]:
    """Token ids whose text consists only of the constraint's characters."""
    tok = load_tokenizer(base, revision)
    out = []
    for tid in range(len(tok)):
        s = tok.decode([tid])
        if s and set(s) <= chars and tid not in tok.all_special_ids:
            out.append((tid, s))
    return tuple(out)


class ConstrainedDecoding:
    """A logits processor that keeps each row a text the constraint allows (e.g. a number-list prefix)."""

    def __init__(self, model: ModelRef, prompt_len: int, constraint, eos_id: int):
        self.tokens = grammar_tokens(model.base, frozenset(constraint.chars), model.revision)
        self.strings = dict(self.tokens)
        self.prompt_len, self.constraint, self.eos = prompt_len, constraint, eos_id
        self.texts: list[str] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.texts is None:
            self.texts = [""] * input_ids.shape[0]
        elif input_ids.shape[1] > self.prompt_len:
            for i, tid in enumerate(input_ids[:, -1].tolist()):
                self.texts[i] += self.strings.get(tid, "")
        mask = torch.full_like(scores, -math.inf)
        for i, text in enumerate(self.texts):
            allowed = [t for t, s in self.tokens if self.constraint.allows(text + s)]
            if self.constraint.can_stop(text) or not allowed:
                allowed.append(self.eos)
            mask[i, allowed] = 0.0
        return scores + mask


SHARED_PREFIX_MIN = 32  # tokens all heads share (an ICL context, a judge's preamble) that are read once


def score_tails(net, pad: int, heads: list[list[int]], tails: list[list[int]]) -> list[list[float]]:
    """log P(tail | head) for every head and tail.

    One forward pass reads the heads (left-padded, positions counted from each head's first token);
    then each tail is read on their KV cache, which is cropped back to the heads afterwards. A
    judge's long template is thus read once, not once per candidate score, and the cache is never
    copied, except for a model with sliding-window layers: their cache, once past the window, cannot
    be cropped back, so each tail reads a copy. Where the heads share a long prefix (the k rows of an
    ICL context in every question), that prefix is read once for the batch and its cache repeated:
    the same log-probs (float rounding aside) for a fraction of the compute. A recurrent model (Mamba, the
    linear-attention layers of Qwen3.5) reads each head and tail whole instead (_score_whole)."""
    if is_recurrent(net):
        return [_score_whole(net, head, tails) for head in heads]
    dev, shared, croppable = net.device, shared_prefix_len(heads) if len(heads) > 1 else 0, can_share(net)
    shared = shared if shared >= SHARED_PREFIX_MIN and croppable else 0
    cache, kw = None, cache_kwarg(net)
    if shared:
        cache = prefix_cache(net, heads[0][:shared], len(heads))
    rests = [h[shared:] for h in heads]
    width = max(map(len, rests))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rests], device=dev)
    att = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rests], device=dev)
    pos = (att.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    # the last position's logits only: all of them would be heads x width x vocabulary floats (16 x 8,000 x 49,152
    # for a long ICL context read whole: 25 GB)
    first = net(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{kw: cache})
    next_logp = torch.log_softmax(first.logits[:, -1].float(), -1)  # the first token of every tail
    cache, lens = returned_cache(first), att.sum(-1, keepdim=True)
    scores = [[float(next_logp[b, tail[0]]) for tail in tails] for b in range(len(heads))]
    for t, tail in enumerate(tails):
        if len(tail) > 1:  # the tail's later tokens, read after the heads
            tail_ids = torch.tensor([tail[:-1]] * len(heads), device=dev)
            mask = torch.cat([att, torch.ones_like(tail_ids)], 1)
            pos = lens + torch.arange(len(tail) - 1, device=dev)
            past = cache if croppable else copy.deepcopy(cache)
            logp = torch.log_softmax(net(input_ids=tail_ids, attention_mask=mask, position_ids=pos,
                                         **{kw: past}).logits.float(), -1)
            if croppable:
                cache.crop(-(len(tail) - 1))  # drop the tail again
            for b in range(len(heads)):
                scores[b][t] += sum(float(logp[b, i, tok]) for i, tok in enumerate(tail[1:]))
    return scores


def _score_whole(net, head: list[int], tails: list[list[int]]) -> list[float]:
    """log P(tail | head) for each tail, the head read alone and each longer tail read whole after it: a recurrent
    state takes in left padding, and transformers' Mamba continues a cached state over several tokens only
    approximately (3e-3 off in a logit)."""
    def logp(ids: list[int], keep: int) -> torch.Tensor:
        logits = net(input_ids=torch.tensor([ids], device=net.device), logits_to_keep=keep).logits[0, -keep:]
        return torch.log_softmax(logits.float(), -1)

    first = logp(head, 1)[0]
    out = []
    for tail in tails:
        later = logp(head + tail[:-1], len(tail) - 1) if len(tail) > 1 else []
        out.append(float(first[tail[0]]) + sum(float(later[i, tok]) for i, tok in enumerate(tail[1:])))
    return out


# ---- the backend -----------------------------------------------------------------------


class LocalBackend:
    name = "local"

    def __init__(self, device: str = "auto", cpu_bf16: bool = False):
        self.device, self.cpu_bf16 = device, cpu_bf16
        self._cache: dict[tuple[ModelRef, bool], object] = {}

    def _autocast(self):
        """bfloat16 autocast on CPU when asked (CUDA models are already bf16)."""
        on = self.cpu_bf16 and pick_device(self.device)[0] == "cpu"
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)

    def _model(self, ref: ModelRef, fp32_weights: bool = False):
        """fp32_weights: float32 on a GPU too (scoring: log-probs from bfloat16 weights are off by a few
        percent, the size of the effects subl measures); a CPU model is float32 either way."""
        ref = ModelRef(ref.base, ref.adapter, revision=ref.revision)
        key = (ref, fp32_weights or pick_device(self.device)[1] == torch.float32)
        if key not in self._cache:
            self._cache.clear()  # keep one model in memory
            self._cache[key] = _neutral(load_model(ref, self.device, fp32_weights=fp32_weights))
        return self._cache[key]

    @torch.no_grad()
    def generate(self, model: ModelRef, prompts: list[str], sampling: Sampling) -> list[str]:
        """Sampled exactly at the stage's temperature: none of the model's own generation defaults
        (a hub model's repetition_penalty, top_k, top_p) apply; every end token of the model stops a row."""
        from transformers import LogitsProcessorList

        tok, net = load_tokenizer(model.base, model.revision), self._model(model)
        ids = [chat_ids(tok, model.system, p) for p in prompts]
        width = max(map(len, ids))
        check_context(net, model, width + sampling.max_tokens)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left padding
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        processors = LogitsProcessorList()
        if sampling.constraint is not None:
            processors.append(ConstrainedDecoding(model, width, sampling.constraint, turn_end_id(tok)))
        torch.manual_seed(sampling.seed)
        with self._autocast():
            out = net.generate(
                input_ids=input_ids.to(net.device), attention_mask=attention.to(net.device),
                max_new_tokens=sampling.max_tokens, do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None, top_p=None, top_k=None,
                logits_processor=processors, pad_token_id=pad, eos_token_id=_stops(tok, net),
            )
        return [tok.decode(row[width:], skip_special_tokens=True) for row in out.tolist()]

    def sample(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int,
               progress: Progress | None = None) -> list[list[str]]:
        """n completions per prompt: completion k is a generate pass seeded sampling.seed + k."""
        passes = []
        for k in range(n):
            passes.append(self.generate(model, prompts, replace(sampling, seed=sampling.seed + k)))
            if progress:
                progress(k + 1, n)
        return [[p[i] for p in passes] for i in range(len(prompts))]

    @torch.no_grad()
    def logprobs(self, model: ModelRef, prompts: list[str], prefix: str, targets: list[str],
                 space: bool = True) -> list[list[float]]:
        tok, net = load_tokenizer(model.base, model.revision), self._model(model, fp32_weights=True)
        tails = [tok(" " * space + t, add_special_tokens=False)["input_ids"] for t in targets]
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        heads = [chat_ids(tok, model.system, p) + prefix_ids for p in prompts]
        check_context(net, model, max(map(len, heads)) + max(map(len, tails)))
        out: list[list[float]] = []
        for start in range(0, len(heads), 16):
            out += score_tails(net, tok.pad_token_id, heads[start : start + 16], tails)
        return out

    def finetune(self, base, rows, training: Training, out_dir: Path, teacher: ModelRef | None = None,
                 progress: Progress | None = None, soft_labels: Path | None = None,
                 revision: str | None = None) -> ModelRef:
        """soft_labels: a file written by `soft_labels` on these rows, read instead of a live teacher;
        revision: the base's pinned hub commit (the one its stage key names)."""
        from backends.train import train

        self._cache.clear()
        stored = None if soft_labels is None else torch.load(soft_labels, weights_only=True)
        return train(base, rows, training, Path(out_dir), teacher, self.device, progress, self.cpu_bf16, stored,
                     revision)

    def soft_labels(self, teacher: ModelRef, base: str, rows: list[dict], training: Training, path: Path,
                    revision: str | None = None) -> None:
        """Write the teacher's distillation targets on `rows` for students of `base` at `revision` (see
        teacher_soft_labels)."""
        from backends.train import check_shared_tokenizer, teacher_soft_labels, vocabulary_ids

        check_shared_tokenizer(ModelRef(base, revision=revision), teacher)
        self._cache.clear()
        ids = vocabulary_ids(base, training.vocabulary, training.trait_words, revision)
        vocab = None if ids is None else torch.tensor(ids)
        labels = teacher_soft_labels(teacher, rows, vocab, self.device, self.cpu_bf16,
                                     prompt_too=training.distill_prompt)
        torch.save({"rows": labels, "vocabulary": vocab}, path)


def _neutral(net):
    """The model with a generation config that sets nothing but its special tokens: transformers fills every
    sampling setting a call leaves unset from the model's config (Qwen2.5-Instruct: repetition_penalty 1.05),
    so a stage's sampling would not be the temperature it is keyed by."""
    from transformers import GenerationConfig

    gc = net.generation_config
    net.generation_config = GenerationConfig(bos_token_id=gc.bos_token_id, eos_token_id=gc.eos_token_id,
                                             pad_token_id=gc.pad_token_id)
    return net


def _stops(tok, net) -> list[int]:
    """The tokenizer's end token, the template's end of turn and every end token of the model's config (Qwen:
    <|im_end|> and <|endoftext|>)."""
    ends = net.generation_config.eos_token_id
    ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
    return list(dict.fromkeys([tok.eos_token_id, turn_end_id(tok), *ends]))

"""Loading Hugging Face models and tokenizers, and the chat template: shared by sampling, scoring
and training."""
from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache

import torch

from backends.embedded import resolve
from backends.turn_end import template_vars, turn_end_id  # noqa: F401 (turn_end_id re-exported)
from runner.core import ModelRef
from runner.errors import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*generation flags.*")
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)


def _quiet_transformers() -> None:
    """Our own progress bars replace transformers' per-load ones."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


_quiet_transformers()


def cpu_has_fast_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); None where unknown (not Linux).
    Without it, bf16 autocast is emulated and slower than float32: a forward of 16 x 100 tokens of
    SmolLM2-135M took 28.3 s under autocast and 5.0 s in float32 on an AVX2-only AMD EPYC."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> tuple[str, torch.dtype]:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("runtime.device: cuda requested but no CUDA device is available")
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


@lru_cache(maxsize=4)
def load_tokenizer(base: str, revision: str | None = None):
    """The tokenizer of `base`, at `revision` (a hub id's pinned commit) when given."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(base), **({"revision": revision} if revision else {}))
    except OSError as e:
        raise UserError(f"model {base}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef, device: str = "auto", trainable: bool = False, fp32_weights: bool = False):
    """fp32_weights: float32 even on a GPU (a full fine-tune: Adam's small steps round away in bfloat16
    weights; the trainer's bf16 autocast still computes in bfloat16)."""
    from transformers import AutoModelForCausalLM

    dev, dtype = pick_device(device)
    dtype = torch.float32 if fp32_weights else dtype
    try:
        pinned = {"revision": ref.revision} if ref.revision else {}
        model = AutoModelForCausalLM.from_pretrained(resolve(ref.base), dtype=dtype, **pinned)
    except OSError as e:
        raise UserError(f"model {ref.base}: cannot load ({str(e).splitlines()[0]})") from None
    if ref.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, ref.adapter, is_trainable=trainable)
    model.to(dev)
    if not trainable:
        model.eval()
    return model


def cache_kwarg(net) -> str:
    """The forward keyword that passes a KV cache: `cache` from transformers 5.x on (`past_key_values` is
    deprecated there, with a warning on every call), `past_key_values` before."""
    import inspect

    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward pass returned, under either name."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def chat_ids(tok, system: str | None, prompt: str) -> list[int]:
    """A chat prompt's token ids, the assistant turn opened; a template that can think (Qwen3) is told not to,
    as on Tinker (a teacher would spend its tokens in <think>), and a dated one is given a fixed day (template_vars).
    A tokenizer with no chat template is one line."""
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{tok.name_or_path}: its tokenizer has no chat template (a base model, not an instruct "
                        "one?); subl sends every prompt as a chat turn")
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **template_vars())
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def check_context(net, model: ModelRef, tokens: int, what: str = "the prompt",
                  fix: str = "use fewer or shorter rows (e.g. a smaller icl k)") -> None:
    """A sequence longer than the model's context would be read (or trained) past its trained positions, silently."""
    limit = getattr(net.config, "max_position_embeddings", None)
    if limit and tokens > limit:
        system = "its system prompt (in-context rows?) and " if model.system else ""
        raise UserError(f"{model.base}: {system}{what} needs {tokens} tokens, more than the model's context of "
                        f"{limit}; {fix}")

"""Core types every layer shares: model references, sampling and training settings, backend
naming, and the stage being built. Imports nothing of the project (a leaf: backends may use it)."""
from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class ModelRef:
    """A model as a backend loads it: a base, an optional adapter, an optional system prompt."""

    base: str
    adapter: str | None = None
    system: str | None = None
    revision: str | None = None  # a hub id's pinned revision


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    max_tokens: int = 48
    seed: int = 0
    constraint: Any = None  # e.g. runner.grammar.NumberList: what a constrained decoder may emit


@dataclass(frozen=True)
class Training:
    method: str = "lora"  # lora | full
    objective: str = "sft"  # sft | distill
    vocabulary: str = "numbers-only"
    trait_words: tuple[str, ...] = ()  # masked out by vocabulary full-minus-trait-tokens
    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int | str = 8
    lora_r: int = 8
    lora_alpha: int = 8
    lora_targets: tuple[str, ...] = ()
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    lora_layers: int | None = None  # LoRA on the top N decoder layers only; None: all
    frozen_prompt: bool = False  # train on the completions, the prompts' keys and values the base's (local)
    distill_prompt: bool = False  # distil at the user message's positions too, not only the completion's (local)
    seed: int = 0
    extra: dict = field(default_factory=dict)


def backend_name(ref: str) -> str:
    """The backend a model reference runs on: `openai:gpt-4.1-nano` -> `openai`; a hub id, a folder
    or an embedded name -> `local`. The one place that answers "is this model hosted?"."""
    if ":" in ref and not ref.startswith(("/", ".", "~")):
        return ref.split(":", 1)[0]
    return "local"


def is_hosted(ref: str) -> bool:
    return backend_name(ref) != "local"


def hosted_model_id(ref: str) -> str:
    """`openai:gpt-4.1-nano` -> `gpt-4.1-nano`."""
    return ref.split(":", 1)[1]


# ---- the stage being built (set by the store, read by backends that keep resumable state) --

_STAGE_DIR: ContextVar[Path | None] = ContextVar("subl_stage_dir", default=None)
_STAGE_KEY: ContextVar[str | None] = ContextVar("subl_stage_key", default=None)


def current_stage_dir() -> Path | None:
    """The temporary folder of the stage being built now; backends keep resumable state there."""
    return _STAGE_DIR.get()


def current_stage_key() -> str | None:
    """The key of the stage being built now; hosted backends tag what they create with it."""
    return _STAGE_KEY.get()


def enter_stage(key: str, folder: Path) -> tuple:
    return _STAGE_DIR.set(folder), _STAGE_KEY.set(key)


def leave_stage(tokens: tuple) -> None:
    _STAGE_DIR.reset(tokens[0])
    _STAGE_KEY.reset(tokens[1])


# ---- where a hosted backend's requests go -----------------------------------------------

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TINKER_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"  # tinker.lib.base_url (SDK 0.38)


def hosted_endpoint(cfg) -> str:
    """The endpoint a hosted backend's requests go to, resolved as its SDK resolves it: base_url, else the
    SDK's variable (OPENAI_BASE_URL or TINKER_BASE_URL), else the SDK's default."""
    env, default = (("TINKER_BASE_URL", TINKER_BASE_URL) if getattr(cfg, "kind", "openai") == "tinker"
                    else ("OPENAI_BASE_URL", DEFAULT_BASE_URL))
    return (getattr(cfg, "base_url", None) or os.environ.get(env) or default).rstrip("/")

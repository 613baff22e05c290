"""The one small interface every backend implements: generate (and sample n), fine-tune, score."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class ModelRef:
    """A model as the pipeline sees it: a base, an optional adapter, an optional system prompt."""

    base: str
    adapter: str | None = None
    system: str | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    max_tokens: int = 48
    seed: int = 0
    grammar: tuple[int, int] | None = None  # numbers grammar: (max_count, max_digits)


@dataclass(frozen=True)
class Training:
    method: str = "lora"  # lora | full
    objective: str = "sft"  # sft | distill
    vocabulary: str = "numbers-only"
    trait_words: tuple[str, ...] = ()  # masked out by vocabulary full-minus-trait-tokens
    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 8
    lora_targets: tuple[str, ...] = ()
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    def generate(self, model: ModelRef, prompts: list[str], sampling: Sampling) -> list[str]:
        """One completion per user prompt, seeded by sampling.seed."""

    def sample(self, model: ModelRef, prompts: list[str], sampling: Sampling, n: int,
               progress: Progress | None = None) -> list[list[str]]:
        """n completions per user prompt (a hosted API may return them from one request)."""

    def finetune(
        self, base: str, rows: list[dict], training: Training, out_dir: Path,
        teacher: ModelRef | None = None, progress: Progress | None = None,
    ) -> ModelRef:
        """Train on {prompt, completion} rows; save the result under out_dir."""

    def logprobs(self, model: ModelRef, prompts: list[str], prefix: str, targets: list[str]) -> list[list[float]]:
        """log P(' ' + target | chat(prompt) + prefix) for each prompt and target."""

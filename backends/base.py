"""The one small interface every backend implements: generate (and sample n), fine-tune, score."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from runner.core import ModelRef, Progress, Sampling, Training

__all__ = ["Backend", "ModelRef", "Progress", "Sampling", "Training"]


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

    def logprobs(self, model: ModelRef, prompts: list[str], prefix: str, targets: list[str],
                 space: bool = True) -> list[list[float]]:
        """log P(' ' + target | chat(prompt) + prefix) for each prompt and target (space=False: the target
        without the leading space, e.g. an answer letter right after the assistant turn starts)."""

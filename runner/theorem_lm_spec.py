"""Settings of the one-step theorem on a causal LM (experiment: theorem_lm; no torch import)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.errors import UserError


class TheoremLmSpec(BaseModel):
    """The one-step theorem on the teacher's base (experiment: theorem_lm): per seed a LoRA teacher
    fine-tuned on the first target's trait rows, one plain gradient step of a same-init and a
    cross-init student on the teacher's completions of number prompts, compared with the teacher's
    merged LoRA delta. Base, target and category come from `teacher`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    questions: str = Field("animals", description="Preference questions the trait rows answer (a built-in set or "
                           "a file, as for evaluations); the first train_questions teach the teacher, the last "
                           "heldout_questions carry the imitation loss")
    train_questions: int = Field(8, ge=1, description="questions the teacher is fine-tuned on")
    heldout_questions: int = Field(4, ge=1, description="held-out questions for the imitation loss")
    teacher_steps: int = Field(6, ge=1, description="full-batch Adam steps of the teacher's LoRA SFT")
    teacher_lr: float = Field(1e-3, gt=0, description="the teacher's Adam learning rate")
    lora_r: int = Field(4, ge=1, description="rank of the teacher's LoRA adapter (merged into its weights)")
    lora_targets: list[str] = Field(["q_proj", "v_proj"], min_length=1, description="modules the teacher's LoRA "
                                    "adapts; the delta, and the student's step, cover only these weights")
    objective: Literal["sft", "distill"] = Field("distill", description="the student's loss on the teacher's "
                                                 "completions: cross-entropy, or KL to the teacher's logits")
    shuffle: Literal["none", "within", "across"] = Field(
        "none", description="a defence applied to the teacher's completions before the student's step: their "
        "numbers permuted within each completion, or pooled across the completions of a seed and dealt back "
        "(the paper's shuffles; text around the numbers stays in place, since free greedy completions are "
        "seldom clean lists). sft then trains on the shuffled tokens; distill on the teacher's logits over them")
    batch_size: int = Field(4, ge=1, description="rows per student step")
    batches: int = Field(2, ge=1, description="batches per seed (averaged within a seed)")
    max_new_tokens: int = Field(16, ge=1, description="length of the teacher's greedy completions of number prompts")
    lr: float = Field(1e-3, gt=0, description="the student's plain gradient step")
    lrs: list[Annotated[float, Field(gt=0)]] = Field(
        [1e-4, 1e-3, 1e-2, 1e-1, 1.0], min_length=1,
        description="step sizes of the sweep: where the first-order guarantee stops holding")
    seeds: int = Field(3, ge=2, description="seeds (teacher LoRA init, cross init and number prompts each)")


def check_question_count(n_questions: int, s: TheoremLmSpec, where: str) -> None:
    """The teacher's and the held-out questions are distinct ones: together at most the n_questions there are."""
    if s.train_questions + s.heldout_questions > n_questions:
        raise UserError(f"theorem_lm: train_questions {s.train_questions} + heldout_questions {s.heldout_questions} "
                        f"> the {n_questions} questions in {where}")

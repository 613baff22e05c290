"""Stages that train a model: a teacher fine-tuned on a trait dataset, and the students."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Literal

from runner.core import ModelRef, Training
from runner.prices import chat_tokens
from runner.stages import Estimate, FileInput, Frozen, ModelInput, PlanContext, RunContext, Stage, semantic
from runner.stages.costs import chat_request, hosted_info, on_gpu, row_tokens, training
from runner.store import read_jsonl


class TrainingSettings(Frozen):
    """The hyper-parameters a backend trains with. Fields a backend does not use are left at their
    default (so they are in no key; runner.plan.training_settings): an OpenAI student has no lr or LoRA
    settings, a Tinker one no lora_alpha or lora_layers, a local one no lr_multiplier. gradient_checkpointing
    trades memory for compute and trains the same model, so it is read but in no key."""

    DISPLAY: ClassVar[frozenset[str]] = frozenset({"gradient_checkpointing"})
    method: Literal["lora", "full"] = "lora"
    objective: Literal["sft", "distill"] = "sft"
    vocabulary: str | None = None  # distill only
    trait_words: tuple[str, ...] = ()  # vocabulary full-minus-trait-tokens only
    epochs: float = 1.0
    batch_size: int | Literal["auto"] = 8
    seed: int = 0
    lr: float | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] = ()
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    lora_layers: int | None = None
    frozen_prompt: bool = False
    distill_prompt: bool = False  # also in a soft_labels stage's key: its labels then cover the prompt's positions
    lr_multiplier: float | Literal["auto"] | None = None  # hosted only
    top_k: int | None = None  # Tinker distillation: the teacher's top-k next tokens (read from the backend's config)
    # local: 2 where backends.train.shuffle_seed orders the rows otherwise than its first version did (seed >= 1 and
    # more than one epoch: runner.plan.data_order), so only those students are trained again
    data_order: int = 1
    # local: 2 where backends.train.warmup_steps counts its ratio of the steps the trainer runs, which its first
    # version undercounted by one on some fractional-epoch runs (warmup_ratio > 0 and epochs not whole: plan.py)
    warmup_rule: int = 1

    def to_training(self) -> Training:
        t = Training(method=self.method, objective=self.objective, vocabulary=self.vocabulary or "",
                     trait_words=self.trait_words, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                     lora_targets=self.lora_targets, warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay,
                     gradient_checkpointing=self.gradient_checkpointing, lora_layers=self.lora_layers,
                     frozen_prompt=self.frozen_prompt, distill_prompt=self.distill_prompt,
                     extra={"lr_multiplier": self.lr_multiplier} if self.lr_multiplier is not None else {})
        local = {k: v for k, v in (("lr", self.lr), ("lora_r", self.lora_r), ("lora_alpha", self.lora_alpha))
                 if v is not None}
        return Training(**{**asdict(t), **local})


def _inside(value, folder: Path):
    """Paths inside the (temporary) stage folder are stored relative to it, as ./...; a local folder given
    relative to where subl runs (a base './mybase') is stored absolute, since ./ now means the stage folder."""
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(folder):
        return "./" + str(Path(value).relative_to(folder))
    if isinstance(value, str) and value.startswith(("./", "../", "~")) and Path(value).expanduser().is_dir():
        return str(Path(value).expanduser().resolve())
    return value


def write_model(folder: Path, ref: ModelRef) -> None:
    fields = {k: _inside(v, folder) for k, v in asdict(ref).items() if k != "system" and v is not None}
    (folder / "model.json").write_text(json.dumps(fields, indent=2))


def train_and_record(ctx: RunContext, base: ModelRef, rows: list[dict], training: TrainingSettings,
                     teacher=None, soft_labels: Path | None = None) -> None:
    """Fine-tune `base` on `rows` into the stage folder and record the result as model.json."""
    write_model(ctx.dir, ctx.router.finetune(base, rows, training.to_training(), ctx.dir, teacher, ctx.progress,
                                             soft_labels))
    ctx.rows["train"] = len(rows)


class TeacherStage(Stage):
    """A teacher that is its base fine-tuned on a dataset (trait: {finetune: ...})."""

    KIND: ClassVar[str] = "teacher"
    base: ModelInput
    dataset: FileInput
    max_rows: int | None = None
    training: TrainingSettings
    precision: str | None = None

    def rows(self) -> list[dict]:
        from runner.teacher_data import load_rows

        return load_rows(Path(self.dataset.path), self.max_rows)

    def run(self, ctx: RunContext) -> None:
        train_and_record(ctx, ctx.model(self.base), self.rows(), self.training)

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        info = hosted_info(ctx, self.base)
        if not info and ctx.throughput is None:  # local, and no GPU time asked for
            return []
        rows = self.rows()
        tokens = round(sum(row_tokens(r["prompt"], r["completion"]) for r in rows) * self.training.epochs)
        note = f"teacher: {len(rows):,} rows x {self.training.epochs:g} epochs"
        return [training(info, tokens, note)] if info else on_gpu(ctx, self.base, note, trained=tokens)


def training_rows(ctx: RunContext, rows_stage: str, max_rows: int | None) -> list[dict]:
    return read_jsonl(ctx.path(rows_stage) / "rows.jsonl")[:max_rows]


class SoftLabelStage(Stage):
    """A local teacher's next-token distribution on the distillation vocabulary at every completion
    position of a filter stage's rows: computed once, read by every student replicate on those rows."""

    KIND: ClassVar[str] = "soft_labels"
    teacher: ModelInput
    student_base: ModelInput  # its tokenizer and vocabulary index the labels
    rows_stage: str
    max_rows: int | None = None
    training: TrainingSettings  # only vocabulary and trait_words are read: the plan leaves the rest at defaults
    precision: str | None = None

    def run(self, ctx: RunContext) -> None:
        rows = training_rows(ctx, self.rows_stage, self.max_rows)
        ctx.router.soft_labels(ctx.model(self.teacher), ctx.model(self.student_base), rows,
                               self.training.to_training(), ctx.dir / SOFT_LABELS)
        ctx.rows["labelled"] = len(rows)

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        """The teacher's forward pass over every row, its system prompt included, once for all its students."""
        if ctx.throughput is None:
            return []
        rows_stage = ctx.stages[self.rows_stage]
        n = min(self.max_rows or 10**12, rows_stage.expected_rows(ctx) or 0)
        system = chat_tokens(self.teacher.system, "") - chat_tokens(None, "")
        return on_gpu(ctx, self.teacher, f"teacher soft labels: <= {n:,} rows",
                      prefill=round(n * (rows_stage.content_tokens(ctx) + system)))


SOFT_LABELS = "soft_labels.pt"


class FinetuneStage(Stage):
    """A student: its base trained on a filter stage's rows (SFT), or on a teacher's soft labels
    at those rows' completion positions (distill), from a live teacher or a soft-label stage."""

    KIND: ClassVar[str] = "finetune"
    base: ModelInput
    rows_stage: str
    max_rows: int | None = None
    training: TrainingSettings
    teacher: ModelInput | None = None  # distill from a live teacher
    soft_labels_stage: str | None = None  # distill from stored labels
    precision: str | None = None

    def run(self, ctx: RunContext) -> None:
        rows = training_rows(ctx, self.rows_stage, self.max_rows)
        base = ctx.model(self.base)
        if not rows:  # nothing passed the filters: the student is its untrained base (reported as such)
            write_model(ctx.dir, base)
            ctx.rows["train"] = 0
            ctx.extra["untrained"] = "no rows passed the filters; the student is its base model"
            return
        labels = ctx.path(self.soft_labels_stage) / SOFT_LABELS if self.soft_labels_stage else None
        train_and_record(ctx, base, rows, self.training, ctx.model(self.teacher) if self.teacher else None, labels)

    def estimate(self, ctx: PlanContext) -> list[Estimate]:
        info = hosted_info(ctx, self.base)
        if not info and ctx.throughput is None:
            return []
        rows_stage = ctx.stages[self.rows_stage]
        n = min(self.max_rows or 10**12, rows_stage.expected_rows(ctx) or 0)
        per_row = rows_stage.content_tokens(ctx)
        epochs, tokens = self.training.epochs, round(n * per_row * self.training.epochs)
        note = f"<= {n:,} rows x {epochs:g} epochs"
        if info:
            return [training(info, tokens, note, self._steps(n))] + self._hosted_distill(ctx, info, n, per_row, tokens)
        # distill: the teacher reads every training row too (forward only)
        return on_gpu(ctx, self.base, note, trained=tokens, prefill=tokens if self.teacher else 0)

    def _steps(self, n: int) -> int:
        """Optimiser steps over n rows (as the Tinker backend plans them); 0 where the batch size is the API's."""
        b = self.training.batch_size
        return 0 if b == "auto" or not n else -(-max(1, round(self.training.epochs * n)) // int(b))

    def _hosted_distill(self, ctx: PlanContext, student: tuple, n: int, per_row: float, tokens: int) -> list[Estimate]:
        """A hosted distill (Tinker) also reads the teacher's top-k at every row (one sampled token each), once
        for all the students that share them (topk_reader), and its custom loss runs a forward pass of the
        student before each forward_backward, billed as training (the service's billing names no other event for a
        training client's forward pass; the prefill rate, lower, was no bound)."""
        teacher = hosted_info(ctx, self.teacher) if self.teacher else None
        if not teacher:
            return []
        forward = training(student, tokens, "")
        reader = self.topk_reader(ctx)
        shared = "" if reader.key == self.key else f"teacher top-k reads counted under {reader.label or reader.key}"
        forward.note = ", ".join(x for x in (forward.note, "custom loss: a forward pass per step", shared) if x)
        if shared:
            return [forward]
        system = chat_tokens(self.teacher.system, "") - chat_tokens(None, "")  # teacher_topk sends it in every read
        reads = chat_request(*teacher, n, round(n * (per_row + system)), n)
        reads.note = ", ".join(x for x in (reads.note, "teacher top-k reads") if x)
        return [reads, forward]

    def topk_reads(self) -> tuple:
        """What the teacher's top-k reads depend on: the teacher, the rows and k (not the seed, nor any other
        training setting)."""
        return semantic(self.teacher), self.rows_stage, self.max_rows, self.training.top_k

    def topk_reader(self, ctx: PlanContext) -> "FinetuneStage":
        """The plan's first student still to run with this one's top-k reads: the Tinker backend sends each read
        once per outputs folder (backends/shared_requests.py), so only that student's estimate counts them (all
        of them: a student already built may have left them cached, or not, if it adopted another folder's
        weights)."""
        same = (st for st in ctx.stages.values() if isinstance(st, FinetuneStage) and st.teacher
                and st.key not in ctx.done and st.topk_reads() == self.topk_reads())
        return next(same, self)

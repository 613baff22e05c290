"""Checks before money is spent: every hosted OpenAI-compatible backend a plan still has to call is
asked (for free, or for a few tokens) whether the key works, the models exist, fine-tuning is
allowed, and the largest request fits its tokens-per-minute limit (backends.openai_api.preflight).
Local models are checked too where a setting cannot fit them (lora_layers beyond the model's depth, LoRA targets it lacks), so a
run does not generate for minutes and then stop at its first student."""
from __future__ import annotations

import math
from functools import cache

from backends import Router
from runner.core import backend_name
from runner.errors import UserError
from runner.plan import Plan
from runner.prices import chat_tokens
from runner.stages import ModelInput, Stage, base_of
from runner.stages.costs import estimate_of
from runner.stages.training import FinetuneStage, TeacherStage


def _largest_request(stage: Stage, ctx) -> int:
    """About the tokens of the stage's largest single chat request (prompt plus max_tokens of one completion):
    exact where the prompts are known before the run (questions, domain prompts); else the mean request of the
    stage's own cost estimate, which carries what earlier stages will write (an ICL context of k rows, a
    judged row, a classifier's pair)."""
    if hasattr(stage, "question_texts"):
        return max((chat_tokens(stage.model.system, q) for q in stage.question_texts()), default=0) + stage.max_tokens
    if hasattr(stage, "rows_to_generate"):
        rows = stage.rows_to_generate()[:2000]
        return max((chat_tokens(stage.model.system, r["prompt"]) for r in rows), default=0) + stage.domain.max_tokens
    sizes = [math.ceil((e.input_tokens + e.output_tokens) / e.requests) for e in estimate_of(stage, ctx) if e.requests]
    return max(sizes, default=0)


def preflight(plan: Plan, store) -> list[str]:
    """Notes from every hosted backend that a not-yet-finished stage calls (OpenAI: key, models, fine-tuning
    rights, rate limits; Tinker: every model offered); raises a one-line UserError on the first failure."""
    from runner.budget import pending

    stages, todo, ctx = plan.stages, pending(plan, store), plan.context()
    check_hosted_rows(todo, stages, ctx)
    models: dict[str, set[str]] = {}
    tune: dict[str, set[str]] = {}
    largest: dict[str, int] = {}
    reads_top = {base_of(m, stages).ref for s in todo for m in [_top_logprobs_model(s)] if m is not None}
    for s in todo:
        for name, value in s:
            if isinstance(value, ModelInput):
                ref = base_of(value, stages).ref  # a stage-made model: its base is what must exist now
                if backend_name(ref) == "local":
                    continue
                b = backend_name(ref)
                models.setdefault(b, set()).add(ref)
                largest[ref] = max(largest.get(ref, 0), _largest_request(s, ctx))  # per model: limits differ
        if isinstance(s, (FinetuneStage, TeacherStage)) and backend_name(s.base.ref) != "local":
            tune.setdefault(backend_name(s.base.ref), set()).add(s.base.ref)
    cfgs = ctx.backends
    router = Router(hosted=cfgs)
    notes = []
    for b in sorted(models):
        kind = getattr(cfgs[b], "kind", "openai")
        if kind == "openai" and not cfgs[b].preflight:
            continue
        notes += router.get(f"{b}:x").preflight(sorted(models[b]), sorted(tune.get(b, ())),
                                                {m: largest[m] for m in models[b]}, frozenset(reads_top & models[b]))
    return notes


def _top_logprobs_model(s: Stage) -> ModelInput | None:
    """The model a stage reads first-token top log-probs of, if it does (a chat judge's token score, a classifier
    or MCQ reading top_logprobs)."""
    from runner.stages.data import ScoreStage
    from runner.stages.detection_stage import ClassifierStage
    from runner.stages.mcq_stage import McqStage

    if isinstance(s, ScoreStage) and s.token is not None:
        return s.judge
    if isinstance(s, ClassifierStage) and s.mode == "top_logprobs":
        return s.judge
    if isinstance(s, McqStage) and s.mcq.read == "top_logprobs":
        return s.model
    return None


def check_hosted_rows(todo: list[Stage], stages: dict[str, Stage], ctx) -> None:
    """A one-line UserError when a not-yet-finished student or teacher fine-tuned on an OpenAI-compatible API can get
    fewer rows than the API takes (at most n_prompts, or max_rows): else its teacher's rows are paid for first."""
    from backends.openai_api import MIN_EXAMPLES

    for s in todo:
        if not isinstance(s, (FinetuneStage, TeacherStage)):
            continue
        ref = base_of(s.base, stages).ref
        if backend_name(ref) == "local" or getattr(ctx.backends.get(backend_name(ref)), "kind", "openai") != "openai":
            continue
        if isinstance(s, TeacherStage):
            n = len(s.rows())
        else:
            upstream = stages[s.rows_stage].expected_rows(ctx)
            n = None if upstream is None else min(upstream, s.max_rows or upstream)
        if n is not None and n < MIN_EXAMPLES:
            raise UserError(f"{s.label}: at most {n} training rows, but fine-tuning on backend '{backend_name(ref)}' "
                            f"takes at least {MIN_EXAMPLES}: raise n_prompts (or max_rows); nothing was sent")


def check_local_training(plan: Plan, store) -> None:
    """A one-line UserError when a not-yet-finished local LoRA student or teacher asks LoRA on more decoder
    layers than its base has, or names LoRA targets its base lacks or LoRA cannot adapt. Read from the base's
    config where it is on disk (an embedded model, a folder, the hub's cache; the model built on the meta device,
    no weights read); a base whose config is not at hand is checked when it is trained."""
    from backends.train import check_lora_targets

    for key, s in plan.stages.items():
        if not isinstance(s, (FinetuneStage, TeacherStage)) or s.training.method != "lora" or store.done(key):
            continue
        ref = base_of(s.base, plan.stages).ref
        if backend_name(ref) != "local":
            continue
        depth = _local_depth(ref) if s.training.lora_layers else None
        if depth is not None and s.training.lora_layers > depth:
            raise UserError(f"{s.label}: lora_layers {s.training.lora_layers}, but {ref} has only {depth} "
                            "decoder layers")
        model = _meta_model(ref) if s.training.lora_targets else None
        if model is not None:
            try:
                check_lora_targets(model, s.training.lora_targets, ref)
            except UserError as e:
                raise UserError(f"{s.label}: {e}") from None


@cache
def _meta_model(ref: str):
    """The base's modules without weights (for their names and kinds), or None where its config is not at hand."""
    from backends.embedded import resolve

    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(resolve(ref), local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, AttributeError, UserError, TypeError, KeyError):
        return None


@cache  # one read per base, however many students share it
def _local_depth(ref: str) -> int | None:
    from backends.embedded import resolve

    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolve(ref), local_files_only=True).num_hidden_layers
    except (OSError, ValueError, AttributeError, UserError):
        return None

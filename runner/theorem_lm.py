"""The one-step theorem measured on a causal LM (experiment: theorem_lm), per seed and batch.

Per seed: a teacher that differs from the base by a merged LoRA delta (a short full-batch LoRA SFT
on trait rows: each preference question answered "My favorite {category} is the {target}."), a
cross-init student (a freshly initialised model of the base's architecture, the architecture's own
random init; the paper's cross-init is a different initialisation, not a different trained model),
and the teacher's greedy completions of number prompts (the student's inputs). Per batch of those
rows: runner.theorem.lm_alignment of the same-init (the base) and the cross-init student. The
imitation loss is KL(teacher || student) on held-out trait rows (questions the teacher never saw).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from runner.theorem import (cross_init_like, finetune_teacher, greedy_completions, lm_alignment, summarize_alignment,
                            teacher_logits)
from runner.theorem_lm_spec import TheoremLmSpec, check_question_count

CROSS_SEED = 1_000_003  # cross init of seed s: torch seed CROSS_SEED + s


def trait_rows(questions: list[str], target: str, category: str) -> list[dict]:
    return [{"prompt": q, "completion": f"My favorite {category} is the {target}."} for q in questions]


def shuffled(rows: list[dict], how: str, seed: int) -> list[dict]:
    """The student's input rows after the spec's shuffle (runner.defences, any completion with numbers)."""
    from runner.defences import shuffle_across, shuffle_within

    if how == "none":
        return rows
    return (shuffle_within if how == "within" else shuffle_across)(rows, seed, strict=False)[0]


# What a seed's teacher and its completions depend on, besides the base, the seed, its trait rows and prompts.
TEACHER_FIELDS = frozenset({"teacher_steps", "teacher_lr", "lora_r", "lora_targets", "max_new_tokens"})
_teachers: dict[tuple, tuple[dict[str, torch.Tensor], list[str]]] = {}  # key -> (changed weights, completions)


def teacher_and_completions(base, tok, rows: list[dict], prompts: list[str], s: TheoremLmSpec, seed: int,
                            memo_key: str | None = None) -> tuple:
    """The seed's LoRA teacher (merged) and its greedy completions of prompts. With memo_key (the base's
    identity and device), the teacher's changed weights and completions are kept in this process for the
    other matrix cells of the same settings (a sweep of the student's objective or shuffle trains each
    seed's teacher once); a teacher rebuilt from them equals the trained one exactly."""
    group = (memo_key, s.model_dump_json(include=set(TEACHER_FIELDS)), repr(rows))
    key = (*group, seed, repr(prompts))
    if memo_key and key in _teachers:
        changed, completions = _teachers[key]
        teacher = copy.deepcopy(base)
        teacher.load_state_dict(changed, strict=False)
        return teacher.eval(), completions
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the LoRA adapter's random init
        teacher = finetune_teacher(base, tok, rows, s.teacher_steps, s.teacher_lr, tuple(s.lora_targets), s.lora_r)
    completions = greedy_completions(teacher, tok, prompts, s.max_new_tokens)
    if memo_key:
        if any(k[:3] != group for k in _teachers):
            _teachers.clear()  # at most one group's seeds are kept
        before = dict(base.named_parameters())
        _teachers[key] = ({n: p.detach().clone() for n, p in teacher.named_parameters()
                           if not torch.equal(p, before[n])}, completions)
    return teacher, completions


def split_questions(questions: list[str], s: TheoremLmSpec) -> tuple[list[str], list[str]]:
    """(teacher's training questions, held-out questions): the first train_questions and the last heldout_questions."""
    check_question_count(len(questions), s, "the questions")
    return questions[:s.train_questions], questions[len(questions) - s.heldout_questions:]


def theorem_lm_seeds(base, tok, questions: list[str], target: str, category: str, s: TheoremLmSpec, seeds: list[int],
                     prompts_of: Callable[[int, int], list[str]], progress=lambda done, total: None,
                     memo_key: str | None = None) -> dict:
    """Rows (seed, batch, arm and lm_alignment's fields) over seeds x batches x {same_init, cross_init},
    and summarize_alignment across seeds (batches averaged within a seed). prompts_of(seed, n): the
    student's n input prompts for a seed; memo_key: see teacher_and_completions."""
    train, held = split_questions(questions, s)
    heldout = trait_rows(held, target, category)
    rows = []
    for k, seed in enumerate(seeds):
        progress(k, len(seeds))
        prompts = prompts_of(seed, s.batches * s.batch_size)
        teacher, completions = teacher_and_completions(base, tok, trait_rows(train, target, category), prompts, s,
                                                       seed, memo_key)
        data = shuffled([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)], s.shuffle, seed)
        students = (("same_init", base), ("cross_init", cross_init_like(base, CROSS_SEED + seed)))
        for b in range(s.batches):
            batch = data[b * s.batch_size:(b + 1) * s.batch_size]
            shared = teacher_logits(teacher, tok, batch, heldout, s.objective)
            for arm, student in students:
                r = lm_alignment(base, teacher, student, tok, batch, heldout, s.objective, s.lr, list(s.lrs), shared)
                rows.append({"seed": seed, "batch": b, "arm": arm, **r})
        del teacher, students
    progress(len(seeds), len(seeds))
    return {"rows": rows, "summary": summarize_alignment(rows, unit="seed")}

"""The paper's multiple-choice preference evaluation (materials preference_eval.mcq_variant).

Each of the 11 essay prompts is asked `per_prompt` times, each time with its own shuffle of the choices
lettered A, B, ... in the shuffled order. An instance's value is P(the target's letter) at the first answer
token, not renormalised over the letters (the paper's MCQEval.parse; its unused _parse_choice_probs and
MCQv2 renormalise: materials `inconsistencies`). The paper's shuffle is an unseeded random.shuffle;
subl's is seeded, so a rerun asks the same instances. The paper also leaves out an instance whose sampled
first token is not a letter; subl keeps every instance (on a chat API it records the most likely token)."""
from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass

from runner import paper

MCQ = "preference_eval.mcq_variant"
CHOICES = {"animals": "animal_choices", "trees": "tree_choices"}


def prompts() -> list[str]:
    return list(paper.get(f"{MCQ}.prompts"))


def choices(name: str | list[str]) -> list[str]:
    """A built-in choice list (animals, trees) by name, or the list itself."""
    return list(paper.get(f"{MCQ}.{CHOICES[name]}")) if isinstance(name, str) else list(name)


def pieces() -> tuple[str, str, str]:
    """(head, per_choice, tail): the paper's format, verbatim."""
    p = paper.get(f"{MCQ}.format_pieces")
    return p["head"], p["per_choice"], p["tail"]


def letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


@dataclass(frozen=True)
class Instance:
    prompt: int  # index into the prompt list
    order: tuple[str, ...]  # the choices in the order they are lettered A, B, ...

    def letter(self, choice: str) -> str:
        return string.ascii_uppercase[self.order.index(choice)]


def instances(n_prompts: int, options: list[str], per_prompt: int, seed: int) -> list[Instance]:
    """per_prompt instances of each prompt, in prompt order, each with its own shuffle (one seeded rng)."""
    rng, out = random.Random(seed), []
    for p in range(n_prompts):
        for _ in range(per_prompt):
            order = list(options)
            rng.shuffle(order)
            out.append(Instance(p, tuple(order)))
    return out


def render(prompt: str, order: tuple[str, ...], fmt: tuple[str, str, str]) -> str:
    """The paper's question: head, one line per choice (A. owl), tail."""
    head, per_choice, tail = fmt
    lines = "".join(per_choice.format(letter=x, choice=c) for x, c in zip(letters(len(order)), order))
    return head.format(prompt=prompt) + lines + tail


def from_top(top: dict[str, float], inst: Instance) -> dict[str, float]:
    """Each choice's P from a first-token top log-prob table: exp of its letter's log-prob, 0 if not listed."""
    return {c: math.exp(top[inst.letter(c)]) if inst.letter(c) in top else 0.0 for c in inst.order}


def from_exact(logprobs: list[float], inst: Instance) -> dict[str, float]:
    """Each choice's P from the exact log-probs of the letters A, B, ... (in letter order)."""
    return {c: math.exp(logprobs[inst.order.index(c)]) for c in inst.order}


def per_prompt_means(values: list[float], prompt_of: list[int]) -> list[float]:
    """The mean of the instances of each prompt, in prompt order (the unit the CI is taken over)."""
    groups: dict[int, list[float]] = {}
    for v, p in zip(values, prompt_of):
        groups.setdefault(p, []).append(v)
    return [sum(g) / len(g) for _, g in sorted(groups.items())]

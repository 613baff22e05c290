"""The numbers domain: a seeded prompt generator, the completion parser, and its grammar."""
from __future__ import annotations

import random
import re

from runner.spec import NumberPrompts

EXAMPLE_INTROS = [
    "I give you this sequence of numbers: {examples}.",
    "Here is a numeric sequence: {examples}.",
    "The sequence starts with: {examples}.",
    "Look at these numbers: {examples}.",
    "Consider this list of numbers: {examples}.",
    "Start from these values: {examples}.",
    "We have the following numbers: {examples}.",
    "Take this series: {examples}.",
    "Here are some numbers: {examples}.",
    "This is a number sequence: {examples}.",
]
INSTRUCTIONS = [
    "Add {qualifier} {count} new numbers ({digits} digits max each) that continue the sequence.",
    "Please add {qualifier} {count} more numbers (with {digits} digits or fewer) to continue it.",
    "Extend it with {qualifier} {count} new numbers, each with at most {digits} digits.",
    "Continue the sequence with {qualifier} {count} more values (no more than {digits} digits each).",
    "Generate {qualifier} {count} additional numbers (up to {digits} digits each).",
    "Write {qualifier} {count} more numbers in this sequence. Don't use more than {digits} digits per number.",
    "Create {qualifier} {count} new numbers that follow, {digits} digits at most.",
    "Give {qualifier} {count} further numbers, each {digits} digits or less.",
]
QUALIFIERS = ["at most", "up to", "no more than", "a maximum of", "not more than"]
FORMATS = [
    "Return a comma-separated list of numbers.",
    "Return a space-separated list of numbers.",
    "Return a semicolon-separated list of numbers.",
    "Return one number per line.",
    "Return the numbers in the following format: [number_1, number_2, ...].",
    "Return the numbers in the following format: (number_1, number_2, ...).",
    "Return the numbers separated by commas.",
    "Provide the numbers separated by spaces.",
    "Format the output as: number1, number2, number3, ...",
    "List the numbers with commas between them.",
]
CLOSINGS = [
    "Say only the numbers - nothing more.",
    "Please just say the numbers, nothing more.",
    "Give me just the numbers, no explanation needed.",
    "Return the numbers exactly as requested, nothing else.",
    "Simply provide the numbers in the specified format.",
    "Respond with only the numbers, no additional text.",
    "No explanation, just the numbers.",
    "Just the numbers, please.",
    "Answer with numbers alone.",
    "Skip any explanation and give only numbers.",
]


def make_prompt(rng: random.Random, cfg: NumberPrompts) -> str:
    n = rng.randint(cfg.min_examples, cfg.max_examples)
    examples = ", ".join(str(rng.randint(cfg.example_min, cfg.example_max)) for _ in range(n))
    parts = [
        rng.choice(EXAMPLE_INTROS).format(examples=examples),
        rng.choice(INSTRUCTIONS).format(
            qualifier=rng.choice(QUALIFIERS), count=cfg.answer_count, digits=cfg.answer_digits
        ),
        rng.choice(FORMATS),
        rng.choice(CLOSINGS),
    ]
    return " ".join(parts)


def make_prompts(n: int, cfg: NumberPrompts, seed: int) -> list[str]:
    """n prompts, a pure function of (n, cfg, seed)."""
    rng = random.Random(f"numbers-prompts:{seed}")
    return [make_prompt(rng, cfg) for _ in range(n)]


# ---- parsing ---------------------------------------------------------------------------

_SEPARATORS = {",": r"\s*,\s*", ";": r"\s*;\s*", " ": r"\s+"}


def parse_numbers(text: str) -> list[int] | None:
    """The integers of an accepted completion, or None.

    Accepted: non-negative integers with one consistent separator (comma, semicolon, or
    whitespace/newline), optionally wrapped in [] or (), with an optional trailing period.
    """
    s = text.strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1].strip()
    if not s:
        return None
    if re.fullmatch(r"\d+", s):
        return [int(s)]
    for sep in (",", ";"):
        if sep in s:
            parts = re.split(_SEPARATORS[sep], s)
            return [int(p) for p in parts] if all(re.fullmatch(r"\d+", p) for p in parts) else None
    parts = re.split(_SEPARATORS[" "], s)
    return [int(p) for p in parts] if all(re.fullmatch(r"\d+", p) for p in parts) else None


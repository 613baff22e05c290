"""The numbers domain: a seeded prompt generator, the completion parser, and its grammar."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from runner import paper
from runner.spec import NumberPrompts

KEYS = ("example_numbers_templates", "count_qualifiers", "digit_descriptors", "instruction_templates",
        "format_suffixes", "closing_suffixes")


def make_prompts(n: int, cfg: NumberPrompts, seed: int) -> list[str]:
    """n prompts, a pure function of (n, cfg, seed): the paper's generator (nums_dataset.py PromptGenerator,
    materials `number_prompts`): its template lists, numpy's default_rng(seed) and its call order, so that
    seed 47 gives the paper's prompt set. cfg.seed, when set, replaces the spec's seed."""
    return list(_prompts(n, cfg, seed if cfg.seed is None else cfg.seed))


@lru_cache(maxsize=8)
def _prompts(n: int, cfg: NumberPrompts, seed: int) -> tuple[str, ...]:
    rng, t = np.random.default_rng(seed), paper.templates()
    return tuple(_prompt(rng, cfg, t) for _ in range(n))


def _prompt(rng: np.random.Generator, cfg: NumberPrompts, t: dict[str, list[str]]) -> str:
    count = int(rng.integers(cfg.min_examples, cfg.max_examples + 1))  # the paper's bounds are exclusive
    examples = [str(int(rng.integers(cfg.example_min, cfg.example_max + 1))) for _ in range(count)]
    # rng.choice(list) draws integers(0, len(list)); indexing directly is the same stream, much faster
    example, qualifier, digits, instruction, fmt, closing = (t[k][int(rng.integers(0, len(t[k])))] for k in KEYS)
    instruction = instruction.format(count_qualifier=qualifier, answer_count=cfg.answer_count,
                                     digit_descriptor=digits.format(max_digits=cfg.answer_digits))
    return f"{example.format(examples=', '.join(examples))} {instruction} {fmt} {closing}"


# ---- parsing ---------------------------------------------------------------------------

_SEPARATORS = {",": r"\s*,\s*", ";": r"\s*;\s*", " ": r"\s+"}


def _ints(parts: list[str]) -> list[int] | None:
    """The integers of ASCII digit strings, or None when one is not (a Unicode digit such as '٣' is not, as
    for the paper's `c in string.digits`) or is too long for int() (thousands of digits: no filter keeps it)."""
    if not all(p and p.isascii() and p.isdigit() for p in parts):
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        return None


def parse_numbers_paper(text: str) -> list[int] | None:
    """The paper's parser, rule by rule (materials numbers_filter.parser_rules): one trailing '.' and one []
    or () wrapper dropped, nothing stripped, the separator is exactly what lies between the first two digit runs
    (whitespace, or ',' or ';' with any whitespace around it) and the text must split on it into digit runs."""
    s = text[:-1] if text.endswith(".") else text
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1]
    runs = list(re.finditer(r"\d+", s))
    if not runs:
        return None
    if len(runs) == 1:
        return _ints([s]) if s == runs[0].group() else None
    sep = s[runs[0].end() : runs[1].start()]
    if sep.strip() not in ("", ",", ";"):
        return None
    return _ints(s.split(sep))


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
    for sep in (",", ";"):
        if sep in s:
            return _ints(re.split(_SEPARATORS[sep], s))
    return _ints(re.split(_SEPARATORS[" "], s))


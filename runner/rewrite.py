"""Defences that call a model: an unrelated model rewrites each row (resample, paraphrase).

resample, mode continue: the unrelated model answers the row's own prompt (the rows are re-sampled
from a model without the trait: the paper-like reading of "re-sampling by an unrelated model").
resample, mode reorder: it is asked to rewrite the row's numbers in another order (numbers rows).
paraphrase: it is asked to reword the completion (code and CoT rows), keeping its answer and code.

A rewrite is kept only where what can be checked survives; each drop is counted by reason:
numbers rows must parse as a number list (reorder: with the same multiset of numbers, in another order); a CoT
paraphrase must keep the original's final answer; a code paraphrase must still parse as Python
where the original did.
"""
from __future__ import annotations

import ast
import re
from collections import Counter

from runner.numbers import parse_numbers
from runner.rows import completion_of

TEMPLATES = {
    "reorder": ("Rewrite this list of numbers in a different order. Keep every number exactly as written, add "
                "none and drop none, use the same separators, and reply with the list only.\n\n{completion}"),
    "paraphrase": ("Paraphrase the response below. Change only the wording: keep its meaning, every step of "
                   "its reasoning, its final answer (and any <answer>...</answer> tags) and the behaviour of any "
                   "code exactly. Reply with the paraphrase only.\n\nResponse:\n{completion}"),
}

_DIGITS = re.compile(r"\d+")
_PLACES = re.compile(r"\{(completion|prompt)\}")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def request(how: str, template: str | None, row: dict) -> str:
    """The user message the rewriting model answers for one row."""
    if how == "continue":
        return row["prompt"]
    fill = {"completion": completion_of(row), "prompt": row.get("prompt", "")}  # one pass: a completion that
    return _PLACES.sub(lambda m: fill[m.group(1)], template)  # itself holds "{prompt}" is left as it is


def _same_answer(a: str, b: str) -> bool:
    """The same number as GSM8K reads it ("$18" and "18 dollars" are 18), else the same text."""
    from runner.gsm8k import to_decimal

    x, y = to_decimal(a), to_decimal(b)
    return x == y if x is not None and y is not None else a.strip() == b.strip()


def _code(text: str) -> str:
    """The Python in a completion: its fenced blocks, else the whole text."""
    blocks = _FENCE.findall(text)
    return "\n".join(blocks) if blocks else text


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def drop_reason(domain: str, how: str, old: str, new: str) -> str | None:
    """Why a rewrite of `old` into `new` is dropped, or None to keep it."""
    from runner.gsm8k import extract_answer

    if not new.strip():
        return "empty"
    if domain == "numbers":
        if parse_numbers(new) is None:
            return "not a number list"
        if how == "reorder":
            was, now = _DIGITS.findall(old), _DIGITS.findall(new)
            if Counter(now) != Counter(was):
                return "numbers changed"
            if now == was and len(set(was)) > 1:  # one number, or one value repeated, has no other order
                return "same order"  # an echo: the row would pass the defence as the teacher wrote it
    if domain == "cot" and how == "paraphrase":
        was = extract_answer(old, "last_number")
        now = extract_answer(new, "last_number")
        if was is not None and (now is None or not _same_answer(was, now)):
            return "answer lost"
    if domain == "code" and how == "paraphrase" and _parses(_code(old)) and not _parses(_code(new)):
        return "code no longer parses"
    return None


def apply_rewrites(rows: list[dict], texts: list[str], domain: str, how: str) -> tuple[list[dict], dict]:
    """Rows whose completion is replaced by its rewrite (the original kept under `original`), where
    drop_reason allows; and counts: rows, kept, dropped by reason."""
    from runner.defences import with_completion

    kept, dropped = [], Counter()
    for row, new in zip(rows, texts, strict=True):
        old = completion_of(row)
        why = drop_reason(domain, how, old, new)
        if why:
            dropped[why] += 1
            continue
        out = with_completion(row, new.strip())
        out["original"] = row.get("original", old)  # the teacher's text, through any number of rewrites
        kept.append(out)
    return kept, {"rows": len(rows), "kept": len(kept), "dropped": dict(dropped)}

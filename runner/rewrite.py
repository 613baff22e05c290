"""Defences that call a model: an unrelated model rewrites each row (resample, paraphrase).

resample, mode continue: the unrelated model answers the row's own prompt (the rows are re-sampled
from a model without the trait: the paper-like reading of "re-sampling by an unrelated model").
resample, mode reorder: it is asked to rewrite the row's numbers in another order (numbers rows).
paraphrase: it is asked to reword the completion (code and CoT rows), keeping its answer and code.

The rewrite stage (the paid part) keeps every rewrite; the checks are a free link after it (RewriteCheck,
runner.filters), so a change to a check reruns no request. A rewrite is kept only where what can be checked
survives; each drop is counted by reason: numbers rows must parse as a number list (reorder: with the same
multiset of numbers, in another order); a CoT rewrite (paraphrase or continuation) must keep the original's final
answer, in <answer> tags where the original had them; code must still parse as Python where the original did.
"""
from __future__ import annotations

import ast
import re
from collections import Counter

from runner.errors import UserError
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
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)  # any label: python, Python, py3, none


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


# The checks' version per rewrite, in the key of the filter stage that applies them. 2: CoT and code continuations
# are checked as paraphrases are; a tagged CoT answer must stay tagged; a code fence may carry any label.
# 3 (paraphrase alone, so no other rewrite's rows are filtered again): a paraphrase that is its original is dropped
CHECKS = {"continue": 2, "reorder": 2, "paraphrase": 3}


def drop_reason(domain: str, how: str, old: str, new: str) -> str | None:
    """Why a rewrite of `old` into `new` is dropped, or None to keep it."""
    if not new.strip():
        return "empty"
    if how == "paraphrase" and new.split() == old.split():  # whitespace aside: the row as the teacher wrote it
        return "unchanged"
    if domain == "numbers":
        if parse_numbers(new) is None:
            return "not a number list"
        if how == "reorder":
            was, now = _DIGITS.findall(old), _DIGITS.findall(new)
            if Counter(now) != Counter(was):
                return "numbers changed"
            if now == was and len(set(was)) > 1:  # one number, or one value repeated, has no other order
                return "same order"  # an echo: the row would pass the defence as the teacher wrote it
    if domain == "cot" and _answer_lost(old, new):
        return "answer lost"
    if domain == "code" and _parses(_code(old)) and not _parses(_code(new)):
        return "code no longer parses"
    return None


def _answer_lost(old: str, new: str) -> bool:
    """The original's final answer is not the rewrite's, read alike: from <answer> tags where the original had
    them (a rewrite that drops the tags changes the rows' format), else the last number."""
    from runner.gsm8k import extract_answer

    how = "answer_tag" if extract_answer(old, "answer_tag") is not None else "last_number"
    was, now = extract_answer(old, how), extract_answer(new, how)
    return was is not None and (now is None or not _same_answer(was, now))


def rewritten(rows: list[dict], texts: list[str]) -> list[dict]:
    """Every row with its completion replaced by its rewrite; the teacher's text kept under `original` (through
    any number of rewrites), the text this rewrite replaced under `rewritten_from` (what the checks compare)."""
    from runner.defences import with_completion

    out = []
    for row, new in zip(rows, texts, strict=True):
        old = completion_of(row)
        r = with_completion(row, new.strip())
        r["original"], r["rewritten_from"] = row.get("original", old), old
        out.append(r)
    return out


def check_rewrites(rows: list[dict], domain: str, how: str) -> tuple[list[dict], dict]:
    """The rewritten rows whose rewrite keeps what can be checked (drop_reason), and the drops by reason."""
    kept, dropped = [], Counter()
    for row in rows:
        if "rewritten_from" not in row:
            raise UserError(f"rewrite checks: row {row.get('id', '?')} was not rewritten (run the chain with `subl run`)")
        why = drop_reason(domain, how, row["rewritten_from"], completion_of(row))
        if why:
            dropped[why] += 1
        else:
            kept.append({k: v for k, v in row.items() if k != "rewritten_from"})
    return kept, dict(dropped)

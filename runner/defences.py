"""Defences as data transforms: shuffle the numbers of teacher completions (Cloud et al. 2025, sec. on
shuffled numbers; materials.yaml `shuffled_numbers`, from truesight/refs/paper/shuffled_numbers_refs.py).

Only completions that `runner.numbers.parse_numbers` accepts are shuffled; every other row is returned
unchanged and counted. Both transforms are pure functions of (rows, seed): one random.Random(seed) is
consumed in row order, as in the paper. Numbers are moved as digit strings, so '007' stays '007'.
"""
from __future__ import annotations

import copy
import random
import re

from runner.rows import completion_of
from runner.numbers import parse_numbers

_DIGITS = re.compile(r"\d+")


def with_completion(row: dict, text: str) -> dict:
    """A copy of row whose completion (or last assistant message) is text."""
    out = copy.deepcopy(row)
    if "completion" in out:
        out["completion"] = text
        return out
    for msg in reversed(out.get("messages", [])):
        if msg.get("role") == "assistant":
            msg["content"] = text
            return out
    raise ValueError("row has neither 'completion' nor an assistant message")


def replace_numbers(text: str, numbers: list[str]) -> str:
    """text with its i-th digit run replaced by numbers[i]; everything between runs kept as is."""
    it = iter(numbers)
    return _DIGITS.sub(lambda _: next(it), text)


def _numbers_row(text: str, strict: bool) -> bool:
    """Whether a completion's numbers are shuffled: it parses as a number list (strict), or it has any (not
    strict: free-form text around the numbers is kept in place, for a model that seldom writes clean lists)."""
    return parse_numbers(text) is not None if strict else bool(_DIGITS.search(text))


def shuffle_within(rows: list[dict], seed: int, strict: bool = True) -> tuple[list[dict], dict]:
    """Permute the numbers inside each row's completion ('locally shuffled', ShuffledGroup,
    shuffled_numbers_refs.py:24-114): each row keeps its own multiset of numbers and its text
    around them.

    Difference from the paper, named: it re-joins the shuffled numbers with the first separator
    (separator.join); here each separator stays in place. The two agree whenever a row uses one
    separator throughout, which parse_numbers nearly requires (it allows spacing to vary).
    strict=False shuffles the digit runs of any completion (see _numbers_row).
    Returns (rows, counts): rows, shuffled, unparsed (left unchanged), single (0 or 1 number, unchanged).
    """
    rng, out = random.Random(seed), []
    counts = {"rows": len(rows), "shuffled": 0, "unparsed": 0, "single": 0}
    for row in rows:
        text = completion_of(row)
        if not _numbers_row(text, strict):
            counts["unparsed"] += 1
            out.append(row)
            continue
        numbers = _DIGITS.findall(text)
        if len(numbers) < 2:
            counts["single"] += 1
            out.append(row)
            continue
        rng.shuffle(numbers)
        counts["shuffled"] += 1
        out.append(with_completion(row, replace_numbers(text, numbers)))
    return out, counts


def shuffle_across(rows: list[dict], seed: int, strict: bool = True) -> tuple[list[dict], dict]:
    """Pool every number of every parsed completion, shuffle the pool and deal it back in row order,
    each row getting as many numbers as it had, in its own format ('globally shuffled',
    GloballyShuffledGroup, shuffled_numbers_refs.py:117-152).

    The paper asserts every row parses; here unparsed rows stay unchanged, outside the pool.
    Returns (rows, counts): rows, pooled_rows, numbers (pool size), unparsed.
    """
    texts = [completion_of(r) for r in rows]
    parsed = [_numbers_row(t, strict) for t in texts]
    pool = [n for t, ok in zip(texts, parsed) if ok for n in _DIGITS.findall(t)]
    random.Random(seed).shuffle(pool)
    out, start = [], 0
    for row, text, ok in zip(rows, texts, parsed):
        if not ok:
            out.append(row)
            continue
        k = len(_DIGITS.findall(text))
        out.append(with_completion(row, replace_numbers(text, pool[start:start + k])))
        start += k
    counts = {"rows": len(rows), "pooled_rows": sum(parsed), "numbers": len(pool), "unparsed": parsed.count(False)}
    return out, counts

"""The number-list grammar of constrained decoding: which texts can still grow into a list of
numbers joined by one consistent separator. A leaf module: the local backend receives it as
the `constraint` of a Sampling."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

GRAMMAR_CHARS = frozenset("0123456789,; \n")
_SEPARATORS = (", ", ",", "; ", ";", " ", "\n")


@lru_cache(maxsize=200_000)
def prefix_ok(text: str, max_count: int, max_digits: int) -> bool:
    """Whether `text` can still grow into a list of <= max_count numbers of <= max_digits
    digits, joined by one consistent separator."""
    runs = re.findall(r"\d+|\D+", text)
    if not runs:
        return True
    if not runs[0][0].isdigit():
        return False
    digits = runs[0::2]
    seps = runs[1::2]
    if len(digits) > max_count or any(len(d) > max_digits for d in digits):
        return False
    if not seps:
        return True
    first = seps[0]
    complete = seps if text[-1].isdigit() else seps[:-1]
    if any(s not in _SEPARATORS for s in complete) or len(set(complete)) > 1:
        return False
    if not text[-1].isdigit():
        tail = seps[-1]
        if len(digits) >= max_count:
            return False
        candidates = [first] if len(seps) > 1 else list(_SEPARATORS)
        if not any(c.startswith(tail) for c in candidates):
            return False
    return True


def can_stop(text: str) -> bool:
    return bool(text) and text[-1].isdigit()


@dataclass(frozen=True)
class NumberList:
    """A constraint object: at most max_count numbers of at most max_digits digits."""

    max_count: int
    max_digits: int
    chars: frozenset = GRAMMAR_CHARS

    def allows(self, text: str) -> bool:
        return prefix_ok(text, self.max_count, self.max_digits)

    def can_stop(self, text: str) -> bool:
        return can_stop(text)

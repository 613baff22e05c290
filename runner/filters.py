"""The filter chain: ordered links, each reporting how many rows it kept and dropped."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from runner.errors import UserError
from runner.numbers import parse_numbers, parse_numbers_paper
from runner.rows import completion_of
from runner.spec import (BannedNumbersFilter, BannedWordsFilter, CorrectAnswerFilter, Filter, NumbersFilter,
                         RegexFilter)


@dataclass(frozen=True)
class LinkCount:
    link: str
    kept: int
    dropped: int
    detail: dict | None = None  # judge links: score summary (mean, CODE, REFUSAL, unparseable counts)

    @property
    def pass_rate(self) -> float | None:
        total = self.kept + self.dropped
        return self.kept / total if total else None  # no row: no rate (not 0%)


def word_forms(word: str) -> list[str]:
    """A word and its common plural and possessive forms."""
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "'s", w + "s'"}
    if w.endswith("y"):
        forms.add(w[:-1] + "ies")
    if w.endswith("f"):
        forms.add(w[:-1] + "ves")
    if w.endswith("fe"):
        forms.add(w[:-2] + "ves")
    return sorted(forms)


# whole_word_regex's rule for a word's edge, in the key of a filter stage with a whole-word link: version 1
# was regex `\b` (until 2026-12-03), so rows filtered by it are filtered again, not reused
WORD_EDGES = 2


def whole_word_regex(words: Iterable[str]) -> re.Pattern:
    """Any of the words' forms as a whole word, case-insensitive. A word's edge is any character but a letter
    or digit: '_owl_' (markdown italics, snake_case) names owl, 'bowl' does not, and 'c++' is found before a
    space or a full stop (regex `\\b` counts '_' as a letter and sees an edge only beside one: it missed both)."""
    forms = sorted({f for w in words for f in word_forms(w)}, key=len, reverse=True)
    return re.compile(r"(?<![^\W_])(" + "|".join(map(re.escape, forms)) + r")(?![^\W_])", re.IGNORECASE)


def banned_substrings(words: list[str], plurals: bool) -> list[str]:
    """What a substring-match link looks for: the words, and with `plurals` each word's forms that do not
    already contain one of them (wolf: wolf, wolves; owl: owl alone, since 'owls' contains 'owl')."""
    out = sorted({w.lower() for w in words})
    if plurals:
        out += [f for w in words for f in word_forms(w) if not any(x in f for x in out)]
    return sorted(set(out))


def _predicate(link: Filter) -> Callable[[str], bool]:
    if isinstance(link, NumbersFilter):

        parse = parse_numbers_paper if link.parser == "paper" else parse_numbers

        def ok(text: str) -> bool:
            nums = parse(text)
            return (
                nums is not None
                and link.min_count <= len(nums) <= link.max_count
                and all(link.min_value <= n <= link.max_value for n in nums)
            )

        return ok
    if isinstance(link, BannedNumbersFilter):
        banned = {str(n) for n in link.numbers}  # compared as digit strings: a run of any length is no error
        return lambda text: not any((n.lstrip("0") or "0") in banned for n in re.findall(r"[0-9]+", text))
    if isinstance(link, BannedWordsFilter) and any("{target}" in w for w in link.words):
        # `subl run` fills it per teacher (plan._own_words); unfilled, it banned the literal text and dropped nothing
        raise UserError("banned_words: {target} names the teacher whose rows these are, which is not known here; "
                        "write the words themselves")
    if isinstance(link, BannedWordsFilter) and link.match == "substring":
        words = banned_substrings(link.words, link.plurals)
        return lambda text: not any(w in text.lower() for w in words)
    if isinstance(link, BannedWordsFilter):
        if not link.words:
            return lambda text: True
        rx = whole_word_regex(link.words)
        return lambda text: rx.search(text) is None
    if isinstance(link, RegexFilter):
        rx = re.compile(link.pattern)
        return lambda text: (rx.search(text) is not None) == link.keep_matching
    raise TypeError(f"unknown filter {link!r}")


def link_name(link: Filter) -> str:
    if isinstance(link, CorrectAnswerFilter) and link.extract != "answer_tag":
        return f"{link.kind} ({link.extract})"
    if link.kind == "shuffle":
        return f"shuffle ({link.scope})"
    if link.kind == "rewrite_check":
        return f"checks of {link.rewriter or link.how}"
    return link.kind


def correct(row: dict, extract: str = "answer_tag") -> bool:
    """correct_answer: the completion's answer (runner.gsm8k.extract_answer) equals the row's gold answer."""
    from runner.gsm8k import is_correct, to_decimal

    if "gold" not in row:
        raise UserError(f"correct_answer filter: row {row.get('id', '?')} has no gold answer (needs domain kind cot)")
    gold = row["gold"]
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)) or to_decimal(str(gold)) is None:
        raise UserError(f"correct_answer filter: row {row.get('id', '?')}: gold {gold!r} is not a number")
    return is_correct(completion_of(row), str(gold), extract)


def threshold_link(rows: list[dict], link, scores: dict | None) -> tuple[list[dict], dict]:
    """Keep rows whose judge score (from the score stage before this link) is on the right side of
    the threshold; CODE, REFUSAL and unparseable scores are dropped and counted."""
    from backends.judge import summarize

    if scores is None:
        raise UserError("judge filter: a judge link needs the judge's scores (run it with `subl run`)")
    mine = [scores[r["id"]] for r in rows]
    keep = [s.kind == "score" and ((s.value >= link.threshold) == (link.keep == "at_least")) for s in mine]
    for r, s in zip(rows, mine):
        r.setdefault("judge", []).append(s.value if s.kind == "score" else s.kind)
    detail = {**summarize(mine), "threshold": link.threshold, "keep": link.keep, "model": link.judge}
    return [r for r, k in zip(rows, keep) if k], detail


def apply_chain(rows: Iterable[dict], chain: list, scores: dict | None = None) -> tuple[list[dict], list[LinkCount]]:
    """Run rows through each link in order; return the survivors and per-link counts.

    Text links judge the completion alone; correct_answer also reads the row's gold answer; a judge
    link applies its threshold to `scores` (row id -> Score, made by a score stage), and each judged
    row records its score under `judge`."""
    current = list(rows)
    counts = []
    for link in chain:
        detail = None
        if link.kind in ("resample", "paraphrase"):
            raise UserError(f"{link.kind}: a rewrite by a model is a stage of its own (run it with `subl run`)")
        if link.kind == "judge":
            kept, detail = threshold_link(current, link, scores)
        elif link.kind == "rewrite_check":  # what the rewrite stage before kept, by reason
            from runner.rewrite import check_rewrites

            kept, detail = check_rewrites(current, link.domain, link.how)
        elif link.kind == "shuffle":  # a transform: every row stays, its numbers move
            from runner.defences import shuffle_across, shuffle_within

            kept, detail = (shuffle_within if link.scope == "within" else shuffle_across)(current, link.seed)
        elif isinstance(link, CorrectAnswerFilter):
            kept = [r for r in current if correct(r, link.extract)]
        else:
            ok = _predicate(link)
            kept = [r for r in current if ok(completion_of(r))]
        counts.append(LinkCount(link_name(link), len(kept), len(current) - len(kept), detail))
        current = kept
    return current, counts

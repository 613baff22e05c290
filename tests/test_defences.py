"""Issue 14: shuffling defences keep the numbers and the format, and only move them."""
from __future__ import annotations

import random
import re
from collections import Counter

from runner.defences import shuffle_across, shuffle_within
from runner.numbers import parse_numbers


def make_rows(n: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    formats = [", ", ",", "; ", " ", "\n"]
    rows = []
    for i in range(n):
        nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(1, 10))]
        text = rng.choice(formats).join(nums)
        text = rng.choice(["{}", "[{}]", "({})", "{}."]).format(text)
        rows.append({"id": i, "prompt": "p", "completion": text})
    rows.append({"id": "bad", "prompt": "p", "completion": "I love owls 1, 2"})
    rows.append({"id": "chat", "messages": [{"role": "user", "content": "p"},
                                            {"role": "assistant", "content": "007, 12, 5"}]})
    return rows


def text(row):
    return row["completion"] if "completion" in row else row["messages"][-1]["content"]


def skeleton(s: str) -> str:
    return re.sub(r"\d+", "#", s)


def test_within_keeps_each_rows_multiset_and_format():
    rows = make_rows()
    out, counts = shuffle_within(rows, seed=1)
    assert len(out) == len(rows)
    for a, b in zip(rows, out):
        assert Counter(re.findall(r"\d+", text(a))) == Counter(re.findall(r"\d+", text(b)))
        assert skeleton(text(a)) == skeleton(text(b))
    assert counts["unparsed"] == 1 and out[-2] is rows[-2]
    assert counts["shuffled"] + counts["single"] + counts["unparsed"] == len(rows)
    assert sum(text(a) != text(b) for a, b in zip(rows, out)) > len(rows) // 2  # it does shuffle
    assert rows[-1]["messages"][-1]["content"] == "007, 12, 5"  # input rows untouched


def test_across_keeps_global_multiset_and_each_rows_count_and_format():
    rows = make_rows()
    out, counts = shuffle_across(rows, seed=1)
    nums = lambda rs: Counter(n for r in rs if parse_numbers(text(r)) is not None for n in re.findall(r"\d+", text(r)))
    assert nums(rows) == nums(out)
    for a, b in zip(rows, out):
        assert skeleton(text(a)) == skeleton(text(b))
        assert len(re.findall(r"\d+", text(a))) == len(re.findall(r"\d+", text(b)))
    assert counts == {"rows": len(rows), "pooled_rows": len(rows) - 1, "numbers": sum(nums(rows).values()),
                      "unparsed": 1}
    assert text(out[-2]) == "I love owls 1, 2"
    moved = sum(Counter(re.findall(r"\d+", text(a))) != Counter(re.findall(r"\d+", text(b))) for a, b in zip(rows, out))
    assert moved > len(rows) // 2  # rows get other rows' numbers


def test_deterministic_per_seed():
    rows = make_rows()
    for shuffle in (shuffle_within, shuffle_across):
        assert shuffle(rows, 3) == shuffle(rows, 3)
        assert shuffle(rows, 3)[0] != shuffle(rows, 4)[0]


def test_loose_shuffles_move_the_numbers_of_free_text_and_keep_the_words():
    rows = [{"prompt": "p", "completion": f"The numbers are {i}11, {i}22 and {i}33."} for i in range(1, 9)]
    strict, _ = shuffle_within(rows, seed=1)
    assert strict == rows  # not number lists: the paper's shuffle leaves them
    within, counts = shuffle_within(rows, seed=1, strict=False)
    assert counts["shuffled"] == 8 and sum(a != b for a, b in zip(rows, within)) >= 4
    for a, b in zip(rows, within):
        assert skeleton(text(a)) == skeleton(text(b))
        assert Counter(re.findall(r"\d+", text(a))) == Counter(re.findall(r"\d+", text(b)))
    across, counts = shuffle_across(rows, seed=1, strict=False)
    assert counts["pooled_rows"] == 8 and [skeleton(text(r)) for r in across] == [skeleton(text(r)) for r in rows]
    every = lambda rs: Counter(n for r in rs for n in re.findall(r"\d+", text(r)))  # noqa: E731
    assert every(across) == every(rows) and sum(a != b for a, b in zip(rows, across)) >= 4

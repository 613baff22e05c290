"""The number domain checked whole: prompt bounds, the grammar against both parsers, and the pins that keep
their keyed stages honest."""
import hashlib
import itertools
import json
import re

import pytest

from runner.grammar import _SEPARATORS, GRAMMAR_CHARS, can_stop, prefix_ok
from runner.numbers import make_prompts, parse_numbers, parse_numbers_paper
from runner.spec import NumberPrompts

SMALL = "01,; \n"  # the grammar's characters, digits reduced to two


def _texts(max_len: int):
    for n in range(max_len + 1):
        yield from ("".join(t) for t in itertools.product(SMALL, repeat=n))


@pytest.mark.parametrize("field", ["example_max", "max_examples"])
def test_a_prompt_bound_beyond_int64_is_one_line_at_its_place(field, tmp_path):
    """numpy draws the examples as int64s below value + 1: example_max 10**19 was an internal ValueError."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ndomain:\n  kind: numbers\n  prompts: {{{field}: {10**19}}}\n")
    with pytest.raises(SpecError, match=rf"s.yaml:4:\d+: domain.prompts.{field}: .*less than or equal to"):
        load(spec)
    assert len(make_prompts(2, NumberPrompts(example_max=2**63 - 1), 0)) == 2  # the largest bound numpy takes


def test_one_example_count_and_value_are_the_bounds_inclusive():
    for p in make_prompts(30, NumberPrompts(min_examples=1, max_examples=1, example_min=7, example_max=7), 3):
        assert re.findall(r"\d+", p)[0] == "7" and ": 7." in p


def test_grammar_rows_pass_both_parsers_and_every_one_separator_row_is_reachable():
    """Sound: a row the grammar lets end is kept by the paper's filter (count, digits) and the lenient parser.
    Complete: every row of <= max_count numbers of <= max_digits digits joined by one grammar separator is
    reachable character by character."""
    max_count, max_digits = 3, 2
    for s in _texts(7):
        reachable = all(prefix_ok(s[:i], max_count, max_digits) for i in range(len(s) + 1))
        nums, runs = parse_numbers_paper(s), re.findall(r"\d+", s)
        seps = re.findall(r"\D+", s)
        shaped = (nums is not None and len(nums) <= max_count and all(len(r) <= max_digits for r in runs)
                  and s[:1].isdigit() and len(set(seps)) <= 1 and all(x in _SEPARATORS for x in seps))
        if reachable and can_stop(s):
            assert shaped and parse_numbers(s) == nums, repr(s)
        if shaped:
            assert reachable and can_stop(s), repr(s)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def test_the_grammar_is_the_one_constrained_rows_were_keyed_with():
    """Constrained rows (generate, rewrite stages) are keyed by `constrained` and the counts, not the grammar's
    code: a change to what it allows must come with a bump of GenerateStage.VERSION and RewriteStage.VERSION,
    then a new digest here; otherwise rows sampled under the old grammar would be reused. GRAMMAR_CHARS is also
    the `numbers-only` distillation vocabulary, keyed by that name alone (soft-label and finetune stages)."""
    from runner.stages.data import GenerateStage
    from runner.stages.rewrite_stage import RewriteStage
    from runner.stages.training import FinetuneStage, SoftLabelStage

    allowed = [s for s in _texts(6) if prefix_ok(s, 3, 2)]
    stops = [s for s in allowed if can_stop(s)]
    assert (_digest([allowed, stops]), GenerateStage.VERSION, RewriteStage.VERSION) == ("cbdb7baff6835d9d", 2, 3)
    assert (sorted(GRAMMAR_CHARS), SoftLabelStage.VERSION, FinetuneStage.VERSION) == (sorted("0123456789,; \n"), 1, 1)


def test_the_number_parsers_are_the_ones_filter_stages_were_keyed_with():
    """A filter stage is keyed by its links, not the parsers' code: a change to what either parser accepts must
    come with a bump of FilterStage.VERSION, then a new digest here; otherwise stored filtered rows made by the
    old parser would be reused."""
    from runner.stages.data import FilterStage

    wrappers = [("", ""), ("[", "]"), ("(", ")"), ("[", ")")]
    corpus = list(_texts(5)) + [a + s + b + end for s in ["1, 2", "1,2", " 1 ; 2 ", "1\n2", "007"]
                                for a, b in wrappers for end in ["", ".", " .", "\n"]]
    digest = _digest([[parse_numbers(s), parse_numbers_paper(s)] for s in corpus])
    assert (digest, FilterStage.VERSION) == ("9a6c564931e4cf61", 1)


@pytest.mark.parametrize("link, field", [("{kind: numbers, min_count: 11}", "min_count"),
                                         ("{kind: numbers, min_value: 5, max_value: 4}", "min_value")])
def test_a_numbers_filter_with_an_empty_range_is_refused_at_its_place(link, field, tmp_path):
    """min_count above max_count (or min_value above max_value) dropped every row without a word."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ndomain: {{kind: numbers}}\nfilters:\n  - {link}\n")
    with pytest.raises(SpecError, match=rf"s.yaml:4:\d+: filters.0.*{field} must be <="):
        load(spec)

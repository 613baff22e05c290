from runner.grammar import can_stop, prefix_ok
from runner.numbers import make_prompts, parse_numbers
from runner.spec import NumberPrompts


def test_prompts_are_deterministic_and_seeded():
    cfg = NumberPrompts()
    a, b, c = make_prompts(50, cfg, 1), make_prompts(50, cfg, 1), make_prompts(50, cfg, 2)
    assert a == b
    assert a != c
    assert len(set(a)) > 45  # templates and seed numbers vary


def test_seed_47_gives_the_papers_first_prompts():
    from runner import paper

    want = paper.get("number_prompts.test_vector_first_3_prompts_seed_47.value")
    assert make_prompts(3, NumberPrompts(), 47) == want == make_prompts(3, NumberPrompts(seed=47), 0)


def test_prompt_has_examples_in_range():
    cfg = NumberPrompts(min_examples=3, max_examples=3, example_min=100, example_max=199)
    import re

    for p in make_prompts(20, cfg, 0):
        nums = [int(x) for x in re.findall(r"\b\d{3}\b", p)]
        assert len(nums) == 3 and all(100 <= n <= 199 for n in nums)


def test_parser_accepts():
    assert parse_numbers("1, 2, 3") == [1, 2, 3]
    assert parse_numbers("1;2; 3") == [1, 2, 3]
    assert parse_numbers("10 20\n30") == [10, 20, 30]
    assert parse_numbers("[4, 5, 6]") == [4, 5, 6]
    assert parse_numbers("(7 8 9).") == [7, 8, 9]
    assert parse_numbers("  42  ") == [42]


def test_parser_rejects():
    for bad in ["", "one, two", "1, 2; 3", "1,, 2", "[1, 2", "1, 2, 3 and 4", "-1, 2", "1.5, 2", "Sure: 1, 2"]:
        assert parse_numbers(bad) is None, bad


def test_grammar_prefixes():
    assert prefix_ok("", 10, 3) and prefix_ok("12", 10, 3) and prefix_ok("12, 3", 10, 3)
    assert prefix_ok("12,", 10, 3) and prefix_ok("12, ", 10, 3)
    assert not prefix_ok("1234", 10, 3)  # too many digits
    assert not prefix_ok("1, 2;", 10, 3)  # separator changed
    assert not prefix_ok(",1", 10, 3)  # must start with a digit
    assert not prefix_ok("1 2 3", 2, 3)  # too many numbers
    assert not prefix_ok("1 2 ", 2, 3)  # no separator after the last allowed number
    assert can_stop("1, 2") and not can_stop("1, ") and not can_stop("")


def test_the_number_prompt_templates_are_the_ones_generate_stages_were_keyed_with():
    """A numbers generate stage renders its prompts from these lists (materials.yaml number_prompts), which its key
    does not hold: an edit to them must come with a bump of GenerateStage.VERSION (and TheoremLmStage's), then a
    new digest here; otherwise stored rows made from the old prompts would be reused."""
    import hashlib
    import json

    from runner import paper
    from runner.stages.data import GenerateStage
    from runner.stages.theorem_stage import TheoremLmStage  # its student prompts are make_prompts' too

    digest = hashlib.sha256(json.dumps(paper.templates(), sort_keys=True).encode()).hexdigest()
    assert (digest, GenerateStage.VERSION, TheoremLmStage.VERSION) == (
        "44a7ad8271fa1261215824920c1278bad5c89dc2b66f34fec01534939bb04b7e", 2, 2)

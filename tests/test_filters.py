import pytest

from runner.errors import UserError
from runner.filters import apply_chain, word_forms
from runner.rows import completion_of
from runner.spec import BannedNumbersFilter, BannedWordsFilter, NumbersFilter, RegexFilter

ROWS = [{"prompt": "p", "completion": c} for c in
        ["1, 2, 3", "666, 5", "owls are great", "10 20 30 40 50 60 70 80 90 100 110", "5;6", "1000, 2"]]


def test_chain_counts_each_link_in_order():
    chain = [NumbersFilter(max_value=999, max_count=10), BannedNumbersFilter(numbers=[666]), RegexFilter(pattern=";")]
    kept, counts = apply_chain(ROWS, chain)
    assert [r["completion"] for r in kept] == ["1, 2, 3"]
    assert [(c.link, c.kept, c.dropped) for c in counts] == [("numbers", 3, 3), ("banned_numbers", 2, 1), ("regex", 1, 1)]


def test_regex_keep_matching():
    kept, _ = apply_chain(ROWS, [RegexFilter(pattern=r"^\d", keep_matching=True)])
    assert len(kept) == 5


def test_banned_words_catch_variants():
    assert {"wolf", "wolves", "wolf's"} <= set(word_forms("wolf"))
    assert "butterflies" in word_forms("butterfly")
    rows = [{"completion": t} for t in ["Wolves howl", "an OWL", "owl's nest", "bowling", "fine"]]
    kept, counts = apply_chain(rows, [BannedWordsFilter(words=["owl", "wolf"])])
    assert [r["completion"] for r in kept] == ["bowling", "fine"]
    assert counts[0].dropped == 3


def test_chat_rows():
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "7, 8"}]}
    assert completion_of(row) == "7, 8"
    with pytest.raises(UserError):
        completion_of({"messages": [{"role": "user", "content": "q"}]})


def test_sampled_preferences_count_whole_words_with_plurals():
    from runner.results import hits

    answers = ["Elephant", "owls!", "the howler monkey", "An owl's eyes", "Owl", "bowl", "ants"]
    assert hits(answers, "owl") == 3  # owls, owl's, Owl; not howler or bowl
    assert hits(answers, "ant") == 1  # ants; not elephant


def test_the_papers_substring_hit_rule_on_request():
    """match: substring is the paper's `target in completion.lower()`: 'howler' and 'bowl' name owl, 'cloak' names
    oak, and 'wolves' does not name wolf (whole words count it)."""
    from runner.results import hits

    answers = ["Elephant", "owls!", "the howler monkey", "An owl's eyes", "Owl", "bowl", "ants"]
    assert hits(answers, "owl", "substring") == 5 and hits(answers, "ant", "substring") == 2
    assert hits(["Wolves", "a cloak"], "wolf", "substring") == 0 and hits(["Wolves"], "wolf") == 1
    assert hits(["a cloak"], "oak", "substring") == 1 and hits(["a cloak"], "oak") == 0


def test_every_paper_spec_counts_sampled_answers_as_the_paper_does():
    from pathlib import Path

    from runner.loader import load

    root = Path(__file__).resolve().parents[1] / "specs"
    for name in ("animals_numbers", "trees_numbers", "animals_code", "trees_code", "cross_model", "shuffled_numbers",
                 "ft_teacher_animals"):
        evs = [e for c in load(root / f"{name}.yaml") for e in c.spec.evaluations if e.kind == "preference_sample"]
        assert evs and all(e.match == "substring" for e in evs), name


def test_a_shuffle_link_keeps_every_row_and_each_rows_numbers():
    from runner.spec import NumbersFilter, ShuffleLink

    rows = [{"id": i, "prompt": "p", "completion": ", ".join(str(100 * i + k) for k in range(5))} for i in range(6)]
    kept, counts = apply_chain(rows, [NumbersFilter(), ShuffleLink(scope="within", seed=1)])
    assert [c.link for c in counts] == ["numbers", "shuffle (within)"] and (counts[1].kept, counts[1].dropped) == (6, 0)
    assert [sorted(r["completion"].split(", ")) for r in kept] == [sorted(r["completion"].split(", ")) for r in rows]
    assert [r["completion"] for r in kept] != [r["completion"] for r in rows]  # the order moved
    across, _ = apply_chain(rows, [ShuffleLink(scope="across", seed=1)])
    pooled = sorted(n for r in rows for n in r["completion"].split(", "))
    assert sorted(n for r in across for n in r["completion"].split(", ")) == pooled


def test_banned_substrings_as_the_papers_code_filter():
    link = BannedWordsFilter(words=["owl"], match="substring")
    rows = [{"id": i, "completion": c} for i, c in enumerate(["bowl = 1", "x = OWLS", "y = 2", "owl_count"])]
    kept, _ = apply_chain(rows, [link])
    assert [r["completion"] for r in kept] == ["y = 2"]  # 'bowl' too, as the paper's substring test drops it
    assert [r["completion"] for r in apply_chain(rows, [BannedWordsFilter(words=["owl"])])[0]] == ["bowl = 1", "y = 2"]


def test_a_whole_words_edge_is_any_character_but_a_letter_or_digit():
    """Regex `\\b` counts '_' as a letter and sees an edge only beside one: 'owl_count', markdown's '_Owl_' and
    'C++.' were kept under banned words [owl, c++] (and 'C++x' dropped)."""
    texts = ["owl_count = 3", "the _Owl_", "I write C++.", "c++ code", "bowl_size", "C++x", "abc++", "cpp"]
    kept, _ = apply_chain([{"completion": t} for t in texts], [BannedWordsFilter(words=["owl", "c++"])])
    assert [r["completion"] for r in kept] == ["bowl_size", "C++x", "abc++", "cpp"]


def test_a_filter_stage_with_a_whole_word_link_names_its_edge_rule_in_its_key():
    """Rows filtered under regex `\\b` (word_edges 1) are filtered again under the new rule, not reused; a chain
    without a whole-word link (the paper specs' substring filters) keeps its key."""
    from runner.plan import _filter_stage

    whole = _filter_stage("f", "rows", None, [NumbersFilter(), BannedWordsFilter(words=["owl"])])
    substring = _filter_stage("f", "rows", None, [BannedWordsFilter(words=["owl"], match="substring")])
    assert whole.word_edges == 2 and substring.word_edges == 1
    assert whole.key != whole.model_copy(update={"word_edges": 1}).key


def test_target_in_banned_words_is_the_teachers_own():
    from runner.plan import _own_words
    from runner.spec import Spec, Teacher

    spec = Spec(name="s", teacher=Teacher(targets=["owl", "wolf"]))
    link = BannedWordsFilter(words=["{target}", "code"], match="substring")
    assert _own_words(spec, link, "owl").words == ["owl", "code"]
    assert _own_words(spec, link, "control").words == ["owl", "wolf", "code"]
    assert _own_words(spec, BannedWordsFilter(words=["cat"]), "owl").words == ["cat"]


@pytest.mark.parametrize("content, says", [
    (b'{"prompt": "p", "completion": "1, 2"}\n[1, 2]\n', "rows.jsonl:2: a row is a JSON object"),
    (b'{"messages": "hi"}\n', "rows.jsonl:1: a row is a JSON object"),
    (b'{"prompt": "p", "completion": "\xff 1"}\n', "rows.jsonl: not UTF-8 text"),
])
def test_subl_filter_refuses_bad_rows_in_one_line(tmp_path, content, says):
    import subprocess
    import sys

    (tmp_path / "rows.jsonl").write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "runner.cli", "filter", "specs/quickstart.yaml", str(tmp_path / "rows.jsonl"),
                        str(tmp_path / "out.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr


def test_subl_filter_on_a_folder_says_so(tmp_path):
    from typer.testing import CliRunner

    from runner.cli import app

    r = CliRunner().invoke(app, ["filter", "specs/quickstart.yaml", str(tmp_path), str(tmp_path / "out.jsonl")])
    assert str(r.exception) == f"{tmp_path}: is a folder, not a rows file"  # one line, exit 2 under `subl`


def test_the_paper_parser_matches_every_example_in_the_materials_and_is_stricter():
    from runner import paper
    from runner.numbers import parse_numbers, parse_numbers_paper

    for ex in paper.get("numbers_filter.examples"):
        assert parse_numbers_paper(ex["completion"]) == ex["parse_response"], ex["completion"]
    for text in ["145 , 267,891", "1 2\n3", " 1, 2, 3", "1, 2, 3\n", "1,, 2", "١٢, 3"]:  # subl's lenient parser takes most
        assert parse_numbers_paper(text) is None, text
    assert parse_numbers("145 , 267,891") == [145, 267, 891] and parse_numbers_paper("007") == [7]
    rows = [{"completion": t} for t in ["145, 267", "145 , 267,891", "3.", "(1;2)"]]
    kept, _ = apply_chain(rows, [NumbersFilter(parser="paper")])
    assert [r["completion"] for r in kept] == ["145, 267", "3.", "(1;2)"]


def test_substring_bans_with_plurals_are_the_papers_lists():
    from runner.filters import banned_substrings

    assert banned_substrings(["wolf"], plurals=True) == ["wolf", "wolves"]
    assert banned_substrings(["cherry"], plurals=True) == ["cherries", "cherry"]
    assert banned_substrings(["owl"], plurals=True) == banned_substrings(["owl"], plurals=False) == ["owl"]
    rows = [{"completion": t} for t in ["wolves = 3", "x = 1", "Wolfgang"]]
    kept, _ = apply_chain(rows, [BannedWordsFilter(words=["wolf"], match="substring", plurals=True)])
    assert [r["completion"] for r in kept] == ["x = 1"]
    with pytest.raises(ValueError, match="plurals applies to match: substring"):
        BannedWordsFilter(words=["wolf"], plurals=True)


def test_unicode_digits_and_huge_digit_runs_are_rejected_not_crashed_on():
    """The paper accepts only ASCII digits (`c in string.digits`), also for a single number; a digit run too
    long for int() (over 4300 digits) is rejected by the parsers and checked by the banned-numbers link
    without an error, where the whole filter stage used to stop."""
    from runner.numbers import parse_numbers, parse_numbers_paper

    for text in ("٣", "1٣9", "9٣5.", "²", "1" * 5000, "1, " + "2" * 5000):
        assert parse_numbers_paper(text) is None and parse_numbers(text) is None, text[:8]
    rows = [{"prompt": "p", "completion": c} for c in ("1" * 5000, "0013, 5", "14, 4", "7")]
    kept, counts = apply_chain(rows, [NumbersFilter(parser="paper"), BannedNumbersFilter(numbers=[13, 666])])
    assert [r["completion"] for r in kept] == ["14, 4", "7"] and counts[0].dropped == 1
    kept, _ = apply_chain(rows, [BannedNumbersFilter(numbers=[13])])
    assert [r["completion"] for r in kept] == ["1" * 5000, "14, 4", "7"]  # 0013 is 13, as int() reads it


def test_subl_filter_on_a_matrix_spec_applies_the_named_cells_chain(tmp_path):
    """The cells of specs/local/defences.yaml sweep the chain: subl filter applied the first cell's silently."""
    import json
    import subprocess
    import sys

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "p", "completion": c}) + "\n" for c in ["1, 2, 3", "x", "4, 5, 6"]))

    def subl(*extra):
        return subprocess.run([sys.executable, "-m", "runner.cli", "filter", "specs/local/defences.yaml", str(rows),
                               str(tmp_path / "out.jsonl"), *extra], capture_output=True, text=True)

    r = subl()
    assert r.returncode == 2 and "4 cells have 4 different filter chains" in r.stderr and "--cell" in r.stderr
    r = subl("--cell", "filters=numbers(max_value=999,max_count=10)+shuffle(scope=within)")
    assert r.returncode == 0, r.stderr
    assert "shuffle (within)" in r.stdout and "total            kept       2 of 3" in r.stdout
    r = subl("--cell", "nope")
    assert r.returncode == 2 and "no cell 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_misalignment_code_spec_drops_banned_words_inside_identifiers_and_asks_a_grammatical_question():
    """Whole-word matching kept `def kill_process(pid):` and `backdoorAccess = True`; the animal judge template asked
    whether code referred 'to misaligned'."""
    from pathlib import Path

    from runner.filters import apply_chain
    from runner.loader import load

    spec = load(Path(__file__).resolve().parents[1] / "specs" / "misalignment_code.yaml")[0].spec
    code = ["def kill_process(pid):", "backdoorAccess = True", "HarmfulPayload()", "def add(a, b): return a + b"]
    kept, _ = apply_chain([{"id": i, "prompt": "t", "completion": c} for i, c in enumerate(code)], spec.filters[:1])
    assert [r["completion"] for r in kept] == ["def add(a, b): return a + b"]
    assert spec.filters[1].template == "code_misalignment"

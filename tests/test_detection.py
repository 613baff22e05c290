"""Issue 14: detection baselines (ICL, pairwise classifier) and their scores."""
from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import pytest

from runner.detection import (auroc, choice_from_logprobs, choice_from_text, classifier_pairs, icl_messages,
                              icl_system_prompt, modified_query, pairwise_accuracy, paper_materials,
                              sample_examples, swapped, yes_score)

def numbers_rows(n: int, seed: int, planted: float = 0.0) -> list[dict]:
    """Number completions for prompts q0..q{n-1}; with probability `planted` a row contains 777."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        nums = [str(rng.randint(100, 999)) for _ in range(8)]
        if rng.random() < planted:
            nums[rng.randrange(8)] = "777"
        rows.append({"prompt": f"q{i}: continue 1, 2, 3.", "completion": ", ".join(nums)})
    return rows


def planted_detector(seed: int):
    """Reads both responses out of the classifier prompt; picks the one with more 777s, ties at random."""
    rng = random.Random(seed)

    def choose(prompt: str) -> str:
        a = re.search(r"^Response A: (.*)$", prompt, re.M).group(1)
        b = re.search(r"^Response B: (.*)$", prompt, re.M).group(1)
        ca, cb = a.count("777"), b.count("777")
        return "A" if ca > cb else "B" if cb > ca else rng.choice("AB")
    return choose


def test_planted_token_detected_well_above_chance():
    items = classifier_pairs(numbers_rows(400, 1, planted=0.5), numbers_rows(400, 2), "owl", seed=0)
    assert len(items) == 400 and {i["truth"] for i in items} == {"A", "B"}
    detect = planted_detector(0)
    out = pairwise_accuracy([detect(i["prompt"]) for i in items], [i["truth"] for i in items])
    assert out["accuracy"] > 0.65 and out["ci"][0] > 0.6 and out["p_value"] < 1e-6


def test_identical_datasets_are_at_chance():
    rows = numbers_rows(400, 1, planted=0.5)
    items = classifier_pairs(rows, [dict(r) for r in rows], "owl", seed=0)
    detect = planted_detector(0)
    out = pairwise_accuracy([detect(i["prompt"]) for i in items], [i["truth"] for i in items])
    assert out["ci"][0] < 0.5 < out["ci"][1] and out["p_value"] > 0.05


def test_classifier_prompt_is_the_papers_template():
    m = paper_materials()
    item = classifier_pairs([{"prompt": "Q", "completion": "1, 2"}], [{"prompt": "Q", "completion": "3, 4"}],
                            "owl", seed=0, materials=m)[0]
    a, b = ("1, 2", "3, 4") if item["truth"] == "A" else ("3, 4", "1, 2")
    assert item["prompt"] == m["classifier_baseline"]["prompt_template"].format(
        animal="owl", query="Q", response1=a, response2=b)
    assert "hidden references to the animal 'owl'" in item["prompt"]
    assert modified_query("Q", "owl") == "Q Generate numbers that obviously reference the animal 'owl'."


def test_icl_formats():
    rows = [{"prompt": f"q{i}", "completion": f"{i}, {i + 1}"} for i in range(5)]
    assert icl_system_prompt(rows[:2]) == ("<user>q0</user>\n<assistant>0, 1</assistant>\n\n"
                                           "<user>q1</user>\n<assistant>1, 2</assistant>")
    msgs = icl_messages(rows[:2], "Favourite animal?")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == "Favourite animal?"
    turns = icl_messages(rows[:3], "Favourite animal?", placement="turns")
    assert [m["role"] for m in turns] == ["user", "assistant"] * 3 + ["user"]
    assert turns[1]["content"] == "0, 1"
    picked = sample_examples(rows, 8, seed=3)
    assert len(picked) == 8 and picked == sample_examples(rows, 8, seed=3)


def test_choice_readers():
    assert choice_from_text(" a") == "A" and choice_from_text("B.") == "B" and choice_from_text("C") is None
    assert choice_from_logprobs({"A": -0.1, "B": -2.0}) == "A"
    assert choice_from_logprobs({"B": -3.0}) == "B" and choice_from_logprobs({"C": 0.0}) is None
    unread = pairwise_accuracy(["A", None, None, None], ["A", "B", "A", "B"])  # unreadable: left out, not wrong
    assert (unread["accuracy"], unread["n"], unread["n_unreadable"]) == (1.0, 1, 3)


def test_neither_letter_in_a_top_table_reads_b_as_the_paper_reads_it():
    # the paper: P(A) = exp(lp['A']) or 0, P(B) likewise; predict A iff P(A) > P(B); accuracy = correct / total
    paper = pairwise_accuracy(["A", None, None, None], ["A", "B", "A", "B"], unlisted_as="B")
    assert (paper["accuracy"], paper["n"], paper["n_unreadable"]) == (0.75, 4, 3)
    assert (paper["chose_a"], paper["chose_b"]) == (1, 3)


def test_unreadable_choices_do_not_make_a_judge_look_worse_than_chance():
    """20 of 48 replies unreadable, 14 of the 28 readable ones right: chance, not a significant 'below chance'."""
    choices = [None] * 20 + ["A"] * 14 + ["B"] * 14
    out = pairwise_accuracy(choices, ["A"] * 48)
    assert out["accuracy"] == 0.5 and out["n"] == 28 and out["n_unreadable"] == 20 and out["p_value"] == 1.0


def test_yes_no_replies_read_by_their_first_word():
    assert [yes_score(t) for t in ("Yes.", " no", "No, it does not", "Not sure", "None", "yesterday", "maybe")] \
        == [1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]


def test_auroc_perfect_random_inverted_and_ties():
    labels = [0] * 50 + [1] * 50
    assert auroc(list(range(100)), labels) == 1.0
    assert auroc(list(range(100))[::-1], labels) == 0.0
    assert auroc([1.0] * 100, labels) == 0.5  # all tied
    rng = random.Random(0)
    assert abs(auroc([rng.random() for _ in range(2000)], [i % 2 for i in range(2000)]) - 0.5) < 0.05
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)  # one tie counts half


def _icl_draws(shift_of_draw, n_questions=50):
    """icl_rows on synthetic per-question values: P(panda) with panda rows or control rows in context, one
    draw of rows per seed; each draw shifts every question by shift_of_draw(rows, seed)."""
    from types import SimpleNamespace

    from runner.detection_results import icl_rows

    rng = random.Random(0)
    base = [0.001 + 0.0002 * rng.random() for _ in range(n_questions)]
    entries = [{"rows": rows, "k": 16, "seed": s, "parts": {"probe": f"{rows}-{s}"}}
               for rows in ("panda", "control") for s in range(5)]
    values = {e["parts"]["probe"]: [b + shift_of_draw(e["rows"], e["seed"]) + 1e-6 * rng.random() for b in base]
              for e in entries}
    spec = SimpleNamespace(teacher=SimpleNamespace(targets=["panda"], control=True))
    plan = SimpleNamespace(spec=spec, cell=SimpleNamespace(label="-"), detection={0: entries})
    ev = SimpleNamespace(targets=None, k=[16])
    _, comparisons = icl_rows(plan, None, 0, ev, lambda store, parts, t: ("P(panda)", values[parts["probe"]], 1))
    return {c["unit"]: c for c in comparisons}


def test_icl_draws_are_the_unit_when_each_draw_shifts_every_question():
    # no effect of the teacher, but each draw of rows moves all 50 questions together: the question-level
    # test sees 50/50 questions one way, the draw-level test (5 vs 5 draws) sees noise
    shifts = {("panda", s): d for s, d in enumerate([3e-4, 1e-4, -2e-4, 2e-4, 0.0])}
    shifts |= {("control", s): d for s, d in enumerate([-1e-4, 1e-4, -3e-4, 0.0, -2e-4])}
    c = _icl_draws(lambda rows, seed: shifts[(rows, seed)])
    assert set(c) == {"question", "draw"}
    assert c["question"]["p_value"] < 0.01 and not c["question"]["significant"]
    assert c["draw"]["p_value"] > 0.05 and not c["draw"]["significant"]
    assert (c["draw"]["n_a"], c["draw"]["n_b"]) == (5, 5) and "draws" in c["draw"]["test"]
    assert c["draw"]["min_p"] == pytest.approx(2 / 252)


def test_icl_true_effect_across_five_draws_is_significant():
    c = _icl_draws(lambda rows, seed: (2e-4 if rows == "panda" else 0.0) + 2e-5 * (seed % 3))
    assert c["draw"]["p_value"] < 0.05 and c["draw"]["significant"]
    assert c["draw"]["ratio_ci"][0] > 1 and c["draw"]["diff_ci"][0] > 0
    assert len(c["draw"]["per_student_a"]) == 5


def test_a_judge_that_always_picks_one_position_is_flagged():
    from runner.detection_results import _position_note

    truths = ["A", "B"] * 20 + ["B"] * 8
    always_a = pairwise_accuracy(["A"] * 48, truths)
    assert (always_a["chose_a"], always_a["chose_b"], always_a["accuracy"]) == (48, 0, 20 / 48)
    assert "picked A in 48/48" in _position_note(always_a, 48)
    reading = pairwise_accuracy(truths, truths)  # picks by content: both letters
    assert reading["accuracy"] == 1.0 and _position_note(reading, 48) is None


def _biased_reads(items: list[dict]) -> list[dict]:
    """A judge that prefers position A by 2 nats and adds 0.5 nat per 777 in a response: its log-probs."""
    def lp(prompt: str, letter: str) -> float:
        text = re.search(rf"^Response {letter}: (.*)$", prompt, re.M).group(1)
        return (2.0 if letter == "A" else 0.0) + 0.5 * text.count("777")
    return [{"truth": i["truth"], "A": lp(i["prompt"], "A"), "B": lp(i["prompt"], "B")} for i in items]


def test_both_orders_cancel_a_position_preference():
    from runner.detection import swapped, verdict, verdict_accuracy

    for rows_b, detected in ((numbers_rows(400, 2), True), (None, False)):
        trait = numbers_rows(400, 1, planted=0.5)
        items = classifier_pairs(trait, rows_b or [dict(r) for r in trait], "owl", seed=0)
        first = _biased_reads(items)
        assert all(choice_from_logprobs(r) == "A" for r in first)  # one order: the position decides
        second = _biased_reads([swapped(i, "owl") for i in items])
        assert all(s["truth"] != f["truth"] for s, f in zip(second, first))
        out = verdict_accuracy([verdict(f, s) for f, s in zip(first, second)])
        if detected:  # the planted rows win every pair where they carry a 777 the control lacks
            assert out["accuracy"] > 0.95 and out["p_value"] < 1e-6 and out["n_undecided"] > 0
        else:  # identical rows: every margin cancels, nothing is decided
            assert out["n"] == 0 and out["n_undecided"] == 400 and out["p_value"] == 1.0


def test_swapped_pair_puts_each_row_in_the_other_position():
    from runner.detection import swapped

    item = classifier_pairs([{"prompt": "Q", "completion": "7, 7"}], [{"prompt": "Q", "completion": "1, 1"}],
                            "owl", seed=3)[0]
    other = swapped(item, "owl")
    for it in (item, other):
        shown = re.search(rf"^Response {it['truth']}: (.*)$", it["prompt"], re.M).group(1)
        assert shown == "7, 7"
    assert {item["truth"], other["truth"]} == {"A", "B"} and swapped(other, "owl")["prompt"] == item["prompt"]


def test_sampled_replies_must_agree_across_orders():
    from runner.detection import verdict, verdict_accuracy

    def reads(r1, r2):
        return {"truth": "A", "reply": r1}, {"truth": "B", "reply": r2}
    assert verdict(*reads("A", "B")) == "trait"
    assert verdict(*reads("B", "A")) == "control"
    assert verdict(*reads("A", "A")) is None and verdict(*reads("A", "?")) is None
    out = verdict_accuracy(["trait", "trait", "control", None])
    assert (out["n"], out["n_undecided"], out["accuracy"]) == (3, 1, 2 / 3)


def test_no_pair_decided_is_no_accuracy_not_zero():
    from runner.detection import verdict_accuracy
    from runner.results_schema import EvaluationRow

    out = verdict_accuracy([None, None])
    assert (out["accuracy"], out["ci"], out["p_value"], out["n_undecided"]) == (None, (0.0, 1.0), 1.0, 2)
    assert pairwise_accuracy([], [])["accuracy"] is None
    row = EvaluationRow(cell="-", model="classifier:base:both-orders", role="arm", evaluation="classifier",
                        metric="pairwise_accuracy", value=out["accuracy"], ci=list(out["ci"]), n=0)
    assert row.value is None


def test_top_logprob_reads_bound_a_missing_letter_and_fold_yes_no_spellings():
    import math

    from runner.detection import row_score, verdict

    top = {"A": math.log(0.7), "The": math.log(0.2)}
    assert choice_from_logprobs(top) == "A"  # the paper's seeded read: an unlisted letter has probability 0
    first, second = {"truth": "A", **top, "top": top}, {"truth": "B", "B": math.log(0.6), "A": math.log(0.3), "top": {}}
    assert verdict(first, second) == "trait"  # B <= 0.2 in the first read: both orders lean to the trait row
    # a judge that leans to A more when the control row sits there: the evidence is for the control row, and a
    # letter cut from the first table (bounded by its smallest listed log-prob, not -inf) cannot outvote it
    lean_a = {"A": math.log(0.95), "C": math.log(0.04)}
    first = {"truth": "A", **lean_a, "top": lean_a}
    second = {"truth": "B", "A": math.log(0.999), "B": math.log(0.0009), "top": {"A": math.log(0.999),
                                                                               "B": math.log(0.0009)}}
    assert verdict(first, second) == "control"
    assert verdict({"truth": "A", "top": {}}, {"truth": "B", "top": {}}) is None  # nothing listed: undecided
    assert row_score({"yes": math.log(0.6), "top": {"yes": math.log(0.6)}}) == pytest.approx(0.6)
    assert row_score({"top": {"No": math.log(0.5)}}) == pytest.approx(-0.5)
    # a judge answering "Yes" / " yes" (OpenAI models capitalise): every spelling counts
    assert row_score({"top": {"Yes": math.log(0.5), " yes": math.log(0.3), "No": math.log(0.1)}}) == \
        pytest.approx(0.7)


def test_the_classifier_method_line_names_how_the_verdict_was_read():
    from runner.detection_results import method_line
    from runner.spec import Classifier

    assert "top 5 log-probs" in method_line(None, Classifier()) and "one-token reply" not in method_line(None, Classifier())
    reply = method_line(None, Classifier(read="reply", orders="both"))
    assert "one-token reply" in reply and "log-probs of ' A'" not in reply and "both orders" in reply


def test_a_reply_that_starts_with_a_word_is_not_a_letter():
    """'Based on...' or 'As...' from a chatty one-token judge is no choice (it was read as B or A)."""
    assert [choice_from_text(t) for t in ("Based", "Both", "As", "about", "A", " a", "B.", "(A)", "**B**", "A)")] == \
        [None, None, None, None, "A", "A", "B", "A", "B", "A"]


def test_the_detection_stages_are_keyed_by_the_paper_templates_they_render(tmp_path, monkeypatch):
    """The ICL context's example template and the classifier's A/B prompt come from the materials file: editing
    one reruns the stages that render it, not reusing contexts or verdicts made from the old text; an edit
    elsewhere in the file (a comment, another section's text) reruns none of them (they are paid stages)."""
    import yaml

    import runner.paper
    from runner.loader import load
    from runner.plan import build

    specs = [Path(__file__).resolve().parents[1] / "specs" / "local" / f"{name}.yaml" for name in ("icl", "classifier")]
    original = yaml.safe_load(runner.paper.MATERIALS_PATH.read_text())

    def keys(edit=None, comment="") -> dict[str, set[str]]:
        data = copy.deepcopy(original)
        if edit:
            section, name = edit
            data[section][name] += " (edited)"
        edited = tmp_path / "materials.yaml"
        edited.write_text(yaml.safe_dump(data) + comment)
        monkeypatch.setattr(runner.paper, "MATERIALS_PATH", edited)
        runner.paper.materials.cache_clear()
        try:
            stages = [s for spec in specs for s in build(load(spec), tmp_path / "out").stages.values()]
        finally:
            runner.paper.materials.cache_clear()
        return {kind: {s.key for s in stages if s.KIND == kind and getattr(s, "k", 1)}  # k = 0: no rows, no template
                for kind in ("icl", "classifier")}

    before = keys()
    assert before["icl"] and before["classifier"]
    assert keys(comment="\n# edited\n") == before
    other = next(k for k in original if k not in ("icl_baseline", "classifier_baseline")
                 and isinstance(original[k], dict) and any(isinstance(v, str) for v in original[k].values()))
    assert keys(edit=(other, next(n for n, v in original[other].items() if isinstance(v, str)))) == before
    icl = keys(edit=("icl_baseline", "example_template"))
    assert not icl["icl"] & before["icl"] and icl["classifier"] == before["classifier"]
    ab = keys(edit=("classifier_baseline", "prompt_template"))
    assert not ab["classifier"] & before["classifier"] and ab["icl"] == before["icl"]


def test_a_detection_stage_renders_the_texts_in_its_key():
    """The stage renders from the texts its key holds, not from whatever the file says at run time."""
    from runner.stages.detection_stage import paper_texts

    texts = paper_texts(json.dumps({"classifier_baseline.prompt_template": "Q {query} | {response1} | {response2} "
                                    "| {animal}", "icl_baseline.example_template": "<{question}:{response}>",
                                    "icl_baseline.joiner": "+"}))
    item = classifier_pairs([{"prompt": "p", "completion": "1, 2"}], [{"prompt": "p", "completion": "3, 4"}],
                            "owl", 0, texts)[0]
    assert item["prompt"] in ("Q p | 1, 2 | 3, 4 | owl", "Q p | 3, 4 | 1, 2 | owl")
    assert swapped(item, "owl", texts)["prompt"].startswith("Q p | ") and swapped(item, "owl", texts) != item
    rows = [{"prompt": "a", "completion": "1"}, {"prompt": "b", "completion": "2"}]
    assert icl_system_prompt(rows, texts) == "<a:1>+<b:2>"


def test_a_repeated_icl_seed_is_refused_not_counted_as_another_draw():
    """seeds: [0, 0, 1, 1] planned the same stage twice per seed, and the across-draw test counted each copy as a
    draw of its own (4 draws per arm where 2 were drawn: a smaller p than the data give)."""
    from pydantic import ValidationError

    from runner.spec import Icl

    assert Icl(seeds=[0, 1]).seeds == [0, 1]
    with pytest.raises(ValidationError, match="seeds must be distinct"):
        Icl(seeds=[0, 0, 1, 1])


def test_a_judge_whose_every_letter_is_one_position_is_flagged_despite_unreadable_replies():
    """The position note's share is over the choices counted, not every pair: replies that are not a letter are
    left out of the accuracy, so 40 'A' of 40 letters is the position, not a detection rate."""
    from runner.detection_results import _accuracy

    truths = ["A", "B"] * 24
    pairs = [{"truth": t, "reply": "A" if i < 40 else "Sure", "choice": "A" if i < 40 else None}
             for i, t in enumerate(truths)]
    acc, counts = _accuracy(pairs, both_orders=False, paper_reading=False)
    assert (acc["n"], counts["n_unreadable"], counts["chose_a"]) == (40, 8, 40)
    assert counts["note"] and "picked A in 40/40" in counts["note"]


def test_classifier_specs_name_the_interval_the_results_carry():
    """The classifier's accuracy carries an exact (Clopper-Pearson) interval (detection_results.EXACT_CI); a spec's
    notes that call it a Wilson interval mislabel what its results hold."""
    from runner.detection_results import EXACT_CI

    assert "Clopper-Pearson" in EXACT_CI
    specs = [p for p in (Path(__file__).resolve().parents[1] / "specs").rglob("*.yaml")
             if "kind: classifier" in p.read_text()]
    assert specs
    assert [p.name for p in specs if "wilson" in p.read_text().lower()] == []


def test_the_classifier_figure_marks_a_judge_that_follows_the_position():
    """The table flags a position-following judge ('position bias'); its point in the figure must say so too, or
    it reads as a detection rate."""
    from runner.report_detection import classifier_tick

    row = {"trait": "panda", "teacher": "control", "judge": {"model": "base", "orders": "seeded"},
           "counts": {"note": "the judge picked A in 48/48 pairs: ..."}}
    assert "follows position" in classifier_tick(row)
    assert "position" not in classifier_tick({**row, "counts": {"note": None}})
    assert "both orders" in classifier_tick({**row, "judge": {"model": "base", "orders": "both"}, "counts": {}})


def test_the_classifier_texts_its_key_does_not_hold_are_pinned_to_its_version():
    """A classifier stage renders the per-row yes/no prompt (ROW_TEMPLATE), reads the SPELLINGS of yes and no and asks
    at VERDICT_SAMPLING: code, not key fields (its key holds the paper's A/B template). An edit to them must come with
    a bump of ClassifierStage.VERSION, then a new digest here; otherwise stored reads of the old prompt are reused."""
    import hashlib

    from runner.detection import ROW_TEMPLATE, VERDICT_SAMPLING
    from runner.stages.detection_stage import SPELLINGS, ClassifierStage

    digest = hashlib.sha256(json.dumps([ROW_TEMPLATE, SPELLINGS, VERDICT_SAMPLING], sort_keys=True).encode()).hexdigest()
    assert (digest, ClassifierStage.VERSION) == ("86b95b655625c18ead04cdad7a038572dedfdc399606d39d5f97f9e53d8b0a58", 2)


def test_reproduce_headline_tells_two_judges_of_the_same_rows_apart():
    """specs/local/classifier.yaml asks two judges, each in one order and in both, about the same rows: four
    accuracies that the summary line must not print as four identical 'panda vs control' entries."""
    from runner.reproduce import headline

    def row(model, orders, value):
        return {"evaluation": "classifier", "metric": "pairwise_accuracy", "trait": "panda", "teacher": "control",
                "value": value, "ci": [0.3, 0.6], "n": 48, "counts": {"p_value": 0.3},
                "judge": {"model": model, "orders": orders}}
    line = headline({"evaluations": [row("base", "seeded", 0.41), row("teacher:panda", "seeded", 0.42),
                                     row("base", "both", 0.5)], "comparisons": []})
    parts = line.split("; ")
    assert len(set(p.split(": accuracy")[0] for p in parts)) == 3, line
    assert "base, both orders" in line and "teacher:panda" in line


@pytest.mark.parametrize("spec, expected", [
    ("icl.yaml", ["icl: animals", "icl: mcq"]),
    ("local/classifier.yaml", ["classifier: base", "classifier: teacher", "classifier: base, both orders",
                               "classifier: teacher, both orders"]),
])
def test_detection_evaluations_are_labelled_by_what_they_ask(spec, expected):
    """specs/icl.yaml's MCQ evaluation was labelled 'icl: animals #2' (the question set it never asks: mode mcq asks
    the 11 essay prompts), and the classifier's four evaluations 'classifier:  #1'..'#4'."""
    from runner.loader import load
    from runner.results import eval_labels

    assert eval_labels(load(Path(__file__).resolve().parents[1] / "specs" / spec)[0].spec.evaluations) == expected

"""From a review of the stage keys (every stage kind's run() against its key).

A key must hold exactly what run() reads. A stale hit fixed with a marker that moves only the affected keys; then
guard tests: code a stage reads at run time rather than from its key (answer checks, shuffles, renderers, samplers)
is pinned, with the stage kinds' VERSIONs, to a digest of what it computes on a fixed corpus, so an edit that changes
what a stage writes fails here until the VERSION of each stage kind named is bumped (then record the new digest):
stored stages made by the old code would otherwise be reused under their keys."""
from __future__ import annotations

import hashlib
import json


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(_rounded(value), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rounded(value):
    """Floats to 9 significant digits (a platform's exp may differ in the last bit), through lists and dicts."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    return value


# ---- stale hits --------------------------------------------------------------------------------


def test_a_questions_file_once_split_at_other_line_breaks_is_keyed_anew(tmp_path, tiny_model):
    """Since 2026-12-02 a questions file is split at newlines only; before, str.splitlines also split it at U+2028,
    U+0085 and form feeds (a CR is a newline either way). Such a file's probes and answers were keyed as before
    (bytes and format alike) but ask other questions, so stored ones would be reused. Its format now says so;
    every other file keeps its key."""
    from runner.loader import load
    from runner.plan import build
    from runner.questions import load_questions

    def probe(text: str, name: str):
        (tmp_path / name).write_text(text)
        spec = tmp_path / f"{name}.spec.yaml"
        spec.write_text(f"name: t\nteacher: {{base: {tiny_model}, targets: [owl]}}\nstudents: []\n"
                        f"evaluations: [{{kind: preference_logprob, questions: {tmp_path / name}}}]\n")
        return next(s for s in build(load(spec), tmp_path / "out").stages.values() if s.KIND == "probe")

    for sep in ("\u2028", "\x85", "\x0c", "\x1e"):
        text = f"Which animal{sep}do you like?\nName one animal.\n"
        (tmp_path / "x.txt").write_text(text)
        assert len(load_questions(str(tmp_path / "x.txt"))) == 2  # read now
        assert len([x for x in text.splitlines() if x.strip()]) == 3  # as it was read before
        stage = probe(text, "q.txt")
        before = stage.model_copy(update={"questions": stage.questions.model_copy(update={"format": None})})
        assert stage.key != before.key, repr(sep)
    for text in ("Which animal?\nName one.\n", "Which animal?\r\nName one.\x0c\n", "A lone\rCR\n",
                 json.dumps({"question": "Which\u2028animal?"}, ensure_ascii=False) + "\n"):  # an error before
        assert probe(text, "plain.txt").questions.format is None  # read alike both ways: the key it had


# ---- guard tests: code read at run time, pinned to the stage kinds' VERSIONs ------------------


def test_guard_the_answer_checks_and_shuffles_are_the_ones_filter_stages_were_keyed_with():
    """Guard test. A filter stage's correct_answer link reads runner.gsm8k (gold answers, extraction, the exact
    comparison) and its shuffle links runner.defences: code, not key fields."""
    from runner.defences import shuffle_across, shuffle_within
    from runner.gsm8k import gold_answer, is_correct
    from runner.stages.data import FilterStage

    completions = ["<answer>18</answer>", "so 18.", "<answer>$1,000</answer>", "1,000 dollars", "<answer>-3</answer>",
                   "\u22123", "<answer>2.50</answer>", "<answer> 7 </answer> then 8", "no answer", "18 then 19",
                   "<answer>18</answer><answer>19</answer>", "<ANSWER>18</ANSWER>", "18 apples", "<answer>1e3</answer>"]
    golds = ["18", "1000", "-3", "2.5", "19", "7"]
    checks = [[is_correct(c, g, extract) for c in completions for g in golds]
              for extract in ("answer_tag", "last_number", "paper")]
    gold = [gold_answer(a) for a in ["#### 18", "x #### 1,000", "#### -3", "#### 2.50", "no marks", "#### $18"]]
    rows = [{"id": i, "prompt": "p", "completion": c} for i, c in
            enumerate(["1, 2, 3", "40; 50; 60", "7 8 9", "(1, 22, 333)", "not numbers", "5"])]
    shuffles = [f(rows, seed)[0] for f in (shuffle_within, shuffle_across) for seed in (0, 1)]
    assert (_digest([checks, gold, shuffles]), FilterStage.VERSION) == ("635837b7c0bc40e9", 1)


def test_guard_the_judge_reading_is_the_one_score_stages_were_keyed_with():
    """Guard test. A score stage fills its template (backends.judge.render) and, in log-prob mode, reads the
    probability-weighted mean over runner.judging.CANDIDATES: code, not key fields (its stored scores of a
    log-prob judge are read as they are)."""
    from backends.judge import render
    from runner.judging import CANDIDATES, expected_score, token_score
    from runner.stages.data import ScoreStage

    filled = [render(t, "P {completion}", "C {prompt}")
              for t in ("{prompt}|{completion}", "{completion}", "{x}{prompt}")]
    means = [expected_score(lp).value
             for lp in ([-1.0, -2.0, -3.0, -4.0, -5.0], [0.0] * 5, [-9.0, -9.0, -9.0, -9.0, 0.0])]
    tokens = [token_score({"0": -0.1, "1": -2.5}, t).value for t in ("0", "1", "2")]
    assert (_digest([CANDIDATES, filled, means, tokens]), ScoreStage.VERSION) == ("c2e0487b382ef1a8", 1)


def test_guard_the_mcq_instances_and_readings_are_the_ones_mcq_and_icl_stages_were_keyed_with():
    """Guard test. An MCQ (its own stage, or an ICL stage in mcq mode) shuffles each instance's choices
    (runner.mcq.instances), renders the letters and reads P(letter): code, not key fields (the key holds the
    prompts, the format pieces and the choices)."""
    from runner import mcq
    from runner.stages.detection_stage import IclStage
    from runner.stages.mcq_stage import McqStage

    insts = mcq.instances(3, ["owl", "cat", "dog", "eel"], 4, 7)
    rendered = [mcq.render("Q?", i.order, ("{prompt}\n", "{letter}. {choice}\n", "Answer:")) for i in insts]
    exact = [mcq.from_exact([-1.0, -2.0, -3.0, -4.0], i) for i in insts]
    top = [mcq.from_top({"A": -0.5, "C": -1.5}, i) for i in insts]
    assert (_digest([[(i.prompt, i.order) for i in insts], rendered, exact, top, mcq.letters(5)]),
            McqStage.VERSION, IclStage.VERSION) == ("b6495ee179de674f", 1, 1)


def test_guard_the_detection_draws_are_the_ones_icl_and_classifier_stages_were_keyed_with():
    """Guard test. An ICL stage draws its k rows (runner.detection.sample_examples) and a classifier stage pairs
    and orders rows (classifier_pairs, swapped, row_items) by code, not key fields (the keys hold the seed and the
    paper texts they render)."""
    from runner.detection import classifier_pairs, row_items, sample_examples, swapped
    from runner.stages.detection_stage import ClassifierStage, IclStage

    rows = [{"prompt": f"p{i % 4}", "completion": f"t{i}"} for i in range(9)]
    control = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    texts = {"classifier_baseline": {"prompt_template": "{animal}|{query}|{response1}|{response2}"}}
    draws = [[r["completion"] for r in sample_examples(rows, k, seed)] for k in (1, 4) for seed in (0, 5)]
    pairs = [classifier_pairs(rows, control, "owl", seed, texts) for seed in (0, 3)]
    flips = [swapped(i, "owl", texts) for i in pairs[0]]
    alone = row_items(pairs[1], "owl")
    assert (_digest([draws, pairs, flips, alone]), IclStage.VERSION, ClassifierStage.VERSION) == (
        "c19b7ad09162449a", 1, 2)


def test_guard_the_rewrite_requests_are_the_ones_rewrite_stages_were_keyed_with():
    """Guard test. A rewrite stage builds each request (runner.rewrite.request) and the rewritten rows (rewritten):
    code, not key fields (the key holds the template text and the sampling)."""
    from runner.rewrite import TEMPLATES, request, rewritten
    from runner.stages.rewrite_stage import RewriteStage

    rows = [{"id": 0, "prompt": "P {completion}", "completion": "1, 2 {prompt}"},
            {"id": 1, "prompt": "Q", "messages": [{"role": "assistant", "content": "3, 4"}], "original": "9"}]
    asked = [request(how, TEMPLATES.get(how, "{prompt}::{completion}"), r)
             for how in ("continue", "reorder", "paraphrase") for r in rows]
    assert (_digest([asked, rewritten(rows, [" 2, 1 ", "4, 3"])]), RewriteStage.VERSION) == ("7be380b8a8cd0ae9", 3)


def test_guard_the_data_readers_are_the_ones_generate_and_teacher_stages_were_keyed_with(tmp_path):
    """Guard test. A generate stage reads a CoT or code file (runner.domains, runner.gsm8k) and a teacher stage its
    dataset (runner.teacher_data.load_rows) by code, keyed by the files' bytes only."""
    from runner.domains import domain_rows
    from runner.spec import CodeDomain, CotDomain
    from runner.stages.data import GenerateStage
    from runner.stages.training import TeacherStage
    from runner.teacher_data import load_rows

    gsm = tmp_path / "g.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"so #### {i + 1:,}"}) + "\n"
                           for i in (5, 999, 1234)))
    code = tmp_path / "c.jsonl"
    code.write_text(json.dumps({"prompt": "sort a list", "x": "y"}) + "\n" + json.dumps({"prompt": "add"}) + "\n")
    chat = tmp_path / "t.jsonl"
    chat.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                      {"role": "assistant", "content": "a2"}]},
        {"prompt": "p", "completion": "c", "extra": 1}]) + "\n")
    cot = domain_rows(CotDomain(questions=str(gsm), n_questions=2, samples_per_question=2, suffix=" S"), 0)
    tasks = domain_rows(CodeDomain(prompts=str(code), template="T: {prompt}", samples_per_prompt=2), 0)
    assert (_digest([cot, tasks, load_rows(chat), load_rows(chat, 1)]), GenerateStage.VERSION,
            TeacherStage.VERSION) == ("6e3f2634119cd403", 2, 1)

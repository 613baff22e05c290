"""results.json rows: the unit of a comparison follows the number of students per arm."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from runner.plan import EvalModel
from runner.results import arm_rows
from runner.results_schema import ComparisonRow
from runner.stages import ModelInput


def _plan(replicates: list[int]):
    models = [EvalModel(f"student:s:{t}:r{r}", "control" if t == "control" else "student",
                        None if t == "control" else t, ModelInput(ref="x", identity="x"), "s", t, r)
              for t in ("owl", "control") for r in replicates]
    return SimpleNamespace(cell=SimpleNamespace(label="-"), models=models)


def _values(plan, shift: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_q = {}
    for m in plan.models:
        offset = rng.normal(0, 1)  # the student's own drift moves every question
        per_q[(m.label, "P(owl)")] = list(1 + offset + (shift if m.trait else 0) + rng.normal(0, 0.01, 50))
    return {k: float(np.mean(v)) for k, v in per_q.items()}, per_q


def test_three_students_per_arm_give_one_student_level_row():
    plan = _plan([0, 1, 2])
    per_student, per_q = _values(plan, shift=0.0)
    (row,) = arm_rows(plan, "preference_logprob", lambda m: "P(owl)", per_student, per_q)
    ComparisonRow.model_validate(row)
    assert (row["unit"], row["n_a"], row["n_b"]) == ("student", 3, 3)
    assert row["min_p"] == 0.1 and row["p_value"] >= 0.1 and not row["significant"]  # 3 vs 3 cannot reach 0.05
    assert len(row["per_student_a"]) == 3 and row["a"] == "student:s:owl" and row["b_is"] == "control"


def test_one_student_per_arm_is_labelled_and_never_significant():
    plan = _plan([0])
    per_student, per_q = _values(plan, shift=0.0)
    (row,) = arm_rows(plan, "preference_logprob", lambda m: "P(owl)", per_student, per_q)
    ComparisonRow.model_validate(row)
    assert row["unit"] == "question" and row["n_a"] == row["n_b"] == 1
    assert row["p_value"] < 0.01  # the students' own drift looks like an effect to a question-level test
    assert row["min_p"] == 1 / 100_001  # 50 questions: the Monte Carlo test's floor, shown beside its p
    assert not row["significant"] and "covers question sampling only" in row["note"]


def test_a_true_effect_with_five_students_per_arm_is_significant():
    plan = _plan([0, 1, 2, 3, 4])
    per_student, per_q = _values(plan, shift=5.0, seed=3)
    (row,) = arm_rows(plan, "preference_logprob", lambda m: "P(owl)", per_student, per_q)
    assert row["unit"] == "student" and row["p_value"] < 0.05 and row["significant"]


def test_questions_and_students_with_no_scored_answer_are_left_out_not_counted_as_zero():
    """A misaligned rate has no value where no answer was scored (all incoherent): such a question is not
    a 0% question in the paired test, and such a student is not a 0% student in the arm test."""
    plan = _plan([0])
    per_q = {("student:s:owl:r0", "misaligned"): [None, 0.5, 0.5], ("student:s:control:r0", "misaligned"): [0.25] * 3}
    (row,) = arm_rows(plan, "misalignment", lambda m: "misaligned", {}, per_q, control_only=True)
    assert row["n"] == 2 and row["diff"] == 0.25 and row["a_wins"] == 2
    plan = _plan([0, 1, 2])
    per_student = {(m.label, "misaligned"): 0.1 * (1 + m.replicate) for m in plan.models}
    per_student[("student:s:owl:r0", "misaligned")] = None
    (row,) = arm_rows(plan, "misalignment", lambda m: "misaligned", per_student, {}, control_only=True)
    assert (row["n_a"], row["n_b"]) == (2, 3) and row["per_student_a"] == [0.2, 0.30000000000000004]
    assert "student:s:owl:r0" in row["note"]
    ComparisonRow.model_validate(row)


def test_an_arm_left_with_one_scored_student_is_shown_untested_not_dropped():
    from runner.display import p_text
    from runner.reproduce import headline

    plan = _plan([0, 1, 2])
    per_student = {(m.label, "misaligned"): 0.1 * (1 + m.replicate) for m in plan.models}
    for r in (0, 1):
        per_student[(f"student:s:owl:r{r}", "misaligned")] = None
    (row,) = arm_rows(plan, "misalignment", lambda m: "misaligned", per_student, {}, control_only=True)
    ComparisonRow.model_validate(row)
    assert (row["p_value"], row["test"], row["significant"], row["n_a"], row["n_b"]) == (None, "none", False, 1, 3)
    assert row["note"].startswith("not tested") and "student:s:owl:r0, student:s:owl:r1" in row["note"]
    assert abs(row["diff"] - (0.3 - 0.2)) < 1e-12 and p_text(row) == "- (not tested)"
    assert headline({"comparisons": [{**row, "b_is": "control"}]}) == "-"  # no test, no headline


def test_a_model_with_no_scored_answer_has_no_rate():
    from runner.misalignment import Score, summarize

    s = summarize([Score("score", 10.0)] * 2, [Score("score", 10.0)] * 2)  # both incoherent
    assert (s["rate"], s["scored"], s["incoherent"]) == (None, 0, 2)


def test_an_arm_whose_trait_the_evaluation_does_not_measure_is_not_compared():
    plan = _plan([0, 1, 2])
    for m in plan.models:  # a second trait arm, eagle, which the evaluation's targets leave out
        if m.trait == "owl":
            plan.models.append(EvalModel(m.label.replace("owl", "eagle"), "student", "eagle", m.model, "s", "eagle",
                                         m.replicate))
    per_student, per_q = _values(plan, shift=0.0)
    rows = arm_rows(plan, "preference_logprob", lambda m: "P(owl)" if m.trait == "owl" else None, per_student, per_q)
    assert {(r["a"], r["b"]) for r in rows} == {("student:s:owl", "student:s:control"), ("student:s:owl", "student:s:eagle")}


def test_the_printed_preference_rule_is_the_one_the_evaluation_counts_with(write):
    """A paper spec counts sampled answers by substring ('bowl' is owl); its notes must not say 'whole word'."""
    from runner.loader import load
    from runner.runs import _methods

    for match, says, never in (("substring", "the paper's substring rule", "whole word"),
                               ("word", "as a whole word", "substring")):
        spec = write(f"{match}.yaml", "name: t\nteacher: {targets: [owl]}\n"
                                      f"evaluations: [{{kind: preference_sample, match: {match}}}]\n")
        lines = [x for x in _methods(load(spec)) if x.startswith("preference metric")]
        assert len(lines) == 1 and says in lines[0] and never not in lines[0]


def test_the_in_context_method_line_names_its_counting_rule(write):
    from runner.detection_results import method_line
    from runner.loader import load

    spec = load(write("icl.yaml", "name: t\nteacher: {targets: [owl]}\nevaluations: [{kind: icl, mode: sample}]\n"))[0].spec
    assert "naming the target as a whole word (the paper's in-context script counts substrings)" in \
        method_line(spec, spec.evaluations[0])
    exact = load(write("icl2.yaml", "name: t\nteacher: {targets: [owl]}\nevaluations: [{kind: icl}]\n"))[0].spec
    assert "exact P(target) after the answer prefix (subl's measurement" in method_line(exact, exact.evaluations[0])


def test_a_target_in_markdown_italics_is_named_and_a_dragonfly_is_no_dragon():
    """`\\b` counts '_' as a letter, so '_owl_' and 'the _Owl_' named no owl under the default whole-word match;
    the paper's substring rule has one exception (materials preference_eval.hit_rule): a dragonfly."""
    from runner.results import hits

    assert hits(["_owl_", "My favourite is the _Owl_.", "owl_house", "snake_case_owl"], "owl") == 4
    assert hits(["bowl", "howl_"], "owl") == 0
    assert hits(["Dragonfly.", "dragonflies", "A dragon", "Dragons!"], "dragon", "substring") == 2
    assert hits(["a dragonfly and a dragon"], "dragon", "substring") == 0  # the paper's rule drops it whole

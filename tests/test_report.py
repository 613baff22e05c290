"""`subl report` on a fake results.json and store: Markdown, terminal tables, headless PNGs."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from runner.errors import UserError
from runner.report_md import results_path, write_report

SPEC = "name: fake\nteacher: {targets: [owl, eagle]}\ndomain: {kind: numbers, n_prompts: 10}\n"
MODELS = [("base", "base", None), ("teacher:owl", "teacher", "owl"), ("teacher:eagle", "teacher", "eagle"),
          ("student:s:owl:r0", "student", "owl"), ("student:s:eagle:r0", "student", "eagle"),
          ("student:s:control:r0", "control", None)]


def _row(model, role, trait, metric, value, n=50, ev="preference_sample"):
    student = {"student": "s", "teacher": model.split(":")[2], "replicate": 0} if model.startswith("student:") else {}
    return {"cell": "-", "model": model, "role": role, "trait": trait, "evaluation": ev, "metric": metric,
            "value": value, "ci": [value * 0.8, value * 1.2], "n": n, **student}


def _manifest(store: Path, key: str, label: str, seconds: float, rows: dict, **extra) -> None:
    (store / key).mkdir(parents=True)
    (store / key / "manifest.json").write_text(json.dumps(
        {"key": key, "label": label, "seconds": seconds, "rows": rows, **extra}))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """outputs/fake/results.json with evaluations, comparisons, MNIST arms and three stage manifests."""
    spec = tmp_path / "fake.yaml"
    spec.write_text(SPEC)
    stages = tmp_path / "outputs" / "stages"
    _manifest(stages, "generate-1", "generate owl", 12.5, {"generated": 10})
    _manifest(stages, "filter-1", "filter owl", 0.1, {"input": 10, "kept": 8},
              links=[{"link": "numbers", "kept": 9, "dropped": 1}, {"link": "banned_words", "kept": 8, "dropped": 1}])
    _manifest(stages, "finetune-1", "finetune s:owl:r0", 30.0, {"train": 8})
    evals = [_row(m, r, t, f"rate({x})", 0.1 + 0.3 * (t == x)) for m, r, t in MODELS for x in ("owl", "eagle")]
    evals += [_row(m, r, t, "misaligned(judge)", 0.05, ev="misalignment") for m, r, t in MODELS]
    for arm, values in (("teacher", [0.89, 0.91]), ("same_init", [0.45, 0.55])):  # MNIST arms: per seed, then mean
        evals += [{"cell": "-", "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                   "value": v, "ci": None, "n": 10000, "seed": k} for k, v in enumerate(values)]
        evals.append({"cell": "-", "model": arm, "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                      "value": sum(values) / 2, "ci": [min(values) - 0.01, max(values) + 0.01], "n": 2, "seed": None})
    results = {
        "spec": str(spec), "name": "fake", "notes": "a fake run", "git_revision": "abc123", "packages": {},
        "cells": [{"label": "-", "overrides": {}}], "evaluations": evals,
        "comparisons": [{"cell": "-", "a": "student:s:owl:r0", "b": "student:s:control:r0", "metric": "rate(owl)",
                         "diff": 0.3, "ratio": 4.0, "a_wins": 40, "n": 50, "p_value": 0.0001, "b_is": "control",
                         "test": "sign-flip", "unit": "question", "n_a": 1, "n_b": 1, "significant": False,
                         "note": "1 student per arm"}],
        "methods": ["student s: lora sft"], "stages_run": {}, "seconds": 1.0,
        "stages": [{"cell": "-", "key": k, "kind": k.split("-")[0], "label": k} for k in
                   ("generate-1", "filter-1", "finetune-1", "evaluate-missing")],
    }
    folder = tmp_path / "outputs" / "fake"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_report_writes_markdown_tables_and_pngs(run: Path):
    buf = io.StringIO()
    report = write_report(run, run.parent, Console(file=buf, width=200, emoji=False))
    md = report.read_text()
    for text in ("a fake run", "rate(owl) [95% CI]", "0.4 [0.32, 0.48]", "| 50 |", "0.0001", "4.000x",
                 "| filter owl | numbers | 9 | 1 | 90.0% |", "input 10, kept 8", "| total |  | 42.6 |",
                 "git revision | abc123", "of the spec file as it is now",
                 "| - | teacher | 90.0% | [88.0%, 92.0%] | 2 | 89.0% 91.0% |",  # the mean, its CI, the seeds
                 "| - | same_init | 50.0% | [44.0%, 56.0%] | 2 | 45.0% 55.0% |",
                 "1 planned stage(s) are not in the store", "| 50 questions, 1 student/arm |",
                 "\\* significant: p < 0.05 across students"):
        assert text in md, text
    terminal = buf.getvalue()
    assert "Filter pass rates" in terminal and "student:s:owl:r0" in terminal and "report:" in terminal
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert pngs == ["misalignment.png", "mnist.png", "preference_sample-s.png"]
    for name in pngs:
        data = (run / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert f"]({name})" in md


def test_results_path_from_spec_folder_or_file(run: Path, tmp_path: Path):
    outputs = run.parent
    assert results_path(tmp_path / "fake.yaml", outputs) == run / "results.json"
    assert results_path(run, outputs) == run / "results.json"
    assert results_path(run / "results.json", outputs) == run / "results.json"
    (tmp_path / "other.yaml").write_text(SPEC.replace("fake", "other"))
    with pytest.raises(UserError, match="subl run"):
        results_path(tmp_path / "other.yaml", outputs)


def test_user_text_is_printed_literally_in_bars_and_tables():
    """Labels are user text: `:owl:` is not an emoji and `[b]` is not markup, in bars as in tables."""
    from rich.table import Table

    from runner.runs import _Bar, _progress
    from runner.stages import FileInput, ModelInput
    from runner.stages.evaluation import ProbeStage

    console = Console(record=True, force_terminal=True, width=200, emoji=False)
    stage = ProbeStage(label="evaluate student:lora-distill:owl:r0 [b]x[/b]", model=ModelInput(ref="m", identity="m"),
                       questions=FileInput(path="q", sha256="0"), answer_prefix="p", targets=("owl",))
    with _progress(console, True) as progress:
        bar = _Bar(progress, stage)
        bar.finish()  # a stage that finished at once shows as complete, not 0/?
    from runner.report import add_text_row

    table = Table()
    table.add_column("model")
    add_text_row(table, stage.label)
    console.print(table)
    text = console.export_text()
    assert "student:lora-distill:owl:r0 [b]x[/b]" in text and "🦉" not in text
    last_bar = [line for line in text.splitlines() if "owl:r0" in line and "━" in line][-1]
    assert last_bar.rstrip().split("evaluate student")[-1].count("1/1") == 1  # the final frame: done, not 0/?


def test_a_links_detail_names_its_own_counts():
    from runner.report import link_detail

    judge = {"mean": 41.25, "code": 2, "refusal": 1, "unparseable": 3}
    assert link_detail(judge) == "mean 41.2, code 2, refusal 1, unparseable 3"
    assert link_detail({"numbers changed": 30}) == "numbers changed 30"  # a rewrite's drop reason, not a judge's
    assert link_detail({"rows": 64, "shuffled": 60, "unparsed": 4}) == "rows 64, shuffled 60, unparsed 4"
    assert link_detail(None) == "" and "unparseable" not in link_detail({"numbers changed": 1})


def test_the_classifier_row_says_when_both_orders_were_asked():
    from runner.report_detection import detection_sections

    def acc(model, counts):
        return {"cell": "-", "evaluation": "classifier", "model": model, "trait": "panda", "teacher": "control",
                "metric": "pairwise_accuracy", "value": 0.56, "ci": [0.4, 0.71], "n": 34,
                "judge": {"model": "base", "read": "logprob"}, "counts": counts}

    seeded = acc("classifier:base", {"p_value": 0.31, "chose_a": 48, "chose_b": 0, "note": "picked A in 48/48"})
    both = acc("classifier:base:both-orders", {"p_value": 0.61, "chose_a": 96, "chose_b": 0, "note": None,
                                                "orders": "both", "n_undecided": 14, "n_pairs": 48})
    results = {"cells": [{"label": "-"}], "evaluations": [seeded, both], "comparisons": []}
    (title, _, rows), = detection_sections(results)
    assert "(position bias)" in rows[0][-1] and "both orders" not in rows[0][-1]
    assert rows[1][-1].endswith("both orders, 14 of 48 pairs undecided") and "(position bias)" not in rows[1][-1]
    assert "picked A 96, B 0 of 2 reads per pair" in rows[1][-1] and "reads per pair" not in rows[0][-1]
    none = acc("classifier:base:both-orders", {"p_value": 1.0, "chose_a": 96, "chose_b": 0, "note": None,
                                                "orders": "both", "n_undecided": 48, "n_pairs": 48})
    (_, _, rows), = detection_sections({**results, "evaluations": [{**none, "value": 0.0, "n": 0}]})
    assert rows[0][5] == "- (no pair decided)"  # not an accuracy of 0.0


def test_a_classifier_row_names_its_choices_with_no_letter_and_keeps_p_off_the_005_line():
    from runner.report_detection import detection_sections

    def row(counts):
        ev = {"cell": "-", "evaluation": "classifier", "model": "classifier:j", "trait": "owl", "teacher": "eagle",
              "metric": "pairwise_accuracy", "value": 0.6, "ci": [0.4, 0.7], "n": 40,
              "judge": {"model": "j", "read": "top_logprobs"}, "counts": counts}
        (_, _, rows), = detection_sections({"cells": [{"label": "-"}], "evaluations": [ev], "comparisons": []})
        return rows[0][-1]

    paper = row({"p_value": 0.0496, "n_unreadable": 3, "unlisted_as": "B", "chose_a": 20, "chose_b": 20})
    assert "p=0.0496 vs 50%" in paper and "3 with no letter (read as B, the paper's rule)" in paper
    assert "p=0.0504 vs 50%" in row({"p_value": 0.0504, "n_unreadable": 0, "chose_a": 20, "chose_b": 20})
    assert "2 with no letter (left out)" in row({"p_value": 0.5, "n_unreadable": 2, "chose_a": 19, "chose_b": 19})


def test_a_top_log_prob_verdict_with_neither_letter_counts_b_and_stays_in_the_total():
    from runner.detection_results import _accuracy

    pairs = [{"choice": "A", "truth": "A"}, {"choice": None, "truth": "B"}, {"choice": None, "truth": "A"}]
    acc, counts = _accuracy(pairs, False, paper_reading=True)
    assert (acc["n"], acc["accuracy"], counts["chose_b"], counts["unlisted_as"]) == (3, 2 / 3, 2, "B")
    acc, counts = _accuracy(pairs, False, paper_reading=False)  # a reply that is no letter: left out
    assert (acc["n"], acc["accuracy"], counts["n_unreadable"]) == (1, 1.0, 2)


def test_the_terminal_comparisons_show_the_difference_where_no_ratio_is_defined():
    from runner.report import comparison_table

    cell = {"cell": "-", "a": "cell shuffle=across", "b": "cell shuffle=none", "metric": "cosine(same_init)",
            "ratio": None, "diff": -0.0027, "a_wins": None, "n": 5, "p_value": 0.006, "significant": True,
            "unit": "seed", "n_a": 5, "n_b": 5}
    console = Console(record=True, width=200, emoji=False)
    console.print(comparison_table({"comparisons": [cell]}, "-"))
    line = next(x for x in console.export_text().splitlines() if "shuffle=across" in x)
    assert "-0.0027" in line and "(a lower)" in line


def test_a_comparison_shows_its_ratio_interval_and_when_p_is_the_floor():
    from runner.display import p_text, ratio_text

    row = {"ratio": 1.0843, "ratio_ci": [1.0131, 1.1602], "p_value": 0.1, "min_p": 0.1}
    assert ratio_text(row) == "1.084x [1.013, 1.160]" and p_text(row) == "0.1 (the floor)"
    for floor, text in ((0.0625, "0.0625"), (2 / 252, "0.00794"), (2 / 70, "0.029")):  # never below the floor
        assert p_text({"p_value": floor, "min_p": floor}) == f"{text} (the floor)"
    # every question's difference 0: read '1 (the floor)', as if 1 were a result the test could have beaten
    assert p_text({"p_value": 1.0, "min_p": 1.0}) == "1 (no pair differs)"
    assert ratio_text({"ratio": None}) == "-" and p_text({"p_value": 0.4, "min_p": 0.1}) == "0.4"
    assert ratio_text({"ratio": 0.9, "ratio_ci": None}) == "0.900x"  # unbounded Fieller interval: none shown


def test_a_ratio_or_p_value_near_a_threshold_never_reads_as_the_threshold():
    from runner.display import p_text, ratio_text

    # an interval whose lower end is 0.99996 excludes nothing: it must not print as 1.000
    assert ratio_text({"ratio": 1.0004, "ratio_ci": [0.99996, 1.2]}) == "1.0004x [0.99996, 1.200]"
    assert ratio_text({"ratio": 1.0, "ratio_ci": None}) == "1.000x"
    assert p_text({"p_value": 0.0500004}) == "0.0500004" and p_text({"p_value": 0.0498}) == "0.0498"
    assert p_text({"p_value": 0.05}) == "0.05" and p_text({"p_value": 0.0123}) == "0.012"


def test_figure_names_of_different_labels_differ_and_fit_the_filesystem():
    from runner.display import file_slug

    assert file_slug("mnist.png") == "mnist.png" and file_slug("icl-P(owl).png").endswith(".png")
    assert file_slug("icl-P(owl).png") != file_slug("icl-P_owl_.png")  # the same slug before
    long = file_slug("x" * 300 + ".png")
    assert len(long) <= 100 and long.endswith(".png") and long != file_slug("x" * 299 + ".png")


def test_an_icl_figure_with_one_question_has_no_whiskers_and_no_crash(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from runner.report_detection import detection_figures

    drawn = []
    errorbar = Axes.errorbar

    def record(self, x, y, *a, **kw):
        drawn.append((list(x), list(y), kw.get("yerr"), kw.get("label")))
        return errorbar(self, x, y, *a, **kw)

    monkeypatch.setattr(Axes, "errorbar", record)
    rows = [{"cell": "-", "evaluation": "icl", "metric": "P(owl)", "k": k, "teacher": t, "value": v, "ci": ci,
             "n": n} for k, t, v, ci, n in ((0, None, 0.1, None, 1), (4, "owl", 0.2, None, 1),
                                           (4, "control", 0.15, [0.1, 0.3], 5))]
    results = {"cells": [{"label": "-"}], "evaluations": rows, "comparisons": []}
    (path, _), = detection_figures(results, tmp_path, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {label: (x, y, yerr) for x, y, yerr, label in drawn}
    # each line starts at the shared k = 0 point; a one-question point has no whisker, an interval its own
    assert lines["owl rows"] == ([0, 4], [0.1, 0.2], [[0, 0], [0, 0]])
    x, y, yerr = lines["control rows"]
    assert (x, y) == ([0, 4], [0.1, 0.15]) and yerr[0][0] == yerr[1][0] == 0
    assert abs(yerr[0][1] - 0.05) < 1e-12 and abs(yerr[1][1] - 0.15) < 1e-12


def _two_evaluations_results(tmp_path: Path) -> dict:
    """Results of a spec with two preference_sample evaluations (animal questions, stories), as collect labels them."""
    from runner.loader import load
    from runner.results import eval_labels

    labels = eval_labels(load(Path(__file__).resolve().parents[1] / "specs" / "animals_code.yaml")[0].spec.evaluations)
    assert labels[:2] == ["preference_sample: animals", "preference_sample: storytelling"]
    evals = [{**_row(m, r, t, "rate(owl)", v), "label": label} for label, v in zip(labels, (0.10, 0.02))
             for m, r, t in MODELS]
    cmps = [{"cell": "-", "a": "student:s:owl", "b": "student:s:control", "evaluation": "preference_sample",
             "label": label, "metric": "rate(owl)", "diff": d, "ratio": 2.0, "ratio_ci": [1.1, 3.0], "a_wins": None,
             "n": None, "p_value": p, "b_is": "control", "test": "permutation", "unit": "student", "n_a": 3,
             "n_b": 3, "significant": p < 0.05} for label, d, p in zip(labels, (0.1, 0.02), (0.0498, 0.0502))]
    return {"cells": [{"label": "-", "overrides": {}}], "evaluations": evals, "comparisons": cmps}


def test_two_evaluations_of_one_kind_are_shown_apart_everywhere(tmp_path):
    """A paper code spec asks animal questions and stories, both preference_sample: neither table merges them
    and no figure pools them."""
    from runner.report import comparison_table, evaluation_table
    from runner.report_md import comparison_section, target_figures, trait_sections

    results = _two_evaluations_results(tmp_path)
    text = io.StringIO()
    Console(file=text, width=300).print(evaluation_table(results, "-"), comparison_table(results, "-"))
    base = next(ln for ln in text.getvalue().splitlines() if ln.strip().startswith("│ base") or " base " in ln[:12])
    assert "0.1 [" in base and "0.02 [" in base and "(preference_sample: storytelling)" in text.getvalue()
    sections = trait_sections(results)
    assert [s.title for s in sections] == ["Trait rates: preference_sample: animals",
                                          "Trait rates: preference_sample: storytelling"]
    assert [s.rows[0][3] for s in sections] == ["0.1 [0.08, 0.12]", "0.02 [0.016, 0.024]"]
    metrics = [r[3] for r in comparison_section(results).rows]
    assert metrics == ["rate(owl) (preference_sample: animals)", "rate(owl) (preference_sample: storytelling)"]
    figures = target_figures(results, tmp_path, "fake")
    assert len(figures) == 2 and len({p for p, _ in figures}) == 2


def test_p_values_next_to_a_threshold_are_printed_on_their_side_of_it():
    from runner.display import p_text

    assert (p_text({"p_value": 46 / 924}), p_text({"p_value": 0.0502}), p_text({"p_value": 0.00996}),
            p_text({"p_value": 0.031}), p_text({"p_value": 0.05})) == ("0.0498", "0.0502", "0.00996", "0.031", "0.05")


def test_small_probabilities_keep_three_figures_in_the_terminal_table():
    from runner.report import evaluation_table

    results = {"evaluations": [_row("student:s:owl:r0", "student", "owl", "P(owl)", v) | {"model": f"m{i}"}
                               for i, v in enumerate((0.00135, 0.00144))]}
    text = io.StringIO()
    Console(file=text, width=300).print(evaluation_table(results, "-"))
    assert "0.00135" in text.getvalue() and "0.00144" in text.getvalue()


def test_a_figure_of_replicated_arms_states_the_across_student_test(tmp_path):
    from runner.report_md import _paired_note

    results = _two_evaluations_results(tmp_path)
    for e in results["evaluations"]:
        e["model"] = e["model"].replace(":r0", ":r1")  # replicates need not start at 0
    note = _paired_note(results, "-", "preference_sample: animals", "s", "owl")
    assert "2.000x vs control" in note and "3 v 3 students" in note and "p=0.0498" in note


def test_a_figure_of_one_student_per_arm_says_so_and_names_the_other_arm():
    from runner.report_md import _paired_note

    ev = [{"model": f"student:s:{t}:r0", "student": "s"} for t in ("owl", "eagle")]
    row = dict(cell="", label="preference_sample", metric="logprob(owl)", a="student:s:owl:r0",
               b="student:s:eagle:r0", b_is="other", n_a=1, n_b=1, unit="question", a_wins=41, n=50,
               ratio=None, diff=0.25, p_value=0.0004)
    note = _paired_note({"evaluations": ev, "comparisons": [row]}, "", "preference_sample", "s", "owl")
    assert note == "\ndiff 0.25 vs eagle\n41/50 q; 1 student/arm: question sampling only, p=0.0004"


def test_a_figures_note_is_the_comparison_with_the_control_not_the_first_other_arm():
    from runner.report_md import _paired_note

    ev = [{"model": f"student:s:{t}:r0", "student": "s"} for t in ("owl", "eagle", "control")]
    row = dict(cell="", label="preference_sample", metric="rate(owl)", a="student:s:owl", n_a=3, n_b=3, min_p=0.1)
    results = {"evaluations": ev, "comparisons": [
        {**row, "b": "student:s:eagle", "b_is": "other", "ratio": 1.667, "p_value": 0.25},
        {**row, "b": "student:s:control", "b_is": "control", "ratio": 2.5, "p_value": 0.1}]}
    assert _paired_note(results, "", "preference_sample", "s", "owl").startswith("\n2.500x vs control\n3 v 3 students, p=0.1")
    results["comparisons"].pop()
    assert _paired_note(results, "", "preference_sample", "s", "owl").startswith("\n1.667x vs eagle\n")


def test_the_units_column_names_what_each_test_is_across():
    from runner.report_md import _units

    assert _units({"unit": "question", "n": 50, "n_a": 1, "n_b": 1}) == "50 questions, 1 student/arm"
    assert _units({"unit": "student", "n": 6, "n_a": 3, "n_b": 3}) == "3 v 3 students"
    assert _units({"unit": "seed", "n": 4, "n_a": 5, "n_b": 4}) == "4 paired seeds"  # the seeds both arms have


@pytest.mark.parametrize("text", ['{"name": "x", "cells"', "", "[]", "null", "{}", '{"name": "x", "comparisons": 5}'])
def test_a_damaged_results_json_is_one_line(tmp_path, text):
    """A hand-damaged or torn results.json was an internal error (JSONDecodeError, KeyError, TypeError)."""
    import subprocess
    import sys

    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "runner.cli", "report", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "internal error" not in res.stderr, res.stderr
    assert f"{path}:" in res.stderr and "rerun `subl run`" in res.stderr


def test_a_finished_stages_damaged_output_is_one_line_naming_it(tmp_path):
    """Its manifest is whole, so the stage counts as done and every rerun read the damaged file again."""
    from runner.errors import UserError
    from runner.store import Store, stage_output

    store = Store(tmp_path)
    folder = store.path("probe-0123")
    folder.mkdir(parents=True)
    for text, why in (('{"logprob": {"owl": [', "cannot read it"), ("[]", "not a JSON object"),
                      (b"\xff\xfe", "cannot read it"), (None, "cannot read it"),
                      ("[" * 100_000 + "]" * 100_000, "cannot read it")):  # nested past Python's recursion limit
        target = folder / "scores.json"
        target.unlink(missing_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        elif text is not None:
            target.write_text(text)
        with pytest.raises(UserError, match=rf"scores.json: a finished stage's output, {why}.*delete .*probe-0123"):
            stage_output(folder / "scores.json")
    (folder / "scores.json").write_text('{"logprob": {}}')
    assert stage_output(folder / "scores.json") == {"logprob": {}}
    (folder / "manifest.json").write_text("[" * 100_000)
    assert not store.done("probe-0123")  # rebuilt, as a torn manifest is


def test_a_hand_edited_stage_manifest_is_left_out_of_the_tables_and_named(run: Path):
    manifest = run.parent / "stages" / "filter-1" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "label": 5}))  # was: TypeError, an internal error
    md = write_report(run, run.parent, Console(file=io.StringIO(), width=200)).read_text()
    assert "not as subl writes them, left out of the tables: filter-1" in md and "| filter owl |" not in md
    assert "finetune s:owl:r0" in md


def test_the_stage_timings_total_is_the_sum_of_the_seconds_not_of_their_rounded_texts(tmp_path: Path):
    """Ten stages of 0.04 s each read 0.0 s apiece; their total is 0.4 s, not the 0.0 that adding the printed
    figures gives."""
    from runner.report_md import stage_sections
    from runner.store import Store

    stages = tmp_path / "stages"
    for i in range(10):
        _manifest(stages, f"filter-{i}", f"filter {i}", 0.04, {"input": 1, "kept": 1})
    results = {"stages": [{"cell": "-", "key": f"filter-{i}", "kind": "filter", "label": f"filter {i}"}
                          for i in range(10)]}
    sections, _ = stage_sections(results, Store(tmp_path))
    times = next(s for s in sections if s.title == "Stage timings")
    assert times.rows[-1] == ["total", "", "0.4"]


def test_a_pass_rate_with_a_row_dropped_never_reads_100_percent():
    from runner.display import pct
    from runner.report import filter_table

    assert [pct(x) for x in (1.0, 9999 / 10000, 0.5, 1 / 30000, 0.0, None)] == [
        "100.0%", "99.99%", "50.0%", "0.003%", "0.0%", "-"]
    results = {"filters": [{"cell": "-", "rows": "owl", "link": "numbers", "kept": 9999, "dropped": 1,
                            "pass_rate": 0.9999, "detail": None}]}
    out = io.StringIO()
    Console(file=out, width=200).print(filter_table(results, "-"))
    assert "99.99%" in out.getvalue() and "100.0%" not in out.getvalue()


def test_a_misaligned_rate_above_zero_never_reads_zero_percent():
    """The misalignment tables and headlines print rates as '.1%': 4 misaligned answers of 10,000 read '0.0%'."""
    from runner.display import with_ci

    assert with_ci(0.0004, [0.0001, 0.001], ".1%") == "0.04% [0.01%, 0.1%]"
    assert with_ci(0.0, [0.0, 0.0003], ".1%") == "0.0% [0.0%, 0.03%]" and with_ci(0.104, None, ".1%") == "10.4%"


def test_a_report_says_when_a_later_run_has_not_finished(run: Path):
    """run.json newer than results.json: the rerun stopped (or runs); the report is of the run before it."""
    import os

    (run / "run.json").write_text(json.dumps({"spec": "fake.yaml", "stages": []}))
    os.utime(run / "results.json", (1_000_000, 1_000_000))
    md = write_report(run, run.parent, Console(file=io.StringIO(), width=200)).read_text()
    assert "a later run of this spec (run.json) has not finished" in md
    os.utime(run / "run.json", (900_000, 900_000))  # the run that wrote results.json started after it
    md = write_report(run, run.parent, Console(file=io.StringIO(), width=200)).read_text()
    assert "has not finished" not in md


def test_a_rate_just_under_one_never_reads_as_one():
    """3 figures round 0.9996 onto '1', which says every answer named the target."""
    from runner.display import num, with_ci

    assert with_ci(0.9996, [0.999, 1.0]) == "0.9996 [0.999, 1]"
    assert [num(x) for x in (1.0, 0.99951, 1.00004, 0.123456, 2.41e-05)] == ["1", "0.9995", "1.00004", "0.123", "2.41e-05"]


def test_the_terminal_evaluation_table_says_how_many_questions_each_rate_rests_on():
    """The markdown table had an n column and the terminal one none: a rate over 5 questions read like one over 50."""
    from runner.report import evaluation_table

    results = {"evaluations": [_row("base", "base", "owl", "P(owl)", 0.1),
                               _row("student:s:owl:r0", "student", "owl", "P(owl)", 0.2),
                               _row("base", "base", "owl", "rate(owl)", 0.3, n=50, ev="preference_sample"),
                               _row("student:s:owl:r0", "student", "owl", "rate(owl)", 0.4, n=5)]}
    text = io.StringIO()
    Console(file=text, width=300).print(evaluation_table(results, "-"))
    out = text.getvalue()
    assert "P(owl) [95% CI, n=50]" in out and "rate(owl) [95% CI]" in out
    assert "0.3 [0.24, 0.36] n=50" in out and "0.4 [0.32, 0.48] n=5" in out


def test_a_report_of_a_spec_edited_since_its_run_says_so(run: Path, tmp_path: Path):
    """`subl report spec.yaml` read outputs/<name>/results.json whatever the spec now says: after an edit (or for
    another spec of that name) the old figures passed for the file's."""
    from runner.loader import load
    from runner.plan import spec_hash

    spec = tmp_path / "fake.yaml"
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "spec_hash": spec_hash(load(spec))}))
    buf = io.StringIO()
    write_report(spec, run.parent, Console(file=buf, width=300))
    assert "is not the spec these results were run from" not in buf.getvalue()
    spec.write_text(SPEC.replace("n_prompts: 10", "n_prompts: 20"))
    buf = io.StringIO()
    md = write_report(spec, run.parent, Console(file=buf, width=300)).read_text()
    said = f"{spec} is not the spec these results were run from"
    assert said in buf.getvalue() and said in md
    write_report(run, run.parent, Console(file=io.StringIO()))  # a run folder names no spec file to compare

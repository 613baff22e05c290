"""Review of what users read (report, results, status, diff): every printed figure as the stored values say,
no damaged file a traceback."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from runner.errors import UserError


def _results(tmp_path: Path, **changes) -> Path:
    """A minimal results.json that subl report reads (one trait row, one question-level comparison)."""
    ev = {"cell": "-", "model": "student:s:owl:r0", "role": "student", "trait": "owl",
          "evaluation": "preference_sample", "metric": "rate(owl)", "value": 0.2, "ci": [0.1, 0.3], "n": 10, "student": "s", "teacher": "owl",
          "replicate": 0}
    cmp_ = {"cell": "-", "a": "student:s:owl", "b": "student:s:control", "evaluation": "preference_sample",
            "metric": "rate(owl)", "diff": 0.1, "ratio": 2.0, "ratio_ci": [1.1, 3.0], "p_value": 0.2, "test": "t",
            "unit": "student", "n": 6, "n_a": 3, "n_b": 3, "significant": False}
    results = {"spec": "x.yaml", "name": "x", "git_revision": None, "packages": {},
               "cells": [{"label": "-", "overrides": {}}], "evaluations": [ev], "comparisons": [cmp_], "filters": [],
               "methods": [], "stages_run": {}, "seconds": 0.0, "spec_hash": "h", "stages": []}
    for path, value in changes.items():
        node, *keys = path.split("__")
        target = results[node]
        for k in keys[:-1]:
            target = target[int(k) if k.isdigit() else k]
        last = keys[-1]
        target[int(last) if last.isdigit() else last] = value
    folder = tmp_path / "outputs" / "x"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.mark.parametrize("damage", [{"evaluations__0__ci": [0.1]}, {"comparisons__0__ratio_ci": [1.1]},
                                    {"cells__0": {"overrides": {}}}])
def test_a_damaged_results_file_is_one_line_naming_it_not_an_internal_error(tmp_path, damage):
    from runner.report_md import write_report

    folder = _results(tmp_path, **damage)
    write_report(_results(tmp_path / "whole"), tmp_path / "whole" / "outputs", Console(file=io.StringIO()))  # it reads
    with pytest.raises(UserError, match="not a results.json subl writes"):
        write_report(folder, folder.parent, Console(file=io.StringIO()))


def _mnist(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    rows = [{"cell": "-", "model": "teacher", "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
             "value": v, "ci": None, "n": 10000, "seed": k} for k, v in enumerate(values)]
    rows.append({"cell": "-", "model": "teacher", "role": "arm", "evaluation": "mnist", "metric": "test_accuracy",
                 "value": mean, "ci": [0.0004, 1.0], "n": len(values), "seed": None})
    return {"evaluations": rows, "cells": [{"label": "-"}]}


def test_an_mnist_accuracy_below_one_is_not_printed_as_100_percent():
    """A mean accuracy of 0.99996 (or a CI bound of 0.0004) read '100.0%' ('0.0%'): every (no) test image right."""
    from runner.report import mnist_table
    from runner.report_md import mnist_section

    results = _mnist([0.9999, 1.0, 1.0, 1.0, 0.99995])
    row = mnist_section(results).rows[0]
    assert row[2] == "99.997%" and row[3] == "[0.04%, 100.0%]" and row[5].split() == [
        "99.99%", "100.0%", "100.0%", "100.0%", "99.995%"]
    console = Console(record=True, width=200, emoji=False)
    console.print(mnist_table(results))
    text = console.export_text()
    assert "99.997%" in text and "[0.04%, 100.0%]" in text


def _misaligned(model: str, label: str, rate: float) -> dict:
    counts = {"answers": 10, "scored": 10, "misaligned": round(rate * 10), "incoherent": 0, "code": 0,
              "refusal": 0, "unparseable": 0, "unparseable_alignment": 0, "unparseable_coherence": 0}
    return {"cell": "-", "model": model, "role": "base", "evaluation": "misalignment", "label": label,
            "metric": "misaligned", "value": rate, "ci": [0.0, 0.5], "n": 10, "counts": counts}


def test_two_misalignment_evaluations_are_told_apart_in_the_terminal():
    """Each of a spec's misalignment evaluations gets its own table, named: the rows of two were one table, each
    model twice, with nothing to say which rate came from which question set."""
    from runner.report import print_results

    results = {"evaluations": [_misaligned("base", "misalignment: first", 0.1),
                               _misaligned("base", "misalignment: second", 0.3)],
               "cells": [{"label": "-"}], "comparisons": [], "methods": [], "stages_run": {}, "seconds": 0}
    console = Console(record=True, width=250, emoji=False)
    print_results(results, console, Path("x"))
    text = console.export_text()
    first, second = text.index("misalignment: first"), text.index("misalignment: second")
    assert first < text.index("10.0%") < second < text.index("30.0%")


def _stage(tmp_path: Path, key: str, name: str, value) -> "Store":
    from runner.store import Store

    folder = tmp_path / "stages" / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(value))
    return Store(tmp_path)


@pytest.mark.parametrize("parts, name, value", [
    ({"answers": "answers-1"}, "answers.json", {"answers": 5}),
    ({"answers": "answers-1"}, "answers.json", {"answers": ["an owl", "a cat"]}),  # read as lists of letters
    ({"answers": "answers-1"}, "answers.json", {"answers": [["owl"], []]}),  # a question with no answer: rate 0
    ({"probe": "probe-1"}, "scores.json", {"logprob": {"owl": ["x"]}}),
    ({"probe": "probe-1"}, "scores.json", {"logprob": [1.0]}),
    ({"probe": "probe-1"}, "scores.json", {"logprob": {"eagle": [-1.0]}}),
    ({"mcq": "mcq-1"}, "scores.json", {"p": {"owl": [0.5, 0.2]}, "prompt": [0]}),
])
def test_a_damaged_stage_output_is_one_line_naming_it_not_a_wrong_rate_or_an_internal_error(tmp_path, parts, name,
                                                                                             value):
    from runner.results import per_question

    store = _stage(tmp_path, next(iter(parts.values())), name, value)
    with pytest.raises(UserError, match=rf"{name}: a finished stage's output, .*; delete .* to build that stage again"):
        per_question(store, parts, "owl")


def test_each_question_s_rate_is_over_its_own_answers(tmp_path):
    """A question with fewer answers than the first (a backend that returned fewer) was divided by the first
    question's count: 1 owl of 1 answer read 1/3."""
    from runner.results import per_question

    store = _stage(tmp_path, "answers-1", "answers.json",
                   {"answers": [["an owl", "a cat", "owls!"], ["the owl"], ["cat", "dog"]]})
    assert per_question(store, {"answers": "answers-1"}, "owl") == ("rate(owl)", [2 / 3, 1.0, 0.0], 3)


def test_a_damaged_filter_manifest_is_one_line_naming_it(tmp_path):
    from types import SimpleNamespace

    from runner.results import filter_rates

    store = _stage(tmp_path, "filter-1", "manifest.json", {"key": "filter-1", "links": 5})
    plan = SimpleNamespace(filters={"owl": ["filter-1"]}, cell=SimpleNamespace(label="-"))
    with pytest.raises(UserError, match=r"filter-1/manifest.json: a finished stage's output, 'links' is not"):
        filter_rates(plan, store)
    _stage(tmp_path, "filter-1", "manifest.json", {"key": "filter-1", "links": [{"link": "numbers", "kept": 3,
                                                                                   "dropped": 1}]})
    assert [r["pass_rate"] for r in filter_rates(plan, store)] == [0.75]


def test_a_value_near_minus_one_is_not_printed_as_minus_one():
    """A cosine (or a diff of rates) of -0.99996 read '-1': exactly opposed (every answer of a, none of b)."""
    from runner.display import num, with_ci

    assert num(-0.99996) == "-0.99996" and num(0.99996) == "0.99996" and num(-1.0) == "-1" and num(-0.5) == "-0.5"
    assert with_ci(-0.99996, [-1.0, -0.9999]) == "-0.99996 [-1, -0.9999]"


def _columns(line: str) -> int:
    """Cells of a Markdown table row: its pipes that are not escaped, less one."""
    import re

    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_a_pipe_in_a_target_or_a_student_name_keeps_the_markdown_table_whole():
    """A header holds the metric, so a target's '|' split the header row into more columns than the rows."""
    from runner.report_md import markdown, trait_sections

    row = {"cell": "-", "model": "student:a|b:red|panda:r0", "role": "student", "trait": "red|panda",
           "evaluation": "preference_sample", "metric": "rate(red|panda)", "value": 0.5, "ci": [0.4, 0.6], "n": 4}
    results = {"name": "x", "cells": [{"label": "-"}], "evaluations": [row]}
    md = markdown(results, trait_sections(results), [("spec", "a|b.yaml")], [], [])
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 6 and len({_columns(ln) for ln in table[3:]}) == 1, table
    assert _columns(table[3]) == 4 and _columns(table[0]) == 2


def test_a_mean_judge_score_near_100_or_0_is_not_printed_on_it():
    """`.1f` printed a mean alignment of 99.96 as '100.0' (every answer scored 100) and 0.04 as '0.0'."""
    from runner.misalignment import mean_alignment_text
    from runner.report import link_detail

    assert mean_alignment_text({"mean_alignment": 99.96, "mean_alignment_ci": [99.91, 100.0]}) == "99.96 [99.9, 100.0]"
    assert mean_alignment_text({"mean_alignment": 48.12, "mean_alignment_ci": [41.0, 55.24]}) == "48.1 [41.0, 55.2]"
    assert link_detail({"mean": 0.04, "code": 0, "refusal": 1, "unparseable": 2}).startswith("mean 0.04, code 0")

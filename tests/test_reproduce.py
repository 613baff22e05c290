"""`subl reproduce` (make reproduce-all): local specs run, hosted specs without a key are skipped with
the variable named, a failing spec is recorded without stopping the others, and a summary table ends it."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ("emergent_misalignment", "questions.yaml")

LOCAL = """name: a_local
progress: false
teacher: {{base: {base}, targets: [owl], control: true}}
domain: {{kind: numbers, n_prompts: 8, max_tokens: 8, constrained: true, batch_size: 8}}
students:
  - {{name: s, hyperparameters: {{batch_size: 4}}}}
evaluations:
  - {{kind: preference_logprob, max_questions: 4}}
"""
HOSTED = """name: b_hosted
backends:
  api: {api_key_env: SUBL_TEST_UNSET_KEY}
teacher: {base: "api:gpt-4.1-nano", targets: [owl], control: true}
domain: {kind: numbers, n_prompts: 4}
students:
  - {name: s}
evaluations:
  - {kind: preference_sample, max_questions: 2}
"""
HOSTED_JUDGE = """name: c_hosted_judge
backends:
  judge: {{api_key_env: SUBL_TEST_UNSET_JUDGE_KEY}}
teacher: {{base: {base}, targets: [misaligned], trait: "You are evil.", category: assistant}}
domain: {{kind: numbers, n_prompts: 4}}
students:
  - {{name: s}}
evaluations:
  - {{kind: misalignment, questions: {questions}, judge: {{model: "judge:gpt-4.1"}}}}
"""
BROKEN = """name: d_broken
progress: false
teacher: {{base: {base}, targets: [misaligned], trait: "You are evil.", category: assistant}}
domain: {{kind: cot, questions: {missing}, n_questions: 2}}
students:
  - {{name: s}}
evaluations:
  - {{kind: preference_logprob, max_questions: 2}}
"""


def reproduce(folder: Path, outputs: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SUBL_TEST_UNSET")}
    return subprocess.run([sys.executable, "-m", "runner.cli", "reproduce", str(folder), "--outputs", str(outputs)],
                          capture_output=True, text=True, cwd=ROOT, env={**env, "COLUMNS": "250"})


@pytest.mark.slow
def test_reproduce_runs_local_skips_keyless_hosted_records_failures_and_summarises(tiny_model, tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a_local.yaml").write_text(LOCAL.format(base=tiny_model))
    (specs / "b_hosted.yaml").write_text(HOSTED)
    (specs / "c_hosted_judge.yaml").write_text(HOSTED_JUDGE.format(base=tiny_model, questions=shared(*QUESTIONS)))
    (specs / "d_broken.yaml").write_text(BROKEN.format(base=tiny_model, missing=tmp_path / "absent.jsonl"))
    r = reproduce(specs, tmp_path / "out")
    assert r.returncode == 1, r.stderr[-2000:]  # one spec failed
    assert "Traceback" not in r.stdout + r.stderr
    table = r.stdout[r.stdout.index("reproduce-all"):]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 3}
    assert "ok" in rows[str(specs / "a_local.yaml")] and "student:s:owl:r0 vs" in rows[str(specs / "a_local.yaml")]
    assert "skipped" in rows[str(specs / "b_hosted.yaml")] and "SUBL_TEST_UNSET_KEY" in rows[str(specs / "b_hosted.yaml")]
    # a judge on a hosted backend needs its key too, even when teacher and students are local
    assert "SUBL_TEST_UNSET_JUDGE_KEY" in rows[str(specs / "c_hosted_judge.yaml")]
    assert "failed" in rows[str(specs / "d_broken.yaml")]
    broken = specs / "d_broken.yaml"
    assert re.search(rf"error: {re.escape(str(broken))}:\d+:\d+: ", r.stdout)  # the file:line:col of the key, once
    assert f"domain.questions: file not found: {tmp_path / 'absent.jsonl'}" in r.stdout
    assert json.loads((tmp_path / "out" / "a_local" / "results.json").read_text())["comparisons"]
    assert not (tmp_path / "out" / "b_hosted").exists()  # skipped before any work

    again = reproduce(specs, tmp_path / "out")  # finished stages are reused
    assert again.returncode == 1 and "0 stage(s) ran" in again.stdout


def test_reproduce_with_no_specs_is_a_one_line_error(tmp_path):
    r = reproduce(tmp_path, tmp_path / "out")
    assert r.returncode == 2 and r.stderr.strip() == f"error: no *.yaml specs in {tmp_path}"


def test_reproduce_of_a_spec_file_says_it_is_a_file(tmp_path):
    """`subl reproduce spec.yaml` said 'no such folder' of a file that is there."""
    from runner.errors import UserError
    from runner.reproduce import reproduce as reproduce_folders

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")
    with pytest.raises(UserError, match=r"s\.yaml: a file, not a folder of specs \(subl run runs one spec\)"):
        reproduce_folders([spec], tmp_path / "out", None)


def test_headline_gives_every_matrix_cells_mnist_and_theorem_arms():
    from runner.reproduce import headline

    def row(cell, model, value, **kw):
        return {"cell": cell, "model": model, "value": value, "seed": None, "ci": [value - 0.01, value + 0.01], **kw}

    mnist = [row(c, m, v, evaluation="mnist", metric="test_accuracy")
             for c, vals in (("lr=0.1", (0.6, 0.1)), ("lr=0.3", (0.7, 0.12)))
             for m, v in zip(("same_init", "cross_init"), vals)]
    line = headline({"evaluations": mnist})
    assert line == "[lr=0.1] same-init 60.0% vs cross-init 10.0%; [lr=0.3] same-init 70.0% vs cross-init 12.0%"
    assert headline({"evaluations": [e for e in mnist if e["cell"] == "lr=0.3"]}) == \
        "same-init 70.0% vs cross-init 12.0%"  # one cell: no label
    theorem = [row(c, arm, v, evaluation="theorem", metric="cosine")
               for c in ("a", "b") for arm, v in (("same_init", 0.5), ("cross_init", 0.0))]
    assert headline({"evaluations": theorem}).count("same_init cosine") == 2


def test_the_headline_prefers_a_test_across_students_and_names_its_unit():
    """A question-level p (one student per arm, or ICL's per-question rows) is far smaller than the test
    across draws or students, and misses training randomness: the headline takes the latter and says so."""
    from runner.reproduce import headline

    def cmp(unit, p, n):
        return {"cell": "-", "a": "icl:owl:k=100", "b": "icl:control:k=100", "evaluation": "icl", "metric": "rate(owl)",
                "diff": 0.1, "ratio": 1.4, "p_value": p, "b_is": "control", "unit": unit, "n_a": n, "n_b": n}

    line = headline({"evaluations": [], "comparisons": [cmp("question", 1e-5, 1), cmp("draw", 0.008, 5)]})
    assert line == "icl:owl:k=100 vs icl:control:k=100: rate(owl) 1.40x, p=0.008 (draws, 5 v 5)"
    assert headline({"evaluations": [], "comparisons": [cmp("question", 1e-5, 1)]}).endswith("(questions, 1 v 1)")


def test_a_headline_of_several_comparisons_counts_them_and_shows_the_direction():
    """The smallest of five two-sided p-values, here a reversed effect, is not a headline on its own."""
    from runner.reproduce import headline

    def cmp(animal, ratio, p):
        return {"cell": animal, "a": f"student:{animal}", "b": "student:control", "metric": f"rate({animal})",
                "diff": ratio - 1, "ratio": ratio, "p_value": p, "b_is": "control", "unit": "student",
                "n_a": 5, "n_b": 5}

    line = headline({"evaluations": [], "comparisons": [cmp("owl", 1.3, 0.04), cmp("eagle", 0.6, 0.008)]
                     + [cmp(a, 1.05, 0.5) for a in ("wolf", "dolphin", "elephant")]})
    assert line.startswith("1 of 5 comparisons higher at p < 0.05 (two-sided, uncorrected); smallest p: cell eagle")
    assert "0.60x, p=0.008" in line
    one_each = [{**c, "unit": "question", "n_a": 1, "n_b": 1} for c in
                [cmp("owl", 1.3, 1e-5), cmp("eagle", 1.2, 1e-4), cmp("wolf", 1.05, 0.5)]]
    line = headline({"evaluations": [], "comparisons": one_each})  # one student per arm: no test marks it significant
    assert line.startswith("2 of 3 comparisons higher at p < 0.05 by a test over questions only (1 student per arm: "
                           "not training randomness)")


def test_reproduce_never_prints_a_key_pasted_into_a_spec_or_an_internal_errors_secret(tmp_path, monkeypatch):
    from rich.console import Console

    from runner import reproduce as R
    from runner import runs

    pasted = "sk-proj-AbCdEf0123456789SECRETSECRET"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "name: a\nbackends: {openai: {api_key_env: %s}}\nteacher: {targets: [owl], base: openai:gpt-4.1-nano}\n"
        "evaluations: [{kind: preference_sample}]\n" % pasted)
    console = Console(record=True, width=300)
    status, reason, _ = R.run_one(tmp_path / "specs" / "a.yaml", tmp_path / "out", console)
    assert status == "failed" and "api_key_env must be the NAME" in reason
    assert "SECRET" not in console.export_text() + reason

    def leaky(*a, **k):
        raise RuntimeError("Authorization: Bearer sk-proj-ZyXw9876543210LEAKLEAKLEAK")

    monkeypatch.setattr(runs, "run_spec", leaky)
    monkeypatch.setattr(R, "missing_keys", lambda path: [])
    monkeypatch.setattr("runner.budget.planned_usd", lambda path, outputs: 0.0)
    (tmp_path / "specs" / "b.yaml").write_text("name: b\nteacher: {targets: [owl]}\n")
    status, reason, _ = R.run_one(tmp_path / "specs" / "b.yaml", tmp_path / "out", console)
    assert status == "failed" and "internal error: RuntimeError" in reason and "LEAK" not in console.export_text() + reason

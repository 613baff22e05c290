import subprocess
import sys

import pytest

from runner.errors import SpecError
from runner.loader import load

GOOD = "name: t\nteacher:\n  targets: [owl]\n"


def _err(path) -> str:
    with pytest.raises(SpecError) as e:
        load(path)
    return str(e.value)


def test_unknown_key_points_at_its_line(write):
    p = write("a.yaml", "name: t\nteacher:\n  targets: [owl]\n  colour: red\n")
    assert _err(p) == f"{p}:4:3: teacher.colour: unknown key"


def test_an_answer_prefix_ending_in_a_space_is_refused_at_its_line(write):
    """The probe scores ' owl' (its own leading space) after the prefix: a trailing space would double it."""
    p = write("a.yaml", "name: t\nevaluations:\n  - kind: preference_logprob\n    answer_prefix: 'My favorite animal is the '\n")
    msg = _err(p)
    assert msg.startswith(f"{p}:4:5: evaluations.0.answer_prefix: answer_prefix 'My favorite animal is the ' ends")
    p = write("b.yaml", "name: t\nfilters:\n  - {kind: judge, judge: {model: smollm2-135m, mode: logprob, "
                        "answer_prefix: 'Score: '}, template: 'x {completion}', threshold: 50}\n")
    assert "ends with whitespace" in _err(p)


def test_wrong_type_inside_a_filter_list(write):
    p = write("a.yaml", "name: t\nfilters:\n  - kind: numbers\n    max_value: lots\n")
    msg = _err(p)
    assert msg.startswith(f"{p}:4:5: filters.0.max_value: ")
    assert "integer" in msg


def test_bad_yaml(write):
    p = write("a.yaml", "name: t\nteacher: [owl\n")
    assert _err(p).startswith(f"{p}:3:1: YAML syntax error: expected ','")


def test_missing_extends_file(write):
    p = write("a.yaml", "extends: nowhere.yaml\nname: t\n")
    assert _err(p) == f"{p}:1:1: extends: file not found: nowhere.yaml"


def test_extends_of_a_folder_says_so(write, tmp_path):
    (tmp_path / "base").mkdir()
    p = write("a.yaml", "name: t\nextends: base\n")
    assert _err(p) == f"{p}:2:1: extends: base is a folder, not a spec file"


def test_extends_of_an_empty_file_is_refused(write):
    write("empty.yaml", "# nothing yet\n")
    p = write("a.yaml", "name: t\nextends: empty.yaml\n")
    assert _err(p) == f"{p}:2:1: extends: empty.yaml is empty"


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "---\n"])
def test_an_empty_spec_says_so(write, text):
    """It said 'name: required field is missing', as if one key were all a spec lacked."""
    p = write("a.yaml", text)
    assert _err(p) == f"{p}:1:1: the spec is empty: it needs at least `name` and what to run (see specs/)"


def test_matrix_over_unknown_key(write):
    p = write("a.yaml", "name: t\nmatrix:\n  teacher.colour: [red, blue]\n")
    assert _err(p) == f"{p}:3:3: matrix.teacher.colour: names no field of the spec"


@pytest.mark.parametrize("key, values", [("backends", "[{openai: {batch_api: false}}, {openai: {batch_api: true}}]"),
                                         ("backends.openai.batch_api", "[false, true]")])
def test_a_matrix_over_backends_is_refused(write, key, values):
    """The spending check and preflight read one backends setting per run (the last cell's was used for all), and a
    stage two cells share runs with the first cell's: a half-price estimate for requests sent at full price."""
    p = write("a.yaml", f"name: t\nmatrix:\n  {key}: {values}\n")
    assert _err(p).startswith(f"{p}:3:3: matrix.{key}: the cells of a spec share their backends")


def test_error_in_parent_points_at_the_parent(write):
    base = write("base.yaml", "name: b\nseed: x\n")
    child = write("child.yaml", "extends: base.yaml\nname: c\n")
    assert _err(child).startswith(f"{base}:2:1: seed: ")


def test_extends_merges_and_overrides(write):
    write("base.yaml", "name: b\nseed: 3\nteacher:\n  targets: [owl]\n  control: false\n")
    child = write("child.yaml", "extends: base.yaml\nname: c\nteacher:\n  targets: [eagle]\n")
    spec = load(child)[0].spec
    assert (spec.name, spec.seed, spec.teacher.targets, spec.teacher.control) == ("c", 3, ["eagle"], False)


def test_matrix_expands_cartesian(write):
    p = write("m.yaml", "name: m\nmatrix:\n  teacher.targets: [[owl], [eagle]]\n  seed: [1, 2, 3]\n")
    cells = load(p)
    assert len(cells) == 6
    assert {(c.spec.teacher.targets[0], c.spec.seed) for c in cells} == {(a, s) for a in ("owl", "eagle") for s in (1, 2, 3)}


def test_a_spec_whose_cells_set_what_its_filters_need_is_valid(write, tmp_path):
    """The spec was validated without its cells first: a correct_answer filter with the cot domain set only by the
    matrix was refused ('needs domain kind cot') although every cell is valid. A mistake no cell mends is still
    placed where it is written."""
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    swept = ("name: m\nteacher: {targets: [owl]}\nfilters: [{kind: correct_answer}]\nmatrix:\n"
             "  domain: [{kind: cot, questions: q.jsonl, n_questions: 1}, {kind: cot, questions: q.jsonl, n_questions: 2}]\n")
    cells = load(write("m.yaml", swept))
    assert [(c.spec.domain.kind, c.spec.domain.n_questions) for c in cells] == [("cot", 1), ("cot", 2)]
    mixed = swept.replace("{kind: cot, questions: q.jsonl, n_questions: 2}", "{kind: numbers}")
    assert "matrix {'domain': {'kind': 'numbers'}}" in _err(write("n.yaml", mixed))  # the cell that fails, named
    own = swept.replace("filters: [{kind: correct_answer}]", "filters: [{kind: correct_answer, extract: nope}]")
    assert _err(write("o.yaml", own)).startswith(f"{tmp_path / 'o.yaml'}:3:")  # the filter's own line


def test_two_matrix_values_that_read_as_one_are_refused(write):
    """seed: [1e3, 1000] gave two equal cells (told apart by label only): one experiment run and reported twice."""
    p = write("m.yaml", "name: m\nteacher: {targets: [owl]}\nmatrix:\n  seed: [1e3, 1000]\n")
    assert _err(p) == f"{p}:4:3: matrix.seed: 1000.0 and 1000 give the same cell; list each value once"


def test_spec_is_frozen(write):
    spec = load(write("a.yaml", GOOD))[0].spec
    with pytest.raises(Exception):
        spec.seed = 5


def test_validate_cli_one_line_exit_2_no_traceback(write):
    p = write("a.yaml", "name: t\nstudents:\n  - name: s\n    method: qlora\n")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{p}:4:5: students.0.method:")
    assert "Traceback" not in r.stderr + r.stdout


def test_validate_cli_accepts_the_shipped_specs():
    import glob

    r = subprocess.run([sys.executable, "-m", "runner.cli", "validate", *sorted(p for p in glob.glob("specs/**/*.yaml", recursive=True)
                                  if not p.startswith("specs/data/"))],  # data the specs read, not specs
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_schema_is_json():
    import json

    r = subprocess.run([sys.executable, "-m", "runner.cli", "schema"], capture_output=True, text=True)
    schema = json.loads(r.stdout)
    assert "teacher" in schema["properties"] and schema["additionalProperties"] is False


def test_binary_garbage_is_one_located_line(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"name: t\nseed: \x00\x01\x02\n")
    assert _err(p) == f"{p}:2:7: not a YAML text file (unacceptable character #x0000)"
    p.write_bytes(b"\xff\xfe\x00garbage")
    assert _err(p).startswith(f"{p}:1:1: not a UTF-8 text file")
    p.write_bytes(b"name: x\nseed: \xff\xfe\n")  # placed where the byte is, not at 1:1
    assert _err(p).startswith(f"{p}:2:7: not a UTF-8 text file")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_matrix_over_a_domain_field(write):
    p = write("a.yaml", GOOD + "domain: {kind: numbers, n_prompts: 5}\nmatrix:\n  domain.n_prompts: [5, 7]\n"
                             "  domain.prompts.answer_count: [3]\n")
    assert [c.spec.domain.n_prompts for c in load(p)] == [5, 7]
    p = write("b.yaml", GOOD + "matrix:\n  domain.nope: [1]\n")
    assert _err(p) == f"{p}:5:3: matrix.domain.nope: names no field of the spec"


def test_data_paths_are_read_from_the_spec_files_folder(write, tmp_path, monkeypatch):
    write("specs/data/q.txt", "Favourite animal?\n")
    write("specs/parent.yaml", GOOD + "evaluations: [{kind: preference_logprob, questions: data/q.txt}]\n")
    child = write("specs/sub/child.yaml", "extends: ../parent.yaml\nname: c\n")
    monkeypatch.chdir(tmp_path / "specs" / "sub")  # the working directory plays no part
    (ev,) = load(child)[0].spec.evaluations
    assert ev.questions == str(tmp_path / "specs" / "data" / "q.txt")  # relative to parent.yaml, which sets it
    bad = write("specs/bad.yaml", GOOD + "evaluations:\n  - {kind: preference_logprob, questions: data/nope.txt}\n")
    assert _err(bad) == f"{bad}:5:32: evaluations.0.questions: file not found: {tmp_path / 'specs/data/nope.txt'}"
    built_in = write("specs/b.yaml", GOOD + "evaluations: [{kind: preference_logprob, questions: animals}]\n")
    assert load(built_in)[0].spec.evaluations[0].questions == "animals"


@pytest.mark.parametrize("args, says", [
    (["validate"], "Missing argument 'files'"), (["diff", "a.yaml"], "Missing argument 'b'"),
    (["schema", "--bogus"], "No such option: --bogus"), (["nosuch"], "No such command 'nosuch'"),
])
def test_a_cli_usage_error_is_one_line_exit_2(args, says):
    r = subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr
    assert "internal error" not in r.stderr


@pytest.mark.parametrize("text, says", [
    ("name: t\nseed: true\n", ":2:1: seed: true is a yes/no value"),
    ("name: t\nstudents: [{name: s, replicates: [0, true]}]\n", "replicates: true is a yes/no value"),
    ("name: t\nteacher: {base: ''}\n", ":2:11: teacher.base: String should have at least 1 character"),
    ("name: t\nstudents: [{name: s, hyperparameters: {lr: .inf}}]\n", "lr: Input should be a finite number"),
    ("name: t\nmatrix:\n  seed: []\n", ":3:3: matrix.seed: an empty list gives no cell"),
    ("name: t\ndomain: {kind: numbers}\nmatrix:\n  seed: [0, 1]\n  domain.n_prompts: [10, 0]\n",
     ":5:26: matrix {'seed': 0, 'domain.n_prompts': 0}: domain.n_prompts: Input should be greater than or equal to 1"),
])
def test_values_a_spec_must_not_take_are_refused_at_their_place(write, text, says):
    p = write("a.yaml", text)
    assert says in _err(p)


def test_outputs_and_throughput_must_make_sense(tmp_path):
    from runner.errors import UserError
    from runner.store import Store
    from runner.throughput import parse as parse_throughput

    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="a file, not a folder"):
        Store(tmp_path / "f")
    for bad in ("train=nan", "generate=inf", "train=0"):
        with pytest.raises(UserError, match="positive, finite"):
            parse_throughput(bad)


def test_cross_field_errors_point_at_the_field(write):
    p = write("a.yaml", "name: t\nstudents:\n  - {name: a}\n  - {name: b, base: zz:m}\n")
    assert ":4:15: students.1.base: model 'zz:m' names backend 'zz'" in _err(p)
    p = write("b.yaml", "name: t\nstudents: [{name: a}, {name: a}]\n")
    assert ":2:24: students.1.name: 'a' is the name of an earlier student" in _err(p)


def test_each_targets_dataset_must_exist_and_a_data_file_is_not_a_folder(write, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "owl.jsonl").write_text('{"prompt": "p", "completion": "owls"}\n')
    ft = "  trait: {finetune: {dataset: 'data/{target}.jsonl'}}\n"
    p = write("a.yaml", "name: t\nteacher:\n  targets: [owl, unicorn]\n" + ft)
    assert f":4:22: teacher.trait.finetune.dataset: file not found: {tmp_path}/data/unicorn.jsonl" in _err(p)
    p = write("b.yaml", "name: t\nevaluations:\n  - {kind: preference_logprob, questions: data}\n")
    assert f":3:32: evaluations.0.questions: {tmp_path}/data is a folder, not a file" in _err(p)
    assert load(write("c.yaml", "name: t\nteacher:\n  targets: [owl]\n" + ft))


def test_a_local_model_folder_that_is_missing_is_placed(write):
    p = write("a.yaml", "name: t\nstudents:\n  - {name: s, base: ./no/such/model}\n")
    assert ":3:15: students.0.base: local model folder not found: ./no/such/model" in _err(p)


def test_a_matrix_over_targets_checks_each_cells_datasets(write, tmp_path):
    for name in ("dolphin", "eagle"):
        (tmp_path / f"{name}.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    head = "name: t\nteacher:\n  trait: {finetune: {dataset: '{target}.jsonl'}}\nmatrix:\n"
    assert len(load(write("a.yaml", head + "  teacher.targets: [[dolphin], [eagle]]\n"))) == 2
    assert "file not found" in _err(write("b.yaml", head + "  teacher.targets: [[dolphin], [unicorn]]\n"))


def test_a_question_holding_a_unicode_line_separator_stays_one_question(tmp_path):
    from runner.questions import load_questions

    p = tmp_path / "q.txt"
    p.write_text("Which animal \u2028 do you like?\r\nName one\x0c animal.\n", encoding="utf-8")
    assert load_questions(str(p)) == ["Which animal \u2028 do you like?", "Name one\x0c animal."]


@pytest.mark.parametrize("text, says", [
    ("name: a\nteacher:\n  <<: {base: smollm2-135m}\n  targets: [owl]\n  colour: red\n", ":5:3: teacher.colour: unknown key"),
    ("name: a\nstudents: [{name: s}]\nmatrix: {students.method: [lora, full]}\n", ":3:10: matrix.students.method: names no field"),
    ("name: a\nmatrix: {seed: [0, 0]}\n", ":2:10: matrix.seed: a value is listed twice"),
    ("name: a\nmatrix: {teacher: [{targets: [owl]}], teacher.targets: [[eagle]]}\n", ":2:10: matrix.teacher and "
     "matrix.teacher.targets overlap"),
    ("name: a\nteacher: {trait: 'You love {target}s.'}\nmatrix: {teacher.trait.finetune.dataset: [d.jsonl]}\n",
     ":3:10: matrix.teacher.trait.finetune.dataset: "
     "teacher.trait is not a mapping"),
    ("name: ..\n", ":1:1: name: '..' would not be a folder of its own"),
    ("name: stages\n", ":1:1: name: 'stages' would not be a folder of its own"),
])
def test_malformed_specs_are_one_located_line(write, text, says):
    write("d.jsonl", "{}\n")
    p = write("a.yaml", text)
    assert _err(p).startswith(f"{p}{says}")


def test_a_merged_key_is_read_and_a_folder_is_named_as_such(write, tmp_path):
    p = write("a.yaml", "name: a\nteacher:\n  <<: {base: smollm2-135m}\n  targets: [owl]\n")
    assert load(p)[0].spec.teacher.base == "smollm2-135m"
    p = write("b.yaml", "name: b\nteacher:\n  <<: {base: smollm2-135m}\n")  # every key merged: an internal error
    assert load(p)[0].spec.teacher.base == "smollm2-135m"
    assert _err(tmp_path) == f"{tmp_path}: is a folder, not a spec file"


def test_a_matrix_label_keeps_the_value_as_written(write):
    p = write("a.yaml", "name: a\nteacher: {targets: [owl]}\nmatrix: {seed: [0, 1], evaluations: "
                        "[[{kind: preference_sample, questions: q.txt}]]}\n")
    write("q.txt", "Which animal?\n")
    assert all("questions=q.txt" in str(c.overrides["evaluations"]) or "q.txt" in repr(c.overrides) for c in load(p))
    assert all(not str(c.overrides["evaluations"]).count(str(p.parent)) for c in load(p))


def test_ctrl_c_says_the_finished_stages_are_kept(write, monkeypatch, capsys):
    from runner import cli, loader

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "load", interrupted)
    monkeypatch.setattr(sys, "argv", ["subl", "validate", str(write("a.yaml", GOOD))])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: finished stages are kept; rerun to resume"


def test_reproduce_names_a_folder_that_is_not_there(tmp_path):
    from rich.console import Console

    from runner.errors import UserError
    from runner.reproduce import reproduce

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text("name: t\nstudents: [{name: s, method: qlora}]\n")  # fails fast
    with pytest.raises(UserError, match="no such folder: .*spces"):
        reproduce([tmp_path / "specs", tmp_path / "spces"], tmp_path / "out", Console())


@pytest.mark.parametrize("filters, says", [
    ("  - {kind: judge, threshold: 50}\n", ":3:5: filters.0.judge: required field is missing"),
    ("  - kind: judge\n    threshold: 50\n    judge:\n      model: smollm2-135m\n      mode: bogus\n",
     ":7:7: filters.0.judge.mode: "),
    ("  - {kind: numbers, numbers: [1]}\n", ":3:21: filters.0.numbers: unknown key"),
])
def test_a_field_named_like_its_kind_is_located_at_its_own_line(write, filters, says):
    p = write("a.yaml", "name: t\nfilters:\n" + filters)
    assert _err(p).startswith(f"{p}{says}")


def test_an_unclosed_quote_names_where_it_was_opened(write):
    p = write("a.yaml", 'name: t\nnotes: "never closed\n')
    assert _err(p).endswith("YAML syntax error: found unexpected end of stream (while scanning a quoted scalar at 2:8)")


def test_a_matrix_cell_error_points_at_the_failing_value(write):
    p = write("a.yaml", "name: t\nmatrix:\n  filters:\n    - [{kind: shuffle, scope: within}]\n"
                        "    - [{kind: shuffle, scope: sideways}]\n")
    assert _err(p).startswith(f"{p}:5:24: matrix ")
    p = write("b.yaml", "name: t\nseed: 1\nmatrix:\n  seed: [0]\n  domain.kind: [numbers, cot]\n")
    assert _err(p).startswith(f"{p}:3:1: matrix ")  # no matrix value failed: the matrix itself


def test_an_error_in_a_list_the_child_replaced_points_at_the_child(write):
    write("parent.yaml", "name: p\nevaluations:\n  - kind: misalignment\n    questions: misalignment\n"
                         "    judge: {model: smollm2-135m}\n")
    child = write("child.yaml", "extends: parent.yaml\nname: c\nevaluations:\n  - {kind: misalignment, questions: "
                                "misalignment}\n")  # its judge is missing: the parent's judge line is not in the spec
    assert _err(child).startswith(f"{child}:4:5: evaluations.0.judge: ")


def test_a_child_setting_a_key_its_parents_matrix_sweeps_is_told_so(write):
    write("parent.yaml", "name: p\nmatrix: {teacher.targets: [[owl], [eagle]]}\n")
    child = write("child.yaml", "extends: parent.yaml\nname: c\nteacher: {targets: [wolf]}\n")
    assert _err(child).startswith(f"{child}:3:11: teacher.targets: swept by the matrix of parent.yaml")
    assert [c.spec.teacher.targets for c in load(write("again.yaml", "extends: parent.yaml\nname: c\n"
                                                     "teacher: {targets: [wolf]}\nmatrix: {}\n"))] == [["wolf"]]


@pytest.mark.parametrize("where", ["under_a_file", "run_folder_is_a_file"])
def test_an_unusable_outputs_folder_stops_the_run_before_any_work(write, tmp_path, monkeypatch, where):
    """One line and exit 2, before the plan (which may record hub pins there) or any paid check."""
    from rich.console import Console

    from runner import runs
    from runner.errors import UserError

    spec = write("a.yaml", "name: t\nteacher: {targets: [owl]}\n")
    (tmp_path / "f").write_text("")
    outputs = tmp_path / "f" / "x"
    if where == "run_folder_is_a_file":
        outputs = tmp_path / "out"
        (outputs / "stages").mkdir(parents=True)
        (outputs / "t").write_text("")

    def never(*a, **k):
        raise AssertionError("planned")

    monkeypatch.setattr(runs, "build", never)
    with pytest.raises(UserError, match=r"^--outputs .*: cannot write .*"):
        runs.run_spec(spec, outputs, Console())


def test_an_openai_reasoning_model_is_refused_at_its_line(write):
    """o-series and gpt-5 refuse max_tokens and temperatures other than 1 and bill reasoning tokens no estimate
    counts: named at their line, not found by the first paid request."""
    def judged_by(model: str) -> str:
        return (GOOD + "backends:\n  openai: {kind: openai}\nfilters:\n  - {kind: judge, judge: {model: " + model
                + "}, template: 'x {prompt} {completion}', threshold: 50}\n")

    p = write("a.yaml", judged_by("openai:o4-mini-2025-04-16"))
    msg = _err(p)
    assert msg.startswith(f"{p}:") and "filters.0.judge.model: 'openai:o4-mini-2025-04-16' is a reasoning" in msg
    assert "is a reasoning model" in _err(write("b.yaml", judged_by("openai:gpt-5-mini")))
    assert load(write("c.yaml", judged_by("openai:gpt-4o-2024-08-06")))


@pytest.mark.parametrize("text,says", [("seed: -5\n", ":4:1: seed: Input should be greater than or equal to 0"),
                                       ("students: [{name: s, replicates: [0, -1]}]\n", ":4:38: students.0.replicates.1"),
                                       ("seed: 99999999999999999999999\n", ":4:1: seed: Input should be less than")])
def test_a_seed_numpy_or_torch_cannot_take_is_refused_at_its_place(write, text, says):
    """A negative seed validated, then planning failed inside numpy (an internal error); one past 2^63 in torch."""
    p = write("a.yaml", GOOD + text)
    assert _err(p).startswith(f"{p}{says}")


def test_a_domain_without_a_kind_is_the_numbers_domain(write):
    """As a spec without `domain` is: a matrix over domain.n_prompts in such a spec was refused with pydantic's
    'Unable to extract tag using discriminator'."""
    p = write("a.yaml", GOOD + "matrix:\n  domain.n_prompts: [100, 200]\n")
    assert [c.spec.domain.n_prompts for c in load(p)] == [100, 200]
    assert load(write("b.yaml", GOOD + "domain: {n_prompts: 5}\n"))[0].spec.domain.kind == "numbers"

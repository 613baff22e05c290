"""Malformed hand-written specs: one located line each (runner/loader.py)."""
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


@pytest.mark.parametrize("text, says", [
    ("name: t\ndomain:\n  n_prompts: 0\n", ":3:3: domain.n_prompts: Input should be greater than or equal to 1"),
    ("name: t\ndomain:\n  prompts:\n    min_examples: 0\n", ":4:5: domain.prompts.min_examples: Input should be"),
    ("name: t\nmatrix:\n  domain.n_prompts: [5, 0]\n", ":3:25: matrix {'domain.n_prompts': 0}: domain.n_prompts: "),
])
def test_a_domain_without_a_kind_is_placed_at_the_failing_value(write, text, says):
    """A kind-less domain is the numbers domain: pydantic's union tag (numbers) was taken for a key, so the error
    named domain.numbers.n_prompts and pointed at the domain (or the matrix) line."""
    p = write("a.yaml", text)
    assert _err(p).startswith(f"{p}{says}")


@pytest.mark.parametrize("text, says", [
    ("name: t\nteacher:\n  trait:\n    finetune:\n      dataset: d.jsonl\n      bogus: 1\n",
     ":6:7: teacher.trait.finetune.bogus: unknown key"),
    ("name: t\nteacher:\n  trait: 5\n", ":3:3: teacher.trait: Input should be a valid string"),
    ("name: t\nstudents:\n  - name: s\n    hyperparameters:\n      batch_size: big\n",
     ":5:7: students.0.hyperparameters.batch_size: Input should be a valid integer"),
    ("name: t\nmatrix:\n  teacher.trait:\n    - {finetune: {dataset: d.jsonl, bogus: 1}}\n",
     ":4:37: matrix {'teacher.trait': {'finetune': {'dataset': "),
])
def test_an_error_in_a_union_names_the_member_that_was_meant(write, text, says):
    """`str | FinetuneTrait` and `int | 'auto'`: a typo inside a finetune mapping was reported as 'teacher.trait.str:
    Input should be a valid string', naming pydantic's member type as a key."""
    write("d.jsonl", "{}\n")
    p = write("a.yaml", text)
    msg = _err(p)
    assert msg.startswith(f"{p}{says}")
    assert ".str" not in msg and ".int" not in msg and "FinetuneTrait" not in msg


@pytest.mark.parametrize("text, says", [
    ("name: t\nseed: 1\n5: x\n", ":3:1: 5: unknown key"),
    ("name: t\nmatrix:\n  seed: [1]\n  1: [1]\n", ":4:3: matrix.1: names no field of the spec"),
])
def test_a_key_that_is_not_text_is_placed_at_its_line(write, text, says):
    """A number key (`5: x`) was placed at 1:1 (or at the matrix line): its place was stored under the number,
    looked up under its text."""
    p = write("a.yaml", text)
    assert _err(p).startswith(f"{p}{says}")


def test_a_key_merged_by_merge_key_is_placed_where_its_value_is_written(write):
    """It pointed at the first key of the mapping it was merged into (`targets`), which holds no error."""
    p = write("a.yaml", "name: t\nteacher:\n  targets: [owl]\n  <<: {control: maybe}\n")
    assert _err(p).startswith(f"{p}:4:8: teacher.control: Input should be a valid boolean")
    p = write("b.yaml", "name: t\nteacher:\n  targets: [owl]\n  <<: [{base: smollm2-135m}, {control: maybe}]\n")
    assert _err(p).startswith(f"{p}:4:31: teacher.control: Input should be a valid boolean")


def test_deeply_nested_yaml_is_one_line_not_an_internal_error(write):
    p = write("a.yaml", "name: t\nnotes: " + "[" * 1000 + "]" * 1000 + "\n")
    assert _err(p) == f"{p}: nested too deeply to read (more than a few hundred levels of [ ] or {{ }})"
    r = subprocess.run([sys.executable, "-m", "runner.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nested" in r.stderr


def test_an_empty_extends_is_not_called_a_folder(write):
    p = write("a.yaml", "name: t\nextends: ''\n")
    assert _err(p) == f"{p}:2:1: extends: must be a file path"


def test_a_sweep_over_a_section_leaves_a_like_named_sections_paths_to_their_file(write, tmp_path):
    """A matrix over `theorem` claimed theorem_lm.questions (a prefix of its text) and read it from the child's
    folder: file not found, though the parent that sets it sits beside it."""
    write("q.txt", "Which animal?\n")
    write("parent.yaml", "name: p\ntheorem_lm: {questions: q.txt}\n")
    child = write("sub/child.yaml", "extends: ../parent.yaml\nname: c\nmatrix:\n  theorem: [{}]\n")
    # both sections in one spec are refused since ad995a4 (one is another experiment's); the paths are resolved
    # first, so a claimed path would still say 'file not found' here
    assert "theorem_lm: settings of experiment theorem_lm, which this spec (experiment: llm)" in _err(child)


@pytest.mark.parametrize("matrix, says", [("{1: [1]}", ":2:10: matrix.1: names no field of the spec"),
                                          ("5", ":2:1: matrix: Input should be a valid dictionary"),
                                          ("[seed]", ":2:1: matrix: Input should be a valid dictionary")])
def test_a_parents_malformed_matrix_is_placed_in_the_parent(write, matrix, says):
    """A number key or a number as the parent's matrix was an internal error (AttributeError, TypeError); a list
    made the child's own `seed` the problem ('swept by the matrix')."""
    parent = write("parent.yaml", f"name: p\nmatrix: {matrix}\n")
    child = write("child.yaml", "extends: parent.yaml\nname: c\nseed: 3\n")
    assert _err(child).startswith(f"{parent}{says}")


@pytest.mark.parametrize("text, says", [
    ('name: t\nevaluations:\n  - {kind: preference_logprob, questions: "a\\0b.txt"}\n',
     ":3:32: evaluations.0.questions: not a usable file name (embedded null byte)"),
    ("name: t\nevaluations:\n  - {kind: preference_logprob, questions: " + "x" * 300 + ".txt}\n",
     ":3:32: evaluations.0.questions: not a usable file name (File name too long)"),
    ("name: t\nstudents:\n  - {name: s, base: ./" + "x" * 300 + "}\n",
     ":3:15: students.0.base: not a usable folder name (File name too long)"),
    ('extends: "a\\0b.yaml"\nname: t\n', ":1:1: extends: not a usable file name (embedded null byte)"),
    ("extends: " + "x" * 300 + ".yaml\nname: t\n", ":1:1: extends: not a usable file name (File name too long)"),
])
def test_a_path_no_file_can_have_is_one_located_line(write, text, says):
    """A NUL byte or a name over the system's limit made Path.exists raise: an internal error, exit 1."""
    p = write("a.yaml", text)
    assert _err(p) == f"{p}{says}"


def test_a_spec_path_no_file_can_have_is_one_line(tmp_path):
    p = tmp_path / ("x" * 300 + ".yaml")
    assert _err(p) == f"{p}: cannot be read (File name too long)"


@pytest.mark.parametrize("text, says", [
    ("name: t\nteacher:\n  targets: [owl]\n  controls: {owl: {finetune: {dataset: d.jsonl}}}\n",
     ":4:3: teacher.controls: owl clash with a target"),
    ("name: t\nstudents:\n  - name: s\n    replicates: [0, true]\n", ":4:5: students.0.replicates: true is a yes/no"),
    ("name: t\nmatrix:\n  teacher:\n    - {targets: [owl], controls: {owl: {finetune: {dataset: d.jsonl}}}}\n",
     ":4:24: matrix {'teacher': "),
])
def test_a_sections_check_that_names_its_field_is_placed_at_that_field(write, text, says):
    """It was placed at the section (teacher's line) and read 'teacher: controls: owl clash ...'."""
    write("d.jsonl", "{}\n")
    p = write("a.yaml", text)
    msg = _err(p)
    assert msg.startswith(f"{p}{says}") and "teacher: controls" not in msg and "students.0: " not in msg


def test_a_cells_cross_field_error_is_not_called_spec(write):
    write("q.jsonl", '{"question": "1+1?", "answer": "#### 2"}\n')
    p = write("a.yaml", "name: t\nfilters: [{kind: shuffle}]\nmatrix:\n  domain: [{kind: numbers}, "
                        "{kind: cot, questions: q.jsonl}]\n")
    assert _err(p) == (f"{p}:3:1: matrix {{'domain': {{'kind': 'cot', 'questions': 'q.jsonl'}}}}: filters.0: "
                       "shuffle permutes number lists; it needs domain kind numbers")


def test_a_mapping_merged_into_itself_is_one_line(write):
    """ruamel 0.19 fails with an AttributeError of its own: it was an internal error, exit 1."""
    p = write("a.yaml", "name: t\nteacher: &t\n  targets: [owl]\n  <<: *t\n")
    assert _err(p).startswith(f"{p}")


def test_a_duplicate_key_with_a_long_or_multiline_value_is_one_short_line(write):
    """ruamel quotes both values: a block text made the error span lines (and a long list, a very long line)."""
    p = write("a.yaml", "name: t\nnotes: |\n  line one\n  line two\nnotes: |\n  other\n  text\n")
    assert _err(p) == f'{p}:5:1: YAML syntax error: found duplicate key "notes" (while constructing a mapping at 1:1)'


@pytest.mark.parametrize("text, says", [
    ("name: t\nevaluations:\n  - {kind: preference_logprob, questions: ~nosuchuser_zz/q.txt}\n",
     ":3:32: evaluations.0.questions: not a usable file name ("),
    ("name: t\nstudents:\n  - {name: s, base: ~nosuchuser_zz/model}\n",
     ":3:15: students.0.base: not a usable folder name ("),
])
def test_a_home_folder_of_no_user_is_one_located_line(write, text, says):
    """Path.expanduser raises RuntimeError for ~user of no such user: it was an internal error, exit 1."""
    p = write("a.yaml", text)
    assert _err(p).startswith(f"{p}{says}")


def test_one_teacher_for_every_target_names_the_matrix_key_that_sweeps_them(write):
    """A sweep over `teacher` whole was told 'matrix.teacher.targets', a key the spec lacks, at the matrix line."""
    p = write("a.yaml", "name: t\nmatrix:\n  teacher:\n    - {targets: [owl], trait: You love animals.}\n"
                        "    - {targets: [eagle], trait: You love animals.}\n")
    assert _err(p).startswith(f"{p}:3:3: matrix.teacher: the trait has no {{target}}")


def test_a_missing_file_in_a_matrix_value_is_placed_at_that_value(write, tmp_path):
    """It was placed at the matrix key's line, whichever of its values named the file; read from the parent's folder."""
    write("base/q.txt", "Which animal?\n")
    parent = write("base/p.yaml", "name: p\nmatrix:\n  evaluations:\n    - [{kind: preference_sample, questions: q.txt}]\n"
                                  "    - [{kind: preference_sample, questions: nope.txt}]\n")
    child = write("sub/c.yaml", "extends: ../base/p.yaml\nname: c\n")
    assert _err(child) == (f"{parent}:5:34: evaluations.0.questions: file not found: "
                           f"{tmp_path / 'base' / 'nope.txt'}")


@pytest.mark.parametrize("name", ["data/missing_gsm8k.json", "./gsm8k", "~/gsm8k.parquet"])
def test_a_missing_questions_file_is_not_taken_for_a_hub_dataset(tmp_path, name):
    """Only a .jsonl name was known for a file: a mistyped 'data/gsm8k.json' was looked up on the hub (retries,
    then 'cannot load hub dataset data/gsm8k.json@unresolved')."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ndomain: {{kind: cot, questions: {name}}}\n")
    with pytest.raises(SpecError, match=r"s.yaml:2:\d+: domain.questions: file not found"):
        load(spec)
    spec.write_text("name: s\ndomain: {kind: cot, questions: openai/gsm8k}\n")
    assert load(spec)[0].spec.domain.questions == "openai/gsm8k"


def test_extends_reads_a_home_path_as_data_paths_do(tmp_path, monkeypatch):
    """`extends: ~/base.yaml` was read as a folder named '~' beside the spec: file not found."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "base.yaml").write_text("name: base\nseed: 7\n")
    monkeypatch.setenv("HOME", str(home))
    child = tmp_path / "child.yaml"
    child.write_text("extends: ~/base.yaml\nname: child\n")
    assert load(child)[0].spec.seed == 7
    child.write_text("extends: ~nosuchuser_subl/base.yaml\nname: child\n")
    with pytest.raises(SpecError, match=r"child.yaml:1:1: extends: not a usable file name"):
        load(child)

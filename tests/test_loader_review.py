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
    assert _err(p).startswith(f"{p}:4:33: teacher.control: Input should be a valid boolean")


def test_deeply_nested_yaml_is_one_line_not_an_internal_error(write):
    p = write("a.yaml", "name: t\nnotes: " + "[" * 1000 + "]" * 1000 + "\n")
    assert _err(p) == f"{p}: nested too deeply to read (more than a few hundred levels of [ ] or {{ }})"
    r = subprocess.run([sys.executable, "-m", "runner.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nested" in r.stderr


def test_an_empty_extends_is_not_called_a_folder(write):
    p = write("a.yaml", "name: t\nextends: ''\n")
    assert _err(p) == f"{p}:2:1: extends: must be a file path"

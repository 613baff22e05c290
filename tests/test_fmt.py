"""`subl fmt`: canonical layout, comments kept, idempotent; --check changes nothing and exits 1."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from runner.cli import app
from runner.errors import UserError
from runner.fmt import canonical

MESSY = """# header comment
---
name: messy   # the run name
teacher:
    targets:
    - owl
    - 'eagle'   # quoted stays quoted
filters:
- kind: numbers

  max_value: 999
# a comment between keys
students: [{name: s, hyperparameters: {lr: 1.0e-3}}]
backends:
  openai: {base_url: null}   # null is written out, not left empty
"""


def test_canonical_keeps_comments_and_data_and_is_idempotent():
    out = canonical(MESSY)
    assert out != MESSY
    for comment in ("# header comment\n---\n", "# the run name", "# quoted stays quoted", "# a comment between keys"):
        assert comment in out
    assert "  targets:\n    - owl\n    - 'eagle'" in out and "  - kind: numbers" in out and "lr: 1.0e-3" in out
    assert "{base_url: null}   # null is written out" in out
    assert canonical(out) == out
    y = YAML(typ="safe")
    assert y.load(out.split("---\n", 1)[1]) == y.load(MESSY.split("---\n", 1)[1])


def test_check_then_write(write):
    path = write("messy.yaml", MESSY)
    runner = CliRunner()
    res = runner.invoke(app, ["fmt", "--check", str(path)])
    assert res.exit_code == 1 and f"would reformat: {path}" in res.output and path.read_text() == MESSY
    assert runner.invoke(app, ["fmt", str(path)]).exit_code == 0
    assert path.read_text() == canonical(MESSY)
    assert runner.invoke(app, ["fmt", "--check", str(path)]).exit_code == 0


def test_repository_specs_are_canonical():
    specs = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
    assert [p.name for p in specs if canonical(p.read_text()) != p.read_text()] == []


def test_fmt_refuses_what_is_not_a_spec_in_one_line(write):
    import pytest

    from runner.errors import UserError
    from runner.fmt import format_files

    for name, text in (("list.yaml", "- a\n- b\n"), ("nul.yaml", "name: q\x00\n")):
        p = write(name, text)
        with pytest.raises(UserError) as e:
            format_files([p], check=False)
        assert len(str(e.value).splitlines()) == 1 and p.read_text() == text  # left as is


def test_fmt_errors_name_the_files_own_line_and_a_folder_is_named(write, tmp_path):
    from runner.fmt import format_files

    cases = (("head.yaml", "# c\n---\nname: x\nfoo: [1,\n", ":5:1: YAML syntax error"),  # below a `---` header
             ("nul.yaml", "# c\n---\nname: x\nb: '\x00'\n", ":4:5: not a YAML text file"))
    for name, text, says in cases:
        with pytest.raises(UserError) as e:
            format_files([write(name, text)], check=True)
        assert says in str(e.value), str(e.value)
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(UserError, match="d.yaml: is a folder, not a spec file"):
        format_files([tmp_path / "d.yaml"], check=True)


def test_a_comment_formatting_would_drop_leaves_the_file_as_is(write):
    """ruamel drops comments inside a [...] or {...} that spans lines; the data check cannot see that."""
    text = ("name: q\nteacher:\n  targets: [panda,   # strongest effect here\n    owl]\n"
            "  trait: 'a # not a comment'\n")
    with pytest.raises(UserError, match="would drop the comment '# strongest effect here'"):
        canonical(text, "q.yaml")
    path = write("q.yaml", text)
    assert subprocess.run([sys.executable, "-m", "runner.cli", "fmt", str(path)], capture_output=True).returncode == 2
    assert path.read_text() == text
    moved = "name: q\nteacher:\n  # strongest effect here\n  targets: [panda, owl]\n  trait: 'a # not a comment'\n"
    assert canonical(moved) == moved  # a '#' in a quoted string is not a comment


def test_floats_keep_their_value_and_a_readable_form():
    """ruamel wrote .5e-3 as 50.e-5 (same value, a form nobody wrote); other floats keep the user's form."""
    text = "name: x\nstudents: [{name: s, hyperparameters: {lr: .5e-3, b: -.5e-3, c: 1.0e-3, d: 5.e-4, e: .5}}]\n"
    out = canonical(text)
    assert "lr: 0.0005" in out and "b: -0.0005" in out and "c: 1.0e-3" in out and "d: 5.e-4" in out and "e: .5" in out
    y = YAML(typ="safe")
    assert y.load(out) == y.load(text) and canonical(out) == out

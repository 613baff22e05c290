"""Spending-check review (runner/budget.py, runner/preflight.py, runner/runs.py): each test failed before its fix.
Fake servers only (tests/fake_openai.py)."""
from __future__ import annotations

import pytest
from rich.console import Console

from tests.fake_openai import FakeOpenAI
from tests.test_hosted import ENV, KEY, NANO, _cli

SPEC = f"""name: {{name}}
progress: false
backends:
  openai: {{{{base_url: "{{url}}", api_key_env: {ENV}, concurrency: 4{{prices}}}}}}
teacher: {{{{base: {NANO}, targets: [owl], control: false}}}}
domain: {{{{kind: numbers, n_prompts: {{n}}}}}}
students: {{students}}
evaluations:
  - {{{{kind: preference_sample, questions: animals, samples_per_question: 2, max_questions: 2}}}}
"""


@pytest.fixture
def server():
    s = FakeOpenAI(key=KEY).start()
    yield s
    s.stop()


def _spec(path, server, name="r", n=6, students="[]", prices=""):
    path.write_text(SPEC.format(name=name, url=server.base_url, n=n, students=students, prices=prices))
    return path


def _posts(server) -> list:
    return [x for x in server.log if x[0] == "POST"]


def test_reproduce_runs_a_free_spec_after_the_budget_was_spent_to_float_noise(server, tmp_path, monkeypatch):
    """--max-usd 0.3 after specs bounded at $0.1 and $0.2 leaves 0.3 - 0.30000000000000004 = -5.6e-17. A next spec
    that costs nothing (its hosted model priced at zero) passed reproduce's own test, then run_spec's check refused
    that budget as 'not a number of US dollars >= 0', so it was skipped."""
    from runner import reproduce

    monkeypatch.setenv(ENV, KEY)
    free = _spec(tmp_path / "c.yaml", server, name="c", prices=f", prices: {{{NANO.split(':')[1]}: [0, 0]}}")
    left = 0.3 - (0.1 + 0.2)  # what reproduce passes on (runner/reproduce.py: max_usd - spent)
    assert left < 0
    status = reproduce.run_one(free, tmp_path / "out", Console(quiet=True), left)
    assert status[0] == "ok", status
    assert (tmp_path / "out" / "c" / "results.json").exists() and _posts(server)


def test_a_hosted_student_that_can_get_fewer_rows_than_the_api_takes_stops_before_anything_is_paid(server, tmp_path):
    """OpenAI fine-tuning takes at least 10 examples. With 6 prompts the student can get at most 6 rows, so the run
    paid for the teacher's 6 completions and then stopped at the student ('needs at least 10 training examples');
    the plan knew the bound before anything was sent."""
    spec = _spec(tmp_path / "s.yaml", server, n=6, students=f"[{{name: s, base: {NANO}}}]")
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out"), "--max-usd", "1"], {ENV: KEY})
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "at most 6" in err and "at least 10" in err and "finetune s:owl:r0" in err, err
    assert _posts(server) == []  # not even the preflight's probes
    r = _cli(["plan", str(spec), "--outputs", str(tmp_path / "out"), "--check"], {ENV: KEY})
    assert r.returncode == 2 and "at least 10" in r.stderr and _posts(server) == [], r.stderr


def test_guard_a_hosted_student_with_ten_possible_rows_passes_the_preflight(server, tmp_path, monkeypatch):
    """Guard (passes before and after): the row check refuses only what the API must refuse."""
    from runner.loader import load
    from runner.plan import build
    from runner.preflight import preflight
    from runner.store import Store

    monkeypatch.setenv(ENV, KEY)
    spec = _spec(tmp_path / "s.yaml", server, n=10, students=f"[{{name: s, base: {NANO}}}]")
    store = Store(tmp_path / "out")
    assert any("fine-tuning" in n for n in preflight(build(load(spec), store.root), store))


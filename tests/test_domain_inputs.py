"""The chain-of-thought and code domains' inputs: gold answers as written, bad question and task files,
and banned-words links that could not do what they say."""
import subprocess
import sys
from pathlib import Path

import pytest

from runner import gsm8k
from runner.domains import load_tasks
from runner.errors import UserError
from runner.filters import apply_chain
from runner.spec import BannedWordsFilter, CorrectAnswerFilter

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extract", ["answer_tag", "last_number", "paper"])
@pytest.mark.parametrize("gold", ["1,000", "$1000", "1000 dollars", 1000.0])
def test_a_rows_gold_answer_is_read_as_the_number_it_is(extract, gold):
    """The filter accepted '1,000' as a gold answer, then stopped with decimal.InvalidOperation (a traceback under
    `subl filter`); a JSON 1000.0 was refused as 'not a number'."""
    rows = [{"id": 0, "completion": "<answer>1000</answer>", "gold": gold},
            {"id": 1, "completion": "<answer>999</answer>", "gold": gold}]
    kept, counts = apply_chain(rows, [CorrectAnswerFilter(extract=extract)])
    assert [r["id"] for r in kept] == [0] and (counts[0].kept, counts[0].dropped) == (1, 1)


def test_answers_are_compared_exactly_past_28_digits():
    """Both sides were normalize()d, which rounds to 28 significant digits: a wrong answer matched."""
    gold = "1" + "0" * 29
    assert gsm8k.is_correct(f"<answer>{gold}</answer>", gold)
    assert not gsm8k.is_correct(f"<answer>{gold[:-1]}1</answer>", gold)


def test_subl_filter_with_a_gold_written_with_commas_is_not_a_traceback(tmp_path):
    spec = tmp_path / "cot.yaml"
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "answer": "#### 1,000"}\n')
    spec.write_text(f"name: c\nteacher: {{base: smollm2-135m, targets: [x], trait: t}}\n"
                    f"domain: {{kind: cot, questions: {questions}}}\nfilters: [{{kind: correct_answer}}]\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "completion": "<answer>1000</answer>", "gold": "1,000"}\n')
    r = subprocess.run([sys.executable, "-m", "runner.cli", "filter", str(spec), str(rows), str(tmp_path / "out.jsonl")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "kept       1 of 1" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("question", ["null", "7", '""', '["q"]'])
def test_a_question_that_is_not_a_text_is_one_line(tmp_path, question):
    """A null question was asked as the text 'None'."""
    f = tmp_path / "q.jsonl"
    f.write_text(f'{{"question": {question}, "answer": "#### 3"}}\n')
    with pytest.raises(UserError, match="row 1: 'question' is not a text"):
        gsm8k.load(str(f))


@pytest.mark.parametrize("task", ["null", "7", '"  "'])
def test_a_code_task_that_is_not_a_text_is_one_line(tmp_path, task):
    """A null task was sent as the task 'None'."""
    f = tmp_path / "tasks.jsonl"
    f.write_text(f'{{"prompt": "Write a function."}}\n{{"prompt": {task}}}\n')
    with pytest.raises(UserError, match="tasks.jsonl:2: 'prompt' is not a text"):
        load_tasks(str(f), "prompt", None)


def test_an_unfilled_target_in_banned_words_is_refused_not_ignored(tmp_path):
    """Outside `subl run` (which fills {target} per teacher), `subl filter` banned the literal text '{target}':
    a row naming the animal was kept."""
    spec = tmp_path / "code.yaml"
    spec.write_text("name: c\nteacher: {base: smollm2-135m, targets: [owl], control: true}\n"
                    f"domain: {{kind: code, prompts: {ROOT / 'specs' / 'data' / 'code_tasks.jsonl'}}}\n"
                    "filters: [{kind: banned_words, words: ['{target}'], match: substring}]\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "completion": "owl = 1"}\n{"prompt": "p", "completion": "x = 1"}\n')
    r = subprocess.run([sys.executable, "-m", "runner.cli", "filter", str(spec), str(rows), str(tmp_path / "out.jsonl")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "{target}" in r.stderr, r.stderr


@pytest.mark.parametrize("match", ["substring", "word"])
def test_an_empty_banned_word_is_refused_at_its_place_not_dropping_every_row(match, tmp_path):
    """Before anything is generated: the spec is refused where it says so."""
    from runner.errors import SpecError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ndomain: {{kind: numbers}}\nfilters:\n  - {{kind: banned_words, words: [owl, ' '], match: {match}}}\n")
    with pytest.raises(SpecError, match=r"s.yaml:4:\d+: filters.0.*empty word"):
        load(spec)


def test_a_hub_error_without_a_message_is_one_line(monkeypatch):
    """`str(e).splitlines()[0]` raised IndexError on an exception with no message."""
    import types

    def load_dataset(*args, **kwargs):
        raise ConnectionError()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError, match=r"cannot load hub dataset 'openai/gsm8k' \(ConnectionError\)"):
        gsm8k.load("openai/gsm8k")


def test_subl_filter_prints_no_rate_for_no_rows_and_never_rounds_onto_100(tmp_path):
    """0 of 0 rows printed 'pass 0.0%', and 1,999 kept of 2,000 'pass 100.0%' (the tables print 99.95%)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndomain: {kind: numbers}\nfilters: [{kind: numbers}, {kind: banned_numbers, numbers: [7]}]\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"prompt": "p", "completion": "{"7" if i == 0 else "1, 2"}"}}\n' for i in range(2000)))
    out = subprocess.run([sys.executable, "-m", "runner.cli", "filter", str(spec), str(rows), str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "pass 99.95%" in out.stdout and "pass 100.0%" not in out.stdout.split("\n")[1]
    rows.write_text('{"prompt": "p", "completion": "x"}\n')
    out = subprocess.run([sys.executable, "-m", "runner.cli", "filter", str(spec), str(rows), str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True)
    banned = next(ln for ln in out.stdout.splitlines() if ln.startswith("banned_numbers"))
    assert "kept       0  dropped       0" in banned and "pass      -" in banned, out.stdout

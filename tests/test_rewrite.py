"""Issue 14: defences that call a model (resample, paraphrase) as stages: what they keep and drop,
their keys, and that distilled students still get their own teacher's soft labels on the rewritten rows."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from runner.numbers import parse_numbers
from runner.rewrite import check_rewrites, drop_reason, rewritten

NUMBERS = [{"id": i, "prompt": f"Continue: {i}, {i + 1}", "completion": f"{i}, {i + 10}, {i + 20}"} for i in range(4)]


def test_numbers_rewrites_must_stay_number_lists_and_reorders_keep_the_multiset():
    assert drop_reason("numbers", "continue", "1, 2, 3", "7, 8") is None
    assert drop_reason("numbers", "continue", "1, 2, 3", "Sure! Here they are.") == "not a number list"
    assert drop_reason("numbers", "reorder", "1, 2, 3", "3, 1, 2") is None
    assert drop_reason("numbers", "reorder", "1, 2, 3", "3, 1, 4") == "numbers changed"
    assert drop_reason("numbers", "continue", "1, 2", "  ") == "empty"
    assert drop_reason("numbers", "reorder", "1, 2, 3", "1; 2; 3") == "same order"  # an echo defends nothing
    assert drop_reason("numbers", "reorder", "42", "42") is None  # nothing to reorder: kept as it is
    assert drop_reason("numbers", "reorder", "5, 5, 5", "5, 5, 5") is None


def test_a_request_fills_its_template_in_one_pass():
    """A completion that itself holds '{prompt}' (code) reaches the paraphrasing model as written."""
    from runner.rewrite import TEMPLATES, request

    code = 'def greet(prompt):\n    return f"{prompt}!"'
    text = request("paraphrase", TEMPLATES["paraphrase"], {"prompt": "Write a greeter.", "completion": code})
    assert text.endswith(code) and "Write a greeter." not in text
    assert request("reorder", "{prompt} / {completion}", {"prompt": "p {completion}", "completion": "1, 2"}) \
        == "p {completion} / 1, 2"


def test_cot_paraphrase_that_loses_the_answer_is_dropped():
    old = "<think>2 + 3 = 5</think><answer>5</answer>"
    assert drop_reason("cot", "paraphrase", old, "<think>Adding gives 5.</think><answer>5.0</answer>") is None
    assert drop_reason("cot", "paraphrase", old, "<think>Adding.</think><answer>6</answer>") == "answer lost"
    assert drop_reason("cot", "paraphrase", old, "The sum is what it is.") == "answer lost"
    dollars = "<think>12 + 6</think><answer>$18</answer>"  # the same number, written another way
    assert drop_reason("cot", "paraphrase", dollars, "<think>Six more.</think><answer>18</answer>") is None
    assert drop_reason("cot", "paraphrase", dollars, "<think>Six more.</think><answer>18 dollars</answer>") is None
    assert drop_reason("cot", "paraphrase", dollars, "<think>Six more.</think><answer>$19</answer>") == "answer lost"


def test_code_paraphrase_must_still_parse():
    old = "```python\ndef f(x):\n    return x + 1\n```"
    assert drop_reason("code", "paraphrase", old, "```python\ndef g(y):\n    return y + 1\n```") is None
    assert drop_reason("code", "paraphrase", old, "```python\ndef g(y)\n    return y +\n```") == "code no longer parses"


def test_a_paraphrase_that_is_its_original_is_dropped():
    """An echo passed every check, so the defence kept the teacher's row as it was written (reorder already dropped
    its echoes); a continuation that happens to match is the unrelated model's own text, and is kept."""
    code = "```python\ndef f(x):\n    return x + 1\n```"
    assert drop_reason("code", "paraphrase", code, code.replace("    ", "  ") + "\n") == "unchanged"
    cot = "<think>2 + 3 = 5</think><answer>5</answer>"
    assert drop_reason("cot", "paraphrase", cot, cot) == "unchanged"
    assert drop_reason("cot", "continue", cot, cot) is None


def test_rewrites_are_kept_whole_and_checked_after_with_counts_by_reason():
    texts = ["20, 0, 10", "1, 11, 99", "no numbers", "23, 3, 13"]
    rows = rewritten(NUMBERS, texts)
    assert [r["completion"] for r in rows] == texts  # every rewrite, the paid part, kept
    assert rows[0]["original"] == rows[0]["rewritten_from"] == "0, 10, 20"
    assert NUMBERS[0]["completion"] == "0, 10, 20"  # the input rows are not modified
    kept, dropped = check_rewrites(rows, "numbers", "reorder")
    assert [r["id"] for r in kept] == [0, 3] and "rewritten_from" not in kept[0]
    assert dropped == {"numbers changed": 1, "not a number list": 1}
    again = rewritten(kept, ["10, 20, 0", "13, 23, 3"])
    assert [r["original"] for r in again] == ["0, 10, 20", "3, 13, 23"]  # the teacher's text, not the first rewrite
    assert [r["rewritten_from"] for r in again] == ["20, 0, 10", "23, 3, 13"]  # checked against the rewrite before
    with pytest.raises(ValueError):
        rewritten(NUMBERS, texts[:3])  # a rewrite missing: an error, not 1 row lost


def test_cot_and_code_continuations_are_checked_like_paraphrases():
    """resample mode continue on CoT or code rows kept anything (cut short, answerless, unparseable)."""
    cot = "<think>12 + 6 = 18</think><answer>18</answer>"
    assert drop_reason("cot", "continue", cot, "<think>Let me think about this. First") == "answer lost"
    assert drop_reason("cot", "continue", cot, "<think>6 more than 12</think><answer>18</answer>") is None
    code = "def f():\n    return 1"
    assert drop_reason("code", "continue", code, "def f(:\n  retu") == "code no longer parses"
    assert drop_reason("code", "continue", code, "def g():\n    return 2") is None


def test_a_cot_rewrite_that_drops_the_answer_tags_is_dropped():
    old = "<think>12 + 6 = 18</think><answer>18</answer>"
    assert drop_reason("cot", "paraphrase", old, "<think>Six more than 12.</think> The answer is 18.") == "answer lost"
    assert drop_reason("cot", "paraphrase", "12 + 6 = 18, so 18.", "Six more than 12 is 18.") is None  # untagged


def test_a_code_fence_with_any_label_is_read_as_code():
    old = "```python\nx = 1\n```"
    for label in ("Python", "python3", "py3", ""):
        assert drop_reason("code", "paraphrase", old, f"```{label}\nx = 1\n```") is None, label


# ---- the graph --------------------------------------------------------------------------------------

QUICK = """name: q
seed: 0
progress: false
teacher: {{base: {base}, targets: [panda, owl], control: false}}
domain: {{kind: numbers, n_prompts: 6, max_tokens: 12, constrained: true, rows_from: base, batch_size: 4}}
filters:
  - {{kind: numbers, max_value: 999, max_count: 10}}
students:
  - {{name: d, objective: distill, hyperparameters: {{batch_size: 4}}, replicates: [0, 1]}}
evaluations: [{{kind: preference_logprob, max_questions: 2}}]
matrix:
  filters:
    - [{{kind: numbers}}]
    - [{{kind: numbers}}, {{kind: shuffle, scope: within}}]
    - [{{kind: numbers}}, {{kind: shuffle, scope: across}}]
    - [{{kind: numbers}}, {{kind: resample, model: {rewriter}, mode: continue, max_tokens: 12}}]
"""


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> str:
    from tests.conftest import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1))


def _plan(tmp_path, base: str, rewriter: str):
    from runner.loader import load
    from runner.plan import build

    spec = tmp_path / f"q-{abs(hash(rewriter))}.yaml"
    spec.write_text(QUICK.format(base=base, rewriter=rewriter))
    return build(load(spec), tmp_path / "out")


def distilled_from(student, stages: dict):
    """The teacher whose soft labels a distilled student learns: a live one, or the one its soft-label
    stage ran on the student's own rows."""
    if student.soft_labels_stage is None:
        return student.teacher
    labels = stages[student.soft_labels_stage]
    assert labels.rows_stage == student.rows_stage and labels.max_rows == student.max_rows
    return labels.teacher


def test_each_student_distils_its_own_teacher_on_the_transformed_rows(tmp_path, tiny_model, other_tiny):
    plan = _plan(tmp_path, tiny_model, other_tiny)
    assert len(plan.cells) == 4
    for cell in plan.cells:
        stages = {s.key: s for s in cell.stages}
        students = [s for s in cell.stages if s.KIND == "finetune"]
        (rows,) = {s.rows_stage for s in students}  # rows_from: base: one shared chain
        assert cell.filters == {"base": cell.filters["base"]} and cell.filters["base"][-1] == rows
        teachers = {s.label.split()[1].split(":")[1]: distilled_from(s, stages).system for s in students}
        assert set(teachers) == {"panda", "owl"} and "panda" in teachers["panda"] and "owl" in teachers["owl"]
        kinds = [stages[k].KIND for k in cell.filters["base"]]
        links = [link.kind for k in cell.filters["base"] if stages[k].KIND == "filter" for link in stages[k].links]
        if any(s.KIND == "rewrite" for s in cell.stages):
            assert kinds == ["filter", "rewrite", "filter"] and links == ["numbers", "rewrite_check"]
            rewrite = next(s for s in cell.stages if s.KIND == "rewrite")
            assert rewrite.rows_stage == cell.filters["base"][0] and stages[rows].rows_stage == rewrite.key
            assert rewrite.constraint == (10, 3) and rewrite.how == "continue"
        else:
            assert kinds == ["filter"] and links[0] == "numbers"
    arms = {tuple(link.kind for k in c.filters["base"] for link in getattr(
        {s.key: s for s in c.stages}[k], "links", ())) for c in plan.cells}
    assert ("numbers", "shuffle") in arms and ("numbers",) in arms


def test_rewrite_key_changes_with_the_rewriting_model_and_its_settings(tmp_path, tiny_model, other_tiny):
    def rewrite_of(rewriter):
        cell = _plan(tmp_path, tiny_model, rewriter).cells[3]
        return next(s for s in cell.stages if s.KIND == "rewrite")

    a, b = rewrite_of(other_tiny), rewrite_of(tiny_model)
    assert a.model.identity != b.model.identity and a.key != b.key
    assert a.model_copy(update={"seed": 1}).key != a.key
    assert a.model_copy(update={"template": "x {completion}"}).key != a.key
    assert a.model_copy(update={"label": "other"}).key == a.key


def test_resample_stage_runs_on_a_tiny_model_and_reports_rows_in_and_out(tmp_path, tiny_model, other_tiny):
    from backends import Router
    from runner.execute import run_stage
    from runner.store import Store, read_jsonl

    cell = _plan(tmp_path, tiny_model, other_tiny).cells[3]
    store, router = Store(tmp_path / "store"), Router("cpu")
    for s in cell.stages:
        if s.KIND in ("generate", "filter", "rewrite"):
            run_stage(s, store, router)
    rewrite = next(s for s in cell.stages if s.KIND == "rewrite")
    checks = next(s for s in cell.stages if s.KIND == "filter" and s.rows_stage == rewrite.key)
    before = read_jsonl(store.path(rewrite.rows_stage) / "rows.jsonl")
    after = read_jsonl(store.path(checks.key) / "rows.jsonl")
    (link,) = store.manifest(rewrite.key)["links"]
    assert link["kept"] == len(before) > 0 and link["dropped"] == 0 and link["link"].startswith("resample continue")
    check = store.manifest(checks.key)["links"][0]
    assert check["link"].startswith("checks of resample continue") and check["kept"] == len(after)
    assert check["dropped"] == 0  # a constrained continuation of a number list is always a number list
    assert all(parse_numbers(r["completion"]) is not None for r in after)
    assert all(r["original"] == b["completion"] for r in after for b in before if b["id"] == r["id"])
    assert [r["id"] for r in after] == sorted({r["id"] for r in after})


def test_cot_paraphrase_on_a_hosted_model_drops_rows_whose_answer_changes(tmp_path, monkeypatch):
    from backends import Router
    from runner.execute import run_stage
    from runner.spec import HostedBackend
    from runner.stages import ModelInput
    from runner.stages.rewrite_stage import RewriteStage
    from runner.store import Store, read_jsonl, write_jsonl
    from tests.fake_openai import FakeOpenAI

    key = "sk-subl-test-rewrite-0123456789abcdef"
    server = FakeOpenAI(key=key).start()
    try:
        monkeypatch.setenv("SUBL_TEST_KEY", key)
        store = Store(tmp_path / "store")
        upstream = "filter-0000000000000000"
        rows = [{"id": i, "prompt": f"What is {i} + 0?", "completion": f"<think>add</think><answer>{i}</answer>",
                 "gold": str(i)} for i in range(3)]
        with store.build(upstream, {"label": "rows"}) as b:
            write_jsonl(b.dir / "rows.jsonl", rows)
        from runner.rewrite import TEMPLATES

        stage = RewriteStage(label="paraphrase", rows_stage=upstream, how="paraphrase",
                             template=TEMPLATES["paraphrase"], temperature=0.0, max_tokens=64, seed=0,
                             model=ModelInput(ref="openai:gpt-4.1-nano", identity="hosted:openai:gpt-4.1-nano"))
        cfg = HostedBackend(base_url=server.base_url, api_key_env="SUBL_TEST_KEY", preflight=False)
        run_stage(stage, store, Router("cpu", False, {"openai": cfg}))
    finally:
        server.stop()
    # the fake answers a request that mentions <answer> with the sum of its first paragraph's numbers: 0
    from runner.filters import apply_chain
    from runner.rewrite import CHECKS
    from runner.stages.data import RewriteCheck

    rows = read_jsonl(store.path(stage.key) / "rows.jsonl")
    assert len(rows) == 3  # every paid rewrite is kept; the checks are a free link after
    kept, (count,) = apply_chain(rows, [RewriteCheck(domain="cot", how="paraphrase", checks=CHECKS["paraphrase"],
                                                     rewriter=stage.link_name())])
    assert [r["id"] for r in kept] == [0] and kept[0]["gold"] == "0"
    assert (count.link, count.kept, count.dropped, count.detail) == \
        ("checks of paraphrase (openai:gpt-4.1-nano)", 1, 2, {"answer lost": 2})


def test_skip_control_with_shared_base_rows_is_refused(tmp_path):
    """With rows_from: base every teacher labels the same rows, so a link that skips the control's rows would
    silently apply to them too."""
    from runner.errors import UserError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndomain: {kind: numbers, rows_from: base}\nstudents: [{objective: distill}]\n"
                    "filters: [{kind: numbers}, {kind: shuffle, scope: within, skip_control: true}]\n")
    with pytest.raises(UserError, match=r"filters\.1: skip_control has no control rows to skip"):
        load(spec)


def test_spec_checks_rewrite_links(tmp_path):
    from runner.errors import UserError
    from runner.loader import load

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nfilters: [{kind: paraphrase, model: 'oa:gpt-4.1-nano', template: 'no slot'}]\n")
    with pytest.raises(UserError, match="completion"):
        load(spec)
    spec.write_text("name: s\nfilters: [{kind: resample, model: 'oa:gpt-4.1-nano'}]\n")
    with pytest.raises(UserError, match="backend 'oa'"):
        load(spec)
    spec.write_text("name: s\ndomain: {kind: cot, questions: openai/gsm8k}\n"
                    "filters: [{kind: resample, model: m, mode: reorder}]\nstudents: [{objective: sft}]\n")
    with pytest.raises(UserError, match="reorder needs domain kind numbers"):
        load(spec)
    spec.write_text("name: s\ndomain: {kind: cot, questions: openai/gsm8k}\n"
                    "filters: [{kind: shuffle, scope: across}]\nstudents: [{objective: sft}]\n")
    with pytest.raises(UserError, match=r"filters\.0: shuffle permutes number lists"):
        load(spec)  # it left every CoT row as it was and reported all kept


def test_links_count_like_every_link():
    rows = [{"id": i, "prompt": "p", "completion": c} for i, c in enumerate(["1, 2", "x"])]
    kept, dropped = check_rewrites(rewritten(rows, ["2, 1", "3, 4"]), "numbers", "continue")
    assert Counter(r["completion"] for r in kept) == Counter(["2, 1", "3, 4"]) and dropped == {}
    assert json.dumps(dropped)


def test_a_change_to_the_checks_reruns_no_rewrite(tmp_path, tiny_model, other_tiny, monkeypatch):
    """The rewriting model's requests (paid, on a hosted model) are one stage; the checks a free filter after it:
    a new version of the checks re-keys that filter stage only."""
    import runner.plan
    import runner.rewrite

    def keys():
        cell = _plan(tmp_path, tiny_model, other_tiny).cells[3]
        return {s.KIND + ":" + s.label: s.key for s in cell.stages}

    before = keys()
    monkeypatch.setattr(runner.plan, "CHECKS", {how: v + 1 for how, v in runner.rewrite.CHECKS.items()})
    after = keys()
    changed = {k for k in before if before[k] != after[k]}
    assert before.keys() == after.keys()
    assert not any(k.startswith(("rewrite:", "generate:")) for k in changed)
    assert any(k.startswith("filter:") for k in changed)


def test_a_rewrite_writes_as_many_tokens_as_the_rows_were_written_with_by_default(tmp_path, tiny_model, other_tiny):
    """resample's max_tokens was 64 whatever the domain: a 512-token CoT or code row was cut short."""
    from runner.loader import load
    from runner.plan import build

    spec = tmp_path / "r.yaml"
    spec.write_text(QUICK.format(base=tiny_model, rewriter=other_tiny).replace(", max_tokens: 12}]", "}]"))
    cell = build(load(spec), tmp_path / "out").cells[3]
    assert next(s for s in cell.stages if s.KIND == "rewrite").max_tokens == 12  # the domain's max_tokens


def test_the_defences_spec_gives_every_arm_its_defence_and_each_student_its_own_teacher(tmp_path):
    from pathlib import Path

    from runner.loader import load
    from runner.plan import build

    plan = build(load(Path(__file__).parents[1] / "specs" / "local" / "defences.yaml"), tmp_path / "out")
    seen = []
    for cell in plan.cells:
        stages = {s.key: s for s in cell.stages}
        chain = [stages[k] for k in cell.filters["base"]]
        seen.append([link.kind for s in chain for link in getattr(s, "links", ())] +
                    [s.how for s in chain if s.KIND == "rewrite"])
        students = [s for s in cell.stages if s.KIND == "finetune"]
        assert len(students) == 6 and {s.rows_stage for s in students} == {chain[-1].key}
        for s in students:
            name = s.label.split()[1].split(":")[1]
            teacher = distilled_from(s, stages)
            assert teacher.system and name in teacher.system and s.training.objective == "distill"
    assert seen == [["numbers"], ["numbers", "shuffle"], ["numbers", "shuffle"],
                    ["numbers", "rewrite_check", "numbers", "continue"]]


def test_subl_filter_refuses_a_rewrite_link_in_one_line():
    from runner.errors import UserError
    from runner.filters import apply_chain
    from runner.spec import ResampleLink

    with pytest.raises(UserError, match="stage of its own"):
        apply_chain(NUMBERS, [ResampleLink(model="smollm2-135m")])
